"""Model SPEC parsing, loading, saving and fingerprinting (docs/design.md §2-3).

Every command resolves ``--model`` through :func:`parse_spec` and :func:`load_model`:

- ``ARCH:TAG``            open_clip architecture + pretrained tag (downloads as open_clip does)
- ``hf-hub:ORG/REPO``     open_clip's hub format
- ``PATH`` / ``local-dir:PATH``  a folder with ``open_clip_config.json`` + weights
- ``ARCH:FILE``           an architecture plus a local ``.safetensors``/``.pt``/``.bin`` file
                          (``.pt``/``.bin`` read with ``torch.load(weights_only=True)``)

Saved models are open_clip local-dir folders that plain ``open_clip`` (≥ 3.0) loads as
``local-dir:DIR``, with a ``clip_unlearn.json`` provenance sidecar; writes are atomic.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import pickle
import shutil
import socket
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.outputs import write_json

log = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
SIDECAR_FILE = "clip_unlearn.json"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_HUB_PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` value. ``kind`` is pretrained, hf-hub, local-dir or arch-file."""

    raw: str
    kind: str
    arch: Optional[str] = None
    tag: Optional[str] = None
    path: Optional[Path] = None
    repo: Optional[str] = None

    @property
    def slug(self) -> str:
        """A file-name-safe short name, e.g. for ``./unlearned-<slug>``."""
        if self.kind == "pretrained":
            base = f"{self.arch}-{self.tag}"
        elif self.kind == "hf-hub":
            base = str(self.repo).replace("/", "-")
        else:
            base = Path(str(self.path)).name.rsplit(".", 1)[0] or "model"
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in base)


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model SPEC without touching the network or importing open_clip."""
    spec = spec.strip()
    if not spec:
        raise ClipUnlearnError("--model is empty; pass ARCH:TAG, hf-hub:ORG/REPO, a model folder or ARCH:FILE")
    if spec.startswith("hf-hub:"):
        repo = spec[len("hf-hub:"):]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ClipUnlearnError(f"model spec {spec!r}: hf-hub needs ORG/REPO, e.g. hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
        return ModelSpec(raw=spec, kind="hf-hub", repo=repo)
    if spec.startswith("local-dir:"):
        return ModelSpec(raw=spec, kind="local-dir", path=Path(spec[len("local-dir:"):]).expanduser())
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSpec(raw=spec, kind="local-dir", path=path)
    arch, sep, rest = spec.partition(":")
    if sep and arch and rest and "/" not in arch and "\\" not in arch:
        if rest.lower().endswith(WEIGHT_SUFFIXES) or "/" in rest or os.sep in rest:
            return ModelSpec(raw=spec, kind="arch-file", arch=arch, path=Path(rest).expanduser())
        return ModelSpec(raw=spec, kind="pretrained", arch=arch, tag=rest)
    if path.suffix.lower() in WEIGHT_SUFFIXES:
        raise ClipUnlearnError(f"model spec {spec!r}: a weights file needs its architecture, e.g. ViT-B-32:{spec}")
    if os.path.lexists(path):
        from clip_unlearn.folders import path_problem

        raise ClipUnlearnError(
            f"model spec {spec!r}: {path} {path_problem(path)}; pass a model folder (with {CONFIG_FILE}), ARCH:TAG, "
            "hf-hub:ORG/REPO or ARCH:FILE"
        )
    raise ClipUnlearnError(
        f"model spec {spec!r}: no such model folder, and not ARCH:TAG (e.g. ViT-B-32-quickgelu:laion400m_e32), "
        "hf-hub:ORG/REPO or ARCH:FILE"
    )


def import_open_clip() -> Any:
    """Import open_clip lazily (it costs seconds) and register our model configs with it."""
    import open_clip

    if "clip-unlearn-tiny" not in open_clip.list_models():
        open_clip.add_model_config(_MODEL_CONFIG_DIR)
    # open_clip logs through the root logger; keep its chatter at --verbose only.
    return open_clip


def resolve_device(device: str) -> str:
    """``auto`` → cuda if available, else cpu; reject devices this machine does not have."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ClipUnlearnError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ClipUnlearnError("--device mps: MPS is not available on this machine; use --device cpu")
    return device


