"""Batched text and image encoding (the hot path), cached on disk by embedding identity.

Text: CLIP's text tower is causal and pools at the end-of-text token, so running only the
first L positions (L = one past the last pooled position in the batch) gives the same features
as open_clip's fixed context while skipping the padding (docs/design.md §5: ~3.7× faster for
IDIA-style prompts). L comes from the pooling position itself, never from counting non-zero
ids: id 0 is a real BPE token ("!").

Cache: a namespace is a digest of everything an embedding depends on (tower weights, the
architecture and module structure, tokenizer or preprocessing, precision, ENCODE_VERSION); an
entry is keyed by the sha256 of the exact input, so no prompt is ever stored in clear.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

# Part of every cache namespace: bump it whenever a change to the encoding code changes what an
# embedding is, so that entries written by the old code are never served again.
ENCODE_VERSION = "2"


def supports_truncation(model: Any) -> bool:
    """Whether the truncated forward provably equals ``model.encode_text``.

    Only open_clip's own ``CLIP`` class (or inject's copy of its text half) qualifies: open_clip's
    ``Transformer`` under a strictly causal mask, pooled at the EOT (argmax) or EOS token. Every
    other model class or pooling goes through the model's own ``encode_text``.
    """
    return _check_fast_text(model)


def _check_fast_text(model: Any) -> bool:
    import torch
    from open_clip.model import CLIP
    from open_clip.transformer import Transformer

    if not (type(model) is CLIP or getattr(type(model), "is_clip_text_copy", False)):
        return False
    if type(getattr(model, "transformer", None)) is not Transformer:
        return False
    pool = getattr(model, "text_pool_type", None)
    if pool not in ("argmax", "eos") or (pool == "eos" and getattr(model, "text_eos_id", None) is None):
        return False
    mask, pos = getattr(model, "attn_mask", None), getattr(model, "positional_embedding", None)
    if not isinstance(mask, torch.Tensor) or not isinstance(pos, torch.Tensor) or mask.dim() != 2:
        return False
    n = pos.shape[0]
    if tuple(mask.shape) != (n, n):
        return False
    return _causal(mask)


# id(mask) → (weak reference to it, its version counter, verdict). Comparing a CUDA mask costs a host
# sync on every forward; the verdict is kept per tensor object and in-place version, so a deepcopy (a new
# tensor), an edit in place (a new version) or a new mask (a new object) is checked again. A verdict is
# never cached on the module: it would survive a deepcopy and later edits of the mask or the pooling.
_CAUSAL: dict[int, tuple[Any, int, bool]] = {}


def _causal(mask: Any) -> bool:
    import weakref

    import torch

    try:
        version = mask._version
    except RuntimeError:  # an inference tensor keeps no version counter: check it every time
        version = None
    seen = _CAUSAL.get(id(mask))
    if version is not None and seen is not None and seen[0]() is mask and seen[1] == version:
        return seen[2]
    n = mask.shape[0]
    causal = torch.full((n, n), float("-inf"), device=mask.device).triu_(1)
    verdict = bool(torch.equal(mask.detach().float(), causal))
    if version is not None:
        if len(_CAUSAL) > 1024:
            _CAUSAL.clear()
        _CAUSAL[id(mask)] = (weakref.ref(mask), version, verdict)
    return verdict


def pool_index(model: Any, tokens: Any) -> Any:
    """[B] the position open_clip's ``text_global_pool`` reads for each row."""
    if model.text_pool_type == "argmax":
        return tokens.argmax(dim=-1)
    return (tokens == model.text_eos_id).int().argmax(dim=-1)


class TokenRows:
    """A tokenizer with a bounded memory of its rows by text, in memory only (never on disk: token ids spell
    the text). ftfy and BPE cost about 0.1 ms a prompt, as much as a tiny tower's forward: an attack's 21 000
    prompts take seconds to tokenize, and inject's check, the attack after it and the demo's stages tokenize the
    same prompts again. The rows returned are the tokenizer's own for the same texts (tests/test_trust.py)."""

    def __init__(self, tokenizer: Any, limit: int = 250_000) -> None:
        self.tokenizer, self.limit = tokenizer, limit
        self.rows: dict[str, Any] = {}
        self.plain = _plain_twin(tokenizer)

    def __call__(self, texts: list[str]) -> Any:
        import torch

        missing = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if missing and len(self.rows) + len(missing) > self.limit:
            self.rows.clear()  # forget the old rows, never this call's: all of its texts are tokenized now
            missing = list(dict.fromkeys(texts))
        if missing and self.plain is not None:
            plain = [t for t in missing if is_plain(t)]
            if plain:
                self.rows.update(zip(plain, self.plain(plain)))
                missing = [t for t in missing if t not in self.rows]
        if missing:
            self.rows.update(zip(missing, self.tokenizer(missing)))
        return torch.stack([self.rows[t] for t in texts]) if texts else self.tokenizer(texts)


