"""Model SPEC parsing, loading, saving and fingerprinting (DESIGN.md §2-3).

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

import copy
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from clip_unlearn.errors import ClipUnlearnError

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
    try:
        model_cfg, preprocess_cfg, name, pretrained = _resolve(open_clip, spec)
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, weights_only=True
        )
        tokenizer = open_clip.get_tokenizer(name)
    except ClipUnlearnError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError for all of these
        if spec.kind in ("pretrained", "hf-hub"):
            raise _not_cached(spec) from e
        raise ClipUnlearnError(f"model {spec.raw!r} could not be loaded: {e}") from e
    model.eval()
    return LoadedModel(model, preprocess, tokenizer, spec, model_cfg, preprocess_cfg, device)


def _resolve(open_clip: Any, spec: ModelSpec) -> tuple[dict, dict, str, Optional[str]]:
    """→ (model_cfg, preprocess_cfg, open_clip model name, pretrained) with clear errors first."""
    if spec.kind == "local-dir":
        folder = Path(spec.path)
        cfg_path = folder / CONFIG_FILE
        if not folder.is_dir():
            raise ClipUnlearnError(f"model folder {folder} does not exist; check --model")
        if not cfg_path.is_file():
            raise ClipUnlearnError(f"model folder {folder} has no {CONFIG_FILE}; pass a folder written by inject or prepare-synthetic")
        if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
            raise ClipUnlearnError(f"model folder {folder} has no weights file ({WEIGHTS_FILE})")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            model_cfg = cfg["model_cfg"]
        except (ValueError, KeyError, TypeError) as e:
            what = "no 'model_cfg' entry" if isinstance(e, (KeyError, TypeError)) else f"invalid JSON: {e}"
            raise ClipUnlearnError(f"{cfg_path} is not an open_clip config ({what}); re-create the model folder") from e
        return copy.deepcopy(model_cfg), cfg.get("preprocess_cfg", {}), f"local-dir:{folder}", None
    if spec.kind == "hf-hub":
        try:
            model_cfg = open_clip.get_model_config(f"hf-hub:{spec.repo}")
            cfg = open_clip.factory._get_hf_config(spec.repo)
        except Exception as e:
            raise _not_cached(spec) from e
        return copy.deepcopy(model_cfg), cfg.get("preprocess_cfg", {}), f"hf-hub:{spec.repo}", None
    model_cfg = open_clip.get_model_config(spec.arch)
    if model_cfg is None:
        near = [m for m in open_clip.list_models() if spec.arch.lower().split("-")[0] in m.lower()][:5]
        raise ClipUnlearnError(f"unknown architecture {spec.arch!r}; try one of {', '.join(near) or 'open_clip.list_models()'}")
    if spec.kind == "arch-file":
        if not Path(spec.path).is_file():
            raise ClipUnlearnError(f"weights file {spec.path} does not exist; check --model")
        return model_cfg, {}, spec.arch, str(spec.path)
    tags = open_clip.list_pretrained_tags_by_model(spec.arch)
    if spec.tag not in tags:
        raise ClipUnlearnError(
            f"model {spec.raw!r}: unknown pretrained tag {spec.tag!r} for {spec.arch}; known tags: {', '.join(tags) or 'none'}"
        )
    pcfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
    preprocess_cfg = {k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg}
    return model_cfg, preprocess_cfg, spec.arch, spec.tag


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
    """Move a finished folder into place, replacing ``out`` only after the new one is complete."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_sidecar(spec: ModelSpec) -> dict[str, Any]:
    """The ``clip_unlearn.json`` of a local model folder, or {} for anything else."""
    if spec.kind != "local-dir":
        return {}
    path = Path(spec.path) / SIDECAR_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