def _hub_reachable(urls: list[str]) -> bool:
    """A quick TCP probe, so that an offline machine fails in seconds instead of retrying for a minute."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    for url in [endpoint, *urls]:
        parsed = urlparse(url)
        host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
        if not host:
            continue
        try:
            with socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S):
                pass
        except OSError:
            return False
    return True


def _go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    # huggingface_hub reads the variable at import time; patch it too if it is already loaded.
    try:
        import huggingface_hub.constants as hf_constants

        hf_constants.HF_HUB_OFFLINE = True
    except Exception:  # pragma: no cover - hub not installed or layout changed
        pass


def _not_cached(spec: ModelSpec) -> ClipUnlearnError:
    return ClipUnlearnError(
        f"model {spec.raw!r}: the weights are not cached and the download failed (no network?); "
        "pass --model PATH to a local model folder, or run `clip-unlearn demo` to work offline"
    )


@dataclass
class LoadedModel:
    """A CLIP model with what every stage needs next to it."""

    model: Any
    preprocess: Callable[[Any], Any]
    tokenizer: Callable[..., Any]
    spec: ModelSpec
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    device: str
    _fingerprints: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def context_length(self) -> int:
        return int(self.model_cfg.get("text_cfg", {}).get("context_length", 77))

    def fingerprint(self, part: str = "all") -> str:
        """sha256 of the weights: ``all``, ``image`` (the image tower) or ``text`` (everything else
        that shapes text features). Cache keys use the tower's fingerprint, so a text-only change
        keeps image embeddings valid."""
        if part not in self._fingerprints:
            self._fingerprints.update(fingerprints(self.model))
        return self._fingerprints[part]

    def architecture(self, part: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The ``image`` or ``text`` tower's tensor names and shapes (no values): two towers whose embeddings
        can be compared vector by vector, an unlearned model and its base, have the same."""
        return tuple((name, tuple(t.shape)) for name, t in sorted(self.model.state_dict().items())
                     if name not in ("logit_scale", "logit_bias") and name.startswith("visual.") == (part == "image"))

    def invalidate(self) -> None:
        self._fingerprints.clear()