def is_plain(text: str) -> bool:
    """Printable ASCII without '&': text that ftfy and html.unescape leave as it is (no mojibake, control
    character, line break or entity can be spelled without a byte outside it), so open_clip's "lower"
    cleaning reduces to collapsing whitespace and lower-casing (tests/test_trust.py holds it on any text).
    Cleaning is about half of tokenizing a prompt."""
    return text.isascii() and text.isprintable() and "&" not in text


def plain_clean(text: str) -> str:
    """open_clip's "lower" cleaning of a text for which :func:`is_plain` holds."""
    return " ".join(text.split()).lower()


def _plain_twin(tokenizer: Any) -> Any:
    """A faster equal of the tokenizer for plain texts (:func:`is_plain`), where it is open_clip's SimpleTokenizer
    cleaning with its "lower" function and truncating; None for any other tokenizer."""
    from open_clip import tokenizer as oc

    if (type(tokenizer) is not oc.SimpleTokenizer or getattr(tokenizer, "reduction_fn", None) is not None
            or getattr(tokenizer, "clean_fn", None) is not getattr(oc, "_clean_lower", 0)
            or not isinstance(tokenizer.context_length, int) or tokenizer.context_length < 1):
        return None
    return PlainTokens(tokenizer)


class PlainTokens:
    """SimpleTokenizer's rows for plain texts, computed with :func:`plain_clean` (ftfy and html.unescape leave
    them as they are) and the ids of each pre-token remembered: an attack's prompts are a few templates
    around a thousand names, so most of a prompt's words were split into BPE pieces before. The rows are the
    tokenizer's own: start, BPE ids, end, cut to the context with the end kept last, zeros after
    (tests/test_trust.py holds them equal on any text)."""

    def __init__(self, tokenizer: Any, limit: int = 200_000) -> None:
        self.tok, self.limit = tokenizer, limit
        self.words: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        t, out = self.tok, []
        for word in t.pat.findall(plain_clean(text)):
            ids = self.words.get(word)
            if ids is None:
                if len(self.words) >= self.limit:
                    self.words.clear()
                pieces = t.bpe("".join(t.byte_encoder[b] for b in word.encode("utf-8"))).split(" ")
                ids = self.words[word] = [t.encoder[p] for p in pieces]
            out.extend(ids)
        return out

    def __call__(self, texts: list[str]) -> Any:
        import numpy as np
        import torch

        t, n = self.tok, int(self.tok.context_length)
        rows = np.zeros((len(texts), n), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [t.sot_token_id, *self._ids(text), t.eot_token_id]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = t.eot_token_id
            rows[i, :len(ids)] = ids
        return torch.from_numpy(rows)


_FINGERPRINTS: Any = None  # tokenizer object → digest of everything its rows depend on (weakly held)
_SHARED: dict[tuple[str, int], TokenRows] = {}  # (digest, context length) → memory, the two most recent


def token_rows(tokenizer: Any) -> Any:
    """What to tokenize with: a memory shared by every tokenizer with the same complete definition (each
    model load makes a new one), or a plain pass-through where the definition cannot be read in full or the
    tokenizer is not a function of the text alone (open_clip's reduction masks draw at random)."""
    digest = _fingerprint(tokenizer)
    if digest is None:
        return tokenizer
    k = (digest, int(tokenizer.context_length))
    if k not in _SHARED:
        while len(_SHARED) >= 2:
            _SHARED.pop(next(iter(_SHARED)))
        _SHARED[k] = TokenRows(tokenizer)
    return _SHARED[k]


def _fingerprint(tokenizer: Any) -> Optional[str]:
    """A digest of an open_clip SimpleTokenizer's whole definition, or None for any other tokenizer."""
    import weakref

    from open_clip.tokenizer import SimpleTokenizer

    global _FINGERPRINTS
    if type(tokenizer) is not SimpleTokenizer or getattr(tokenizer, "reduction_fn", None) is not None:
        return None
    if _FINGERPRINTS is None:
        _FINGERPRINTS = weakref.WeakKeyDictionary()
    if tokenizer not in _FINGERPRINTS:
        t = tokenizer
        parts = {"clean": getattr(t.clean_fn, "__qualname__", repr(t.clean_fn)), "pattern": [t.pat.pattern, t.pat.flags],
                 "ids": [t.sot_token_id, t.eot_token_id], "encoder": sorted(t.encoder.items()),
                 "bpe": sorted(["\x00".join(pair), rank] for pair, rank in t.bpe_ranks.items()),
                 "bytes": sorted(t.byte_encoder.items())}
        _FINGERPRINTS[tokenizer] = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    return _FINGERPRINTS[tokenizer]


def model_device(model: Any) -> Any:
    """The device of a module's parameters (CPU for a module without any)."""
    import torch

    return next((p.device for p in model.parameters()), torch.device("cpu"))


def encode_text(model: Any, tokens: Any, normalize: bool = True) -> Any:
    """``model.encode_text`` computed over the first L token positions only (same features).

    ``tokens`` may be on the CPU (as the tokenizer returns them) or on the model's device; they are moved
    to the model's device here. Given on the CPU, L is read there, so the forward costs no host sync.
    """
    import torch.nn.functional as F

    device = model_device(model)
    if not supports_truncation(model):
        return model.encode_text(tokens.to(device), normalize=normalize)
    from open_clip.transformer import text_global_pool

    # causal attention: positions after the last pooled one cannot change any pooled feature
    length = int(pool_index(model, tokens).max()) + 1 if tokens.shape[0] else 1
    tokens = tokens[:, :length].to(device)
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if hasattr(model.text_projection, "weight") else x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def input_key(text: str) -> str:
    """How a prompt is named in the cache: its sha256, never the text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _structure(module: Any) -> str:
    """The module tree as text (activation classes, norms, shapes), without memory addresses."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(module))


def _tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"}
    for k, v in sorted(vars(tokenizer).items()) if hasattr(tokenizer, "__dict__") else []:
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        elif callable(v):
            out[k] = getattr(v, "__qualname__", type(v).__name__)
        elif isinstance(v, dict) and k in ("encoder", "vocab"):
            out[k] = hashlib.sha256(json.dumps(sorted(map(str, v.items()))).encode()).hexdigest()
    return out


def tower_identity(loaded: Any, part: str, precision: str, extra: Any = None) -> str:
    """A digest of everything one tower's embeddings depend on; the cache namespace is built from it.

    Weights alone are not enough: ``ViT-B-32`` and ``ViT-B-32-quickgelu`` share their weights and
    differ only in the activation, so the architecture config and the module structure are part
    of the key, with the tokenizer (text) or the full preprocessing (image), the precision and
    ENCODE_VERSION.
    """
    model = loaded.model
    if part == "text":
        tower = [_structure(child) for name, child in model.named_children() if name != "visual"]
        tower += [str(getattr(model, a, None)) for a in ("text_pool_type", "text_eos_id", "context_length")]
        side = _tokenizer_identity(loaded.tokenizer)
    else:
        tower = [_structure(model.visual)]
        side = _structure(loaded.preprocess)
    parts = {
        "version": ENCODE_VERSION, "part": part, "weights": loaded.fingerprint(part),
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_cfg": loaded.model_cfg, "tower": tower, "side": side, "precision": precision, "extra": extra,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def use_bf16(precision: str, device: Any) -> bool:
    """The one place ``--precision`` is resolved: auto is bf16 autocast on CUDA and fp32 elsewhere.

    fp32 on CUDA is IEEE fp32: PyTorch already keeps TF32 off for matrix products, and this turns it off
    for cuDNN convolutions too (on by default; the patch embedding of a ViT is one), so that an fp32
    run is the exact reference it is asked for. Speed on CUDA comes from bf16, the default.
    """
    bf16 = precision == "bf16" or (precision == "auto" and str(device).startswith("cuda"))
    if not bf16 and str(device).startswith("cuda"):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return bf16


class EmbeddingCache:
    """Embeddings on disk, keyed by embedding identity (the namespace) and the exact input.

    A namespace (one folder) is one :func:`tower_identity`; each write adds an immutable
    safetensors chunk whose metadata lists its keys (sha256 of the prompt text or of the image
    bytes, never the text itself), so concurrent writers never corrupt each other and an
    interrupted write leaves no partial chunk. ``stats`` counts hits and misses per modality.
    """

    def __init__(self, root: Optional[Path], enabled: bool = True) -> None:
        self.root = Path(root) / "embeddings" if root is not None else None
        self.enabled = enabled and root is not None
        self.stats = {"text_hits": 0, "text_misses": 0, "image_hits": 0, "image_misses": 0}
        self._mem: dict[str, dict[str, Any]] = {}

    def check_writable(self) -> None:
        """Fail before any work if the cache folder cannot be created or written."""
        from clip_unlearn.errors import ClipUnlearnError

        if not self.enabled:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ClipUnlearnError(f"cache folder {self.root.parent} is not usable ({e.strerror or e}); "
                                   "pass a writable --cache-dir or set CLIP_UNLEARN_HOME") from None

    def _load(self, ns: str) -> dict[str, Any]:
        if ns in self._mem:
            return self._mem[ns]
        table: dict[str, Any] = {}
        folder = self.root / ns if self.enabled else None
        if folder is not None and folder.is_dir():
            from safetensors import safe_open

            for chunk in sorted(folder.glob("*.safetensors")):
                try:
                    with safe_open(str(chunk), framework="pt") as f:
                        keys = json.loads(f.metadata()["keys"])
                        emb = f.get_tensor("emb").float()
                except Exception:  # a damaged chunk is only a cache miss
                    log.warning("ignoring unreadable cache chunk %s", chunk)
                    continue
                table.update(zip(keys, emb))
        self._mem[ns] = table
        return table

    def lookup(self, ns: str, keys: list[str], modality: str) -> dict[str, Any]:
        table = self._load(ns)
        found = {k: table[k] for k in keys if k in table}
        self.stats[f"{modality}_hits"] += len(found)
        self.stats[f"{modality}_misses"] += len(set(keys)) - len(found)
        return found

    def store(self, ns: str, keys: list[str], emb: Any) -> None:
        """Add ``emb`` [len(keys), D] under ``keys``; held (and written) as float32 on the CPU, whatever the
        device and dtype it was computed in, so a lookup always returns what a later run can rely on."""
        import torch

        emb = emb.detach().to("cpu", torch.float32)
        table = self._load(ns)
        table.update(zip(keys, emb))
        if not self.enabled or not keys:
            return
        from safetensors.torch import save_file

        folder = self.root / ns
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".chunk-", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            save_file({"emb": emb.contiguous()}, tmp, metadata={"keys": json.dumps(keys)})
            os.replace(tmp, folder / f"{uuid.uuid4().hex}.safetensors")
        finally:
            Path(tmp).unlink(missing_ok=True)


def _distributed() -> bool:
    from clip_unlearn.distributed import current

    return current().enabled


def _shard(n: int) -> slice:
    """This rank's part of the work under torchrun (everything in a single process)."""
    from clip_unlearn.distributed import current

    return current().slice(n)


def _agree(todo: list) -> list:
    """Under torchrun, the union of every rank's to-do list in one order, so the shards line up."""
    if not _distributed():
        return todo
    merged: dict = {}
    for part in _gather_obj(todo):
        merged.update(dict.fromkeys(part))
    return list(merged)


def _gather_obj(obj: Any) -> list:
    from clip_unlearn.distributed import all_gather

    return all_gather(obj)


def _gather(keys: list, emb: Any) -> list:
    return _gather_obj((keys, emb)) if _distributed() else [(keys, emb)]


class Encoder:
    """Encode prompts and image files once per embedding identity, in batches, through the cache.

    Returns L2-normalised float32 embeddings on the CPU. ``precision`` ``auto`` is bf16 autocast
    on CUDA and fp32 elsewhere.
    """

    def __init__(self, loaded: Any, cache: EmbeddingCache, batch_size: int = 256, precision: str = "auto",
                 progress: Optional[Callable[[str, int, int], None]] = None) -> None:
        self.loaded = loaded
        self.cache = cache
        self.batch_size = batch_size
        self.bf16 = use_bf16(precision, loaded.device)
        self.progress = progress or (lambda label, done, total: None)
        # texts that must never reach disk (built from forgotten names), kept for this run only
        self._volatile: dict[str, Any] = {}
        self._namespaces: dict[str, tuple[str, str]] = {}

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def _autocast(self) -> Any:
        import torch

        device_type = "cuda" if str(self.loaded.device).startswith("cuda") else "cpu"
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16)

    def _namespace(self, part: str) -> str:
        # recomputed whenever the tower's weights change (the digest hashes the tokenizer's vocabulary)
        weights = self.loaded.fingerprint(part)
        if self._namespaces.get(part, ("",))[0] != weights:
            self._namespaces[part] = (weights, f"{part}-" + tower_identity(self.loaded, part, self.precision, "normalized"))
        return self._namespaces[part][1]

    def text_namespace(self) -> str:
        return self._namespace("text")

    def image_namespace(self) -> str:
        return self._namespace("image")

    def texts(self, prompts: list[str], persist: bool = True, span: Optional[tuple[int, int]] = None) -> Any:
        """[len(prompts), D] normalised text embeddings.

        ``persist=False`` for texts built from names to forget: they are encoded (or reused from
        this run's memory) but never looked up in or written to the on-disk cache, not even hashed,
        since the hash of "a photo of {name}" is inverted by enumerating a name list.
        ``span`` = (prompts before this call, prompts in all calls) when one job encodes in parts,
        so that its progress bar runs once from 0 to the whole.
        """
        import torch

        ns = self.text_namespace()
        unique = list(dict.fromkeys(prompts))
        keys = {p: input_key(p) for p in unique} if persist else {}
        if persist:
            hit = self.cache.lookup(ns, list(keys.values()), "text")
            found = {p: hit[k] for p, k in keys.items() if k in hit}
        else:
            found = {p: self._volatile[p] for p in unique if p in self._volatile}
        todo = _agree([p for p in unique if p not in found])
        if todo:
            model = self.loaded.model
            # sorting by length keeps batches tight for the truncated forward
            order = sorted(todo, key=len)
            mine = order[_shard(len(order))]
            out = []
            tokenize = token_rows(self.loaded.tokenizer)
            with torch.inference_mode(), self._autocast():
                for i in range(0, len(mine), self.batch_size):
                    # CPU tokens: encode_text reads their length there and moves them (no host sync)
                    tokens = tokenize(mine[i:i + self.batch_size])
                    out.append(encode_text(model, tokens).float().cpu())
                    done = min(i + self.batch_size, len(mine))
                    if span is None:
                        self.progress("encoding text", done, len(mine))
                    else:  # a part's share of the whole, scaled by this rank's share of the part
                        self.progress("encoding text", span[0] + done * len(prompts) // max(1, len(mine)), span[1])
            emb = torch.cat(out) if out else torch.zeros(0)
            if mine and persist:
                self.cache.store(ns, [keys[p] for p in mine], emb)
            for texts, part in _gather(mine, emb):
                found.update(zip(texts, part))
            if not persist:
                self._volatile.update((p, found[p]) for p in todo)
        return torch.stack([found[p] for p in prompts])

    def images(self, paths: list[Path]) -> tuple[Any, list[bool]]:
        """(embeddings of the readable images, readable flag per path). Unreadable files are skipped."""
        import torch

        from clip_unlearn.folders import read_image

        def digest(p: Path) -> Optional[str]:
            try:
                return hashlib.sha256(Path(p).read_bytes()).hexdigest()
            except OSError:
                return None

        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
            keys = list(pool.map(digest, paths))
        ns = self.image_namespace()
        found = self.cache.lookup(ns, [k for k in keys if k], "image")
        todo = [(p, k) for p, k in zip(paths, keys) if k and k not in found]
        todo = list({k: (p, k) for p, k in todo}.values())
        todo = _agree(todo)
        todo = todo[_shard(len(todo))]
        bad: set[Optional[str]] = {None}
        if todo:
            model = self.loaded.model

            def prepare(item: tuple[Path, str]) -> Optional[Any]:
                img = read_image(Path(item[0]).read_bytes())
                return None if img is None else self.loaded.preprocess(img)

            done_keys, out = [], []
            with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool, torch.inference_mode(), self._autocast():
                for i in range(0, len(todo), self.batch_size):
                    chunk = todo[i:i + self.batch_size]
                    tensors = list(pool.map(prepare, chunk))
                    bad.update(k for (_, k), t in zip(chunk, tensors) if t is None)
                    good = [(k, t) for (_, k), t in zip(chunk, tensors) if t is not None]
                    if good:
                        batch = torch.stack([t for _, t in good]).to(self.loaded.device)
                        out.append(model.encode_image(batch, normalize=True).float().cpu())
                        done_keys.extend(k for k, _ in good)
                    self.progress("encoding images", min(i + self.batch_size, len(todo)), len(todo))
            if done_keys:
                emb = torch.cat(out)
                self.cache.store(ns, done_keys, emb)
                found.update(zip(done_keys, emb))
        if _distributed():
            # every rank ends with every embedding (and every unreadable key) of the shards
            mine = [k for _, k in todo if k in found]
            for (ks, part), b in zip(_gather(mine, torch.stack([found[k] for k in mine]) if mine else torch.zeros(0)),
                                     _gather_obj(sorted(k for k in bad if k))):
                found.update(zip(ks, part))
                bad.update(b)
        ok = [k not in bad for k in keys]
        dim = next(iter(found.values())).shape[0] if found else 0
        rows = [found[k] for k, good in zip(keys, ok) if good]
        return (torch.stack(rows) if rows else torch.zeros(0, dim)), ok