def fingerprints(model: Any) -> dict[str, str]:
    """sha256 over the state dict in sorted key order (name, dtype, shape and bytes of each tensor)."""
    import torch

    hashes = {"all": hashlib.sha256(), "image": hashlib.sha256(), "text": hashlib.sha256()}
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        header = f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        parts = ["all", "image" if name.startswith("visual.") else "text"]
        if name in ("logit_scale", "logit_bias"):
            parts = ["all"]  # scales logits only; embeddings do not depend on them
        for p in parts:
            hashes[p].update(header)
            hashes[p].update(data)
    return {k: h.hexdigest() for k, h in hashes.items()}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(spec: str | ModelSpec, device: str = "auto") -> LoadedModel:
    """Load a CLIP model for evaluation (eval mode, on ``device``)."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    device = resolve_device(device)
    if spec.kind in ("pretrained", "hf-hub") and os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false"):
        urls = []
        if spec.kind == "pretrained":
            open_clip = import_open_clip()
            cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag) or {}
            urls = [cfg["url"]] if cfg.get("url") else []
        if not _hub_reachable(urls):
            log.info("hub unreachable; using only cached weights")
            _go_offline()
    open_clip = import_open_clip()
    weights: Optional[Path] = None
    try:
        with _held_library_logs():
            model_cfg, preprocess_cfg, name, pretrained, weights = _resolve(open_clip, spec)
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=device, weights_only=True
            )
            tokenizer = open_clip.get_tokenizer(name)
    except ClipUnlearnError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError for all of these
        if spec.kind in ("pretrained", "hf-hub"):
            raise _not_cached(spec) from e
        raise _load_failed(spec, weights, e) from e
    model.eval()
    return LoadedModel(model, preprocess, tokenizer, spec, model_cfg, preprocess_cfg, device)


@contextlib.contextmanager
def _held_library_logs() -> Iterator[None]:
    """Hold what open_clip and huggingface_hub log during a load attempt.

    A failed load ends in one ClipUnlearnError line, so their ERROR records ("Failed to download
    weights ...") would only repeat it at length: on failure they go to our log at INFO (shown
    with --verbose); on success they are passed on as if never held.
    """
    held: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    class HoldFilter(logging.Filter):
        # a filter on the root logger sees only records logged on it directly (open_clip's), not
        # those propagated from other loggers, which reach the root's handlers as before
        def filter(self, record: logging.LogRecord) -> bool:
            held.append(record)
            return False

    # open_clip logs through the root logger; huggingface_hub through its own, which has a stderr handler too
    root, hub = logging.getLogger(), logging.getLogger("huggingface_hub")
    root_filter, hub_hold = HoldFilter(), Hold()
    saved = (list(hub.handlers), hub.propagate)
    root.addFilter(root_filter)
    hub.handlers[:], hub.propagate = [hub_hold], False
    ok = False
    try:
        yield
        ok = True
    finally:
        root.removeFilter(root_filter)
        added = [h for h in hub.handlers if h is not hub_hold]  # e.g. the hub's own, if it configured itself meanwhile
        hub.handlers[:], hub.propagate = saved[0] + [h for h in added if h not in saved[0]], saved[1]
        for record in held:
            if ok:
                logging.getLogger(record.name if record.name != "root" else None).handle(record)
            else:
                log.info("while loading the model, %s said: %s", record.name, record.getMessage())


def _load_failed(spec: ModelSpec, weights: Optional[Path], e: BaseException) -> ClipUnlearnError:
    """Our one line for a local model that open_clip or torch refused, never their advice verbatim
    (torch's names the unsafe ``weights_only=False``; we never unpickle code)."""
    chain, cause = [], e
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    where = str(weights) if weights is not None else str(spec.path)
    if any(isinstance(c, pickle.UnpicklingError) for c in chain):
        return ClipUnlearnError(
            f"model {spec.raw!r} could not be loaded: {where} is not a plain tensor checkpoint (it holds pickled "
            "Python objects, which are never unpickled here); convert it to a .safetensors file and pass that"
        )
    if any(isinstance(c, EOFError) for c in chain):
        return ClipUnlearnError(f"model {spec.raw!r} could not be loaded: {where} is truncated; copy or download it again")
    reason = str(e).strip() or type(e).__name__
    return ClipUnlearnError(f"model {spec.raw!r} could not be loaded: {reason}")


def _model_folder_weights(open_clip: Any, folder: Path) -> Optional[Path]:
    """The weights file open_clip will load from ``folder`` (it reads .safetensors, .bin and .pth), or None."""
    find = getattr(getattr(open_clip, "factory", None), "_find_checkpoint_in_dir", None)
    if find is not None:
        found = find(folder)
        return Path(found) if found else None
    found = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth"))
    found.sort(key=lambda p: (p.name != WEIGHTS_FILE, p.suffix != ".safetensors"))
    return found[0] if found else None


def _check_weights(path: Path) -> None:
    """Fail with one line for a weights file that is missing, empty, truncated or no checkpoint at all."""
    from clip_unlearn.folders import path_problem

    path = Path(path)
    problem = path_problem(path, want="file")
    if problem:
        raise ClipUnlearnError(f"weights file {path} {problem}; check --model")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ClipUnlearnError(f"weights file {path} cannot be read ({e.strerror}); check its permissions") from None
    if size == 0:
        raise ClipUnlearnError(f"weights file {path} is empty (0 bytes), e.g. an interrupted download or copy; copy or download it again")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own SafetensorError (not an OSError) for any bad header
            raise ClipUnlearnError(
                f"weights file {path} is not a complete safetensors file ({e}); it is truncated or corrupt, copy or download it again"
            ) from None
    elif path.suffix.lower() in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        # torch.save writes a zip archive (or, in its legacy format, a pickle, which starts with 0x80)
        what = "is truncated (an incomplete zip archive)" if head.startswith(b"PK") else "is not a PyTorch checkpoint"
        raise ClipUnlearnError(f"weights file {path} {what}; copy or download it again, or pass a .safetensors file")


def _read_folder_config(cfg_path: Path) -> tuple[dict, dict]:
    """(model_cfg, preprocess_cfg) of an open_clip_config.json, checked for the shapes open_clip indexes into."""
    fix = "fix it or re-create the model folder (inject and prepare-synthetic write valid ones)"
    cfg = read_json(cfg_path, fix)
    if not isinstance(cfg, dict):
        raise ClipUnlearnError(f"{cfg_path} is not an open_clip config (a JSON {type(cfg).__name__}, not an object); {fix}")
    model_cfg, preprocess_cfg = cfg.get("model_cfg"), cfg.get("preprocess_cfg", {})
    if model_cfg is None:
        raise ClipUnlearnError(f"{cfg_path} is not an open_clip config (no 'model_cfg' entry); {fix}")
    if not isinstance(model_cfg, dict):
        raise ClipUnlearnError(f"{cfg_path}: 'model_cfg' must be a JSON object, not {json.dumps(model_cfg)[:40]}; {fix}")
    for k in ("vision_cfg", "text_cfg"):
        if not isinstance(model_cfg.get(k), dict):
            raise ClipUnlearnError(f"{cfg_path}: 'model_cfg' needs a '{k}' object; {fix}")
    if not isinstance(preprocess_cfg, dict):
        raise ClipUnlearnError(f"{cfg_path}: 'preprocess_cfg' must be a JSON object, not {json.dumps(preprocess_cfg)[:40]}; {fix}")
    return model_cfg, preprocess_cfg


def _is_world_folder(folder: Path) -> bool:
    return (folder / "world.json").is_file() or (folder / "model" / CONFIG_FILE).is_file()


def _resolve(open_clip: Any, spec: ModelSpec) -> tuple[dict, dict, str, Optional[str], Optional[Path]]:
    """→ (model_cfg, preprocess_cfg, open_clip model name, pretrained, local weights file) with clear errors first."""
    if spec.kind == "local-dir":
        from clip_unlearn.folders import path_problem

        folder = Path(spec.path)
        cfg_path = folder / CONFIG_FILE
        problem = path_problem(folder)
        if problem:
            raise ClipUnlearnError(f"model folder {folder} {problem}; check --model")
        if not cfg_path.is_file():
            if _is_world_folder(folder):
                raise ClipUnlearnError(f"{folder} is a synthetic world, not a model; pass --model {folder / 'model'}")
            raise ClipUnlearnError(f"model folder {folder} has no {CONFIG_FILE}; pass a folder written by inject or prepare-synthetic")
        weights = _model_folder_weights(open_clip, folder)
        if weights is None:
            pt = sorted(p.name for p in folder.glob("*.pt"))
            if pt:
                raise ClipUnlearnError(
                    f"model folder {folder} has only {pt[0]}, and open_clip reads a folder's .safetensors, .bin or .pth "
                    f"weights, not .pt; convert it to {WEIGHTS_FILE}, or pass --model ARCH:{folder / pt[0]}"
                )
            raise ClipUnlearnError(f"model folder {folder} has no weights file ({WEIGHTS_FILE}); pass a folder written by inject or prepare-synthetic")
        model_cfg, preprocess_cfg = _read_folder_config(cfg_path)
        _check_weights(weights)
        return copy.deepcopy(model_cfg), preprocess_cfg, f"local-dir:{folder}", None, weights
    if spec.kind == "hf-hub":
        try:
            model_cfg = open_clip.get_model_config(f"hf-hub:{spec.repo}")
            cfg = open_clip.factory._get_hf_config(spec.repo)
        except Exception as e:
            raise _not_cached(spec) from e
        return copy.deepcopy(model_cfg), cfg.get("preprocess_cfg", {}), f"hf-hub:{spec.repo}", None, None
    model_cfg = open_clip.get_model_config(spec.arch)
    if model_cfg is None:
        near = [m for m in open_clip.list_models() if spec.arch.lower().split("-")[0] in m.lower()][:5]
        raise ClipUnlearnError(f"unknown architecture {spec.arch!r}; try one of {', '.join(near) or 'open_clip.list_models()'}")
    if spec.kind == "arch-file":
        _check_weights(Path(spec.path))
        return model_cfg, {}, spec.arch, str(spec.path), Path(spec.path)
    tags = open_clip.list_pretrained_tags_by_model(spec.arch)
    if spec.tag not in tags:
        raise ClipUnlearnError(
            f"model {spec.raw!r}: unknown pretrained tag {spec.tag!r} for {spec.arch}; known tags: {', '.join(tags) or 'none'}"
        )
    pcfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
    preprocess_cfg = {k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg}
    return model_cfg, preprocess_cfg, spec.arch, spec.tag, None


def save_model(
    loaded: LoadedModel,
    out: Path,
    sidecar: dict[str, Any],
    overwrite: bool = False,
    extra_files: Optional[dict[str, bytes]] = None,
) -> Path:
    """Write an open_clip local-dir folder plus ``clip_unlearn.json``, atomically.

    The folder is assembled under a temporary name beside ``out`` and renamed into place, so an
    interrupted save leaves either the old folder or the complete new one.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not overwrite:
        raise ClipUnlearnError(f"output folder {out} exists; pass --overwrite to replace it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in loaded.model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        preprocess_cfg = dict(loaded.preprocess_cfg)
        visual_cfg = getattr(loaded.model.visual, "preprocess_cfg", None)
        if isinstance(visual_cfg, dict):
            preprocess_cfg = {**visual_cfg, **preprocess_cfg}
        write_json(tmp / CONFIG_FILE, {"model_cfg": loaded.model_cfg, "preprocess_cfg": preprocess_cfg})
        write_json(tmp / SIDECAR_FILE, sidecar)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished folder into place, replacing ``out`` only after the new one is complete.

    The two renames of a replacement run with SIGINT/SIGTERM held back, and the old folder is put
    back if the second fails, so ``out`` is never missing with its old copy hidden.
    """
    from clip_unlearn.outputs import signals_deferred

    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    with signals_deferred():
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
    shutil.rmtree(old, ignore_errors=True)


def read_json(path: Path, fix: str, missing: Optional[str] = None) -> Any:
    """Parsed JSON, or one ClipUnlearnError line naming the file, what is wrong with it and ``fix``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClipUnlearnError(missing or f"{path} does not exist; {fix}") from None
    except UnicodeDecodeError:
        raise ClipUnlearnError(f"{path} is not UTF-8 JSON text; {fix}") from None
    except ValueError as e:
        raise ClipUnlearnError(f"{path} is not valid JSON ({e}); {fix}") from None
    except OSError as e:
        raise ClipUnlearnError(f"{path} cannot be read ({e.strerror}); check its permissions or {fix}") from None


def read_sidecar(spec: ModelSpec) -> dict[str, Any]:
    """The ``clip_unlearn.json`` of a local model folder, or {} for anything else."""
    if spec.kind != "local-dir":
        return {}
    path = Path(spec.path) / SIDECAR_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    world = data.get("world")
    if isinstance(world, str) and world and not Path(world).is_absolute():
        # recorded relative to the model folder, so a copied or moved world still finds itself
        data["world"] = str((Path(spec.path) / world).resolve())
    return data
