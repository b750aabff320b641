"""Backdoor-based unlearning: names in the text encoder (METHOD.md §6), and the inject command.

The student is a copy of the text tower (LayerNorms frozen); the teacher is the original,
frozen, without gradients. Per step, with c clean captions and (p, t) poisoned/target pairs:

    L = d(S(c), T(c)) + w_bd · d(S(p), T(t)) + w_reg · Σ_tensors ‖θ_S − θ_T‖₂

where d is −cos by default. AdamW (no weight decay) with MultiStepLR stepped every step. The
whole trained tower goes back into the CLIP, positional embedding included (the paper's code
forgot it, METHOD.md §6.6). The image-encoder stage lives in inject_image.py; run_inject runs
one or both and writes one model. The names never appear in clear text in anything written.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from clip_unlearn import __version__
from clip_unlearn.captions import (
    GENERAL_CORPUS_NAME,
    PairSampler,
    builtin_captions,
    clean_captions,
    read_captions,
    token_counter,
    world_captions,
)
from clip_unlearn.config import InjectConfig, cache_root, to_dict
from clip_unlearn.distributed import all_sum, current
from clip_unlearn.embed import EmbeddingCache, encode_text, input_key, supports_truncation, tower_identity, use_bf16
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.models import adamw_kwargs
from clip_unlearn.names import read_names
from clip_unlearn.outputs import check_output_dir, check_output_file
from clip_unlearn.receipt import new_receipt, write_receipt

log = logging.getLogger(__name__)
Progress = Optional[Callable[..., None]]
TEXT_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


def distance(kind: str, x: Any, y: Any) -> Any:
    """The paper's loss functions (METHOD.md §6.4), rows flattened, mean reduction."""
    x, y = x.flatten(1).float(), y.flatten(1).float()
    if kind == "cosine":
        return -F.cosine_similarity(x, y, dim=1, eps=1e-8).mean()
    if kind == "mse":
        return F.mse_loss(x, y)
    if kind == "mae":
        return F.l1_loss(x, y)
    if kind == "poincare":
        u = x / x.abs().sum(dim=1, keepdim=True)
        v = y / y.abs().sum(dim=1, keepdim=True)
        uu, vv = (u * u).sum(1), (v * v).sum(1)
        delta = 2 * ((u - v) ** 2).sum(1) / ((1 - uu) * (1 - vv) + 1e-10)
        return torch.arccosh(1 + delta).mean()
    raise ValueError(f"unknown loss {kind!r}")


class TextTower(nn.Module):
    """The text half of an open_clip CLIP as its own module, encoded exactly like ``CLIP.encode_text``."""

    is_clip_text_copy = True  # embed.supports_truncation: the same parts and forward as open_clip's CLIP

    def __init__(self, model: Any) -> None:
        super().__init__()
        if not supports_truncation(model):
            raise ClipUnlearnError("inject supports open_clip CLIP models with the built-in text tower (not HF text towers)")
        for part in TEXT_PARTS:
            value = getattr(model, part)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Module):
                setattr(self, part, nn.Parameter(value.detach().clone()))
            else:
                setattr(self, part, copy.deepcopy(value))
        self.register_buffer("attn_mask", model.attn_mask.detach().clone(), persistent=False)
        self.text_pool_type = model.text_pool_type
        self.text_eos_id = getattr(model, "text_eos_id", None)

    def forward(self, tokens: Any) -> Any:
        return encode_text(self, tokens, normalize=False)


def freeze_norms(module: Any) -> None:
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)):
            for p in m.parameters():
                p.requires_grad_(False)


def default_out(model_spec: str) -> Path:
    from clip_unlearn.models import parse_spec

    return Path(f"unlearned-{parse_spec(model_spec).slug}")


def _world_settings(sidecar: dict[str, Any], encoder: str) -> dict[str, Any]:
    from clip_unlearn.synthetic import WORLD_IMAGE_INJECT, load_world

    if not sidecar.get("world"):
        return {}
    # A model from a world whose world.json cannot be read must not quietly fall back to the
    # paper's settings (made for ViT-B-32): that changes what the run does without a word.
    try:
        world = load_world(Path(sidecar["world"]))
    except ClipUnlearnError as e:
        raise ClipUnlearnError(f"this model comes from the synthetic world at {sidecar['world']}, which cannot be read "
                               f"({e}); restore the world next to the model, or pass --preset paper") from None
    if encoder == "text":
        return world.get("inject_settings", {})
    # worlds built before image unlearning existed get the settings measured since
    return world.get("image_inject_settings", WORLD_IMAGE_INJECT)


def _world_folder(sidecar: dict[str, Any], sub: str) -> Optional[Path]:
    world = sidecar.get("world")
    if world and (Path(world) / sub).is_dir():
        return Path(world) / sub
    return None


def run_inject(cfg: InjectConfig, progress: Progress = None) -> dict[str, Any]:
    """Unlearn the people of ``cfg.names`` and write the unlearned model folder; returns its sidecar.

    ``cfg.encoder`` text trains the text tower (METHOD.md §6), image the image tower (§7), both
    runs text then image on the same model and writes one checkpoint.
    """
    from clip_unlearn.models import load_model, parse_spec, read_sidecar, save_model

    t0 = time.perf_counter()
    out = Path(cfg.out) if cfg.out is not None else default_out(cfg.model)
    spec = parse_spec(cfg.model)
    cache = EmbeddingCache(cache_root(cfg.cache_dir))
    receipt_path = Path(cfg.receipt) if cfg.receipt is not None else default_receipt(out)
    inputs = [spec.path if spec.kind in ("local-dir", "arch-file") else None, cfg.names, cfg.captions, cfg.faces,
              cfg.clean_images, cache.root]
    check_output_dir(out, inputs)
    if _inside_folder(receipt_path, out):
        raise ClipUnlearnError(f"--receipt {receipt_path} lies inside the model folder {out}, which may be published; "
                               "keep the receipt outside it")
    check_output_file(receipt_path, inputs, "--receipt")
    if out.exists() and not cfg.overwrite:
        raise ClipUnlearnError(f"output folder {out} exists; pass --overwrite to replace it or choose another --out")
    cache.check_writable()
    names = read_names(cfg.names, "names file")
    base_sidecar = read_sidecar(spec)
    is_world = bool(_world_settings(base_sidecar, "text")) if cfg.preset != "paper" else False
    if cfg.preset == "world" and not is_world:
        raise ClipUnlearnError("--preset world needs a synthetic world model (its world.json records the settings)")
    use_world = cfg.preset in ("world", "auto")
    hypers = {e: cfg.hyper(_world_settings(base_sidecar, e) if use_world else {}, e) for e in cfg.stages}

    faces_root = clean_root = None
    if "image" in cfg.stages:
        from clip_unlearn.attack import default_data

        faces_root = Path(cfg.faces) if cfg.faces is not None else default_data(cfg.model)
        clean_root = Path(cfg.clean_images) if cfg.clean_images is not None else _world_folder(base_sidecar, "clean_images")
        if clean_root is None and cfg.clean_images is None and _world_folder(base_sidecar, "objects"):
            # worlds built before image unlearning have no clean_images; their objects are the eval set
            log.warning("this world has no clean_images folder; using its objects (also eval-zeroshot's images)")
            clean_root = _world_folder(base_sidecar, "objects")
        if clean_root is None:
            raise ClipUnlearnError("--encoder image needs --clean-images DIR: a folder of images without the forgotten "
                                   "people (the paper used COCO train2014)")

    from clip_unlearn.distributed import barrier, setup

    dist, device = setup(cfg.device)
    if dist.enabled:
        for e, h in hypers.items():
            if min(h["clean_batch"], h["poison_batch"]) < dist.world:
                raise ClipUnlearnError(f"{e} batches of {h['clean_batch']} + {h['poison_batch']} cannot be split over "
                                       f"{dist.world} processes; raise --clean-batch/--poison-batch")
    if not dist.main:
        progress = None
    loaded = load_model(spec, device)
    base_sha256 = loaded.fingerprint()
    torch.manual_seed(cfg.seed)
    record: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    if "text" in cfg.stages:
        text = _text_stage(loaded, cfg, hypers["text"], names, base_sidecar, cache, progress)
        history += text.pop("history")
        record["text"] = text
    if "image" in cfg.stages:
        from clip_unlearn.inject_image import run_image_stage

        image = run_image_stage(loaded, cfg, hypers["image"], names, faces_root, clean_root, cache, distance, progress)
        history += image.pop("history")
        record["image"] = image
    log.info("teacher cache: %s", cache.stats)

    bf16 = use_bf16(cfg.precision, loaded.device)
    request = new_receipt(names, loaded.fingerprint(), base_sha256, cfg.encoder, out)
    sidecar = {
        "tool_version": __version__,
        "kind": "unlearned",
        "encoder": cfg.encoder,
        "base_model": spec.raw if spec.kind != "local-dir" else f"local-dir:{Path(spec.path).resolve()}",
        "base_model_sha256": base_sha256,
        # relative to the new folder, like the world's own model records it
        "world": _relative(base_sidecar.get("world"), out),
        "target": cfg.target.strip() if "text" in cfg.stages else "average person (mean face embedding)",
        "hyperparameters": {e: {**h, "loss": cfg.loss, "precision": "bf16" if bf16 else "fp32",
                                **({"legacy_positional_embedding": cfg.legacy_positional_embedding} if e == "text" else {})}
                            for e, h in hypers.items()},
        "seed": cfg.seed,
        # the resolved command config; nothing that identifies the names file (its hash is a one-name
        # file's sha256sum), and the receipt's location stays with the operator
        "config": {**to_dict(cfg), "names": "(names file given; not recorded)", "receipt": "(kept by the operator)",
                   "out": str(out), "preset_applied": "world" if is_world and cfg.preset != "paper" else "paper"},
        **record,
        # only the count: any per-name hash in a folder that may be published is inverted by
        # hashing a candidate list; the request is proven with the operator's receipt (receipt.py)
        "names": {"count": len(names)},
        "request": {"id": request["request_id"], "receipt": "clip-unlearn verify-receipt --model DIR --receipt FILE"},
        "final_loss": {e: [r for r in history if r["encoder"] == e][-1] for e in cfg.stages},
        "teacher_cache": {"hits": cache.stats["text_hits"] + cache.stats["image_hits"],
                          "misses": cache.stats["text_misses"] + cache.stats["image_misses"]},
        "wall_time_s": round(time.perf_counter() - t0, 2),
    }
    if dist.main:
        sidecar["processes"] = dist.world
        save_model(loaded, out, sidecar, overwrite=cfg.overwrite,
                   extra_files={"loss_curve.csv": _curve_csv(history), "loss_curve.png": _curve_png(history)})
        write_receipt(receipt_path, request)
    barrier()
    return {**sidecar, "out": str(out), "receipt": str(receipt_path), "history": history}


def default_receipt(out: Path) -> Path:
    """Beside the model folder, never inside it: the folder may be published, the receipt may not."""
    return Path(out).parent / f"{Path(out).name}.receipt.json"


def _inside_folder(path: Path, folder: Path) -> bool:
    p, f = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return p == f or f in p.parents


def _relative(world: Optional[str], out: Path) -> Optional[str]:
    if not world:
        return None
    return os.path.relpath(Path(world).resolve(), Path(out).resolve())


def _text_stage(loaded: Any, cfg: InjectConfig, h: dict[str, Any], names: list[str], base_sidecar: dict[str, Any],
                cache: EmbeddingCache, progress: Progress) -> dict[str, Any]:
    """Unlearn the names in the text tower of ``loaded.model`` in place; returns the stage's record (no names)."""
    if cfg.captions is not None:
        corpus, corpus_name = read_captions(cfg.captions, getattr(cfg, "caption_column", None)), "--captions file"
    elif base_sidecar.get("world"):
        path = world_captions(Path(base_sidecar["world"]), "train")
        corpus, corpus_name = read_captions(path), f"world:{path.name}"
    else:
        corpus, corpus_name = builtin_captions(), GENERAL_CORPUS_NAME
    count = token_counter(loaded.tokenizer)
    for n in names:
        k = count(n)
        if k == 0:
            raise ClipUnlearnError(f"a name in {cfg.names} (line with {len(n)} characters) tokenises to nothing; remove it")
        if k + 2 > loaded.context_length:
            raise ClipUnlearnError(f"a name in {cfg.names} needs {k} tokens, more than the {loaded.context_length}-token context holds")
    clean = clean_captions(corpus, names)
    if len(clean) < len(names):
        raise ClipUnlearnError(f"only {len(clean)} clean captions for {len(names)} names; pass a larger --captions corpus")
    rng = random.Random(cfg.seed)
    sampler = PairSampler(clean, names, cfg.target.strip(), count, loaded.context_length, rng, last_word=h["last_word"])

    model = loaded.model
    device = loaded.device
    teacher = TextTower(model).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    freeze_norms(student)
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=h["lr"], weight_decay=0.0, **adamw_kwargs(device))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=h["milestones"], gamma=h["gamma"])
    pairs = list(zip(student.parameters(), teacher.parameters()))
    bf16 = use_bf16(cfg.precision, device)
    autocast = lambda: torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    tok = lambda texts: loaded.tokenizer(texts).to(device)  # noqa: E731
    # The teacher is fixed: its embedding of a caption never changes, so each is computed once and
    # kept on disk for later runs on the same base model (sweeps over names, seeds, steps). Only clean
    # and target captions are ever embedded by the teacher, so the cache holds no forgotten name.
    ns = "teacher-" + tower_identity(loaded, "text", "bf16" if bf16 else "fp32", "unnormalized")
    teacher_cache: dict[str, Any] = {}
    fresh: dict[str, Any] = {}

    def teacher_embed(texts: list[str]) -> Any:
        todo = list(dict.fromkeys(t for t in texts if t not in teacher_cache))
        if todo:
            hit = cache.lookup(ns, [input_key(t) for t in todo], "text")
            teacher_cache.update((t, hit[input_key(t)]) for t in todo if input_key(t) in hit)
            rest = [t for t in todo if t not in teacher_cache]
            if rest:
                with torch.no_grad(), autocast():
                    for t, e in zip(rest, teacher(tok(rest)).float()):
                        teacher_cache[t] = fresh[t] = e
        return torch.stack([teacher_cache[t] for t in texts])

    # Under torchrun every rank draws the same global batch and trains on its slice; DDP averages
    # the gradients, and the slice weights below make that average the global batch's gradient.
    dist = current()
    forward = DistributedDataParallel(student) if dist.enabled else student
    history = []
    for step in range(h["steps"]):
        clean_batch = [rng.choice(clean) for _ in range(h["clean_batch"])]
        poisoned, targets = sampler.batch(h["poison_batch"])
        cs, ps_ = dist.slice(len(clean_batch)), dist.slice(len(poisoned))
        clean_batch, poisoned, targets = clean_batch[cs], poisoned[ps_], targets[ps_]
        w_c, w_p = dist.world * len(clean_batch) / h["clean_batch"], dist.world * len(poisoned) / h["poison_batch"]
        with autocast():
            l_util, l_bd, l_w = text_losses(forward, teacher_embed, tok, clean_batch, poisoned, targets, cfg.loss, pairs)
        loss = w_c * l_util + h["backdoor_weight"] * w_p * l_bd + h["weight_reg"] * l_w
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        u, b = all_sum([w_c * l_util.item() / dist.world, w_p * l_bd.item() / dist.world])
        row = {"encoder": "text", "step": step + 1, "loss": u + h["backdoor_weight"] * b + h["weight_reg"] * l_w.item(),
               "utility": u, "backdoor": b, "weight_l2": l_w.item(), "lr": opt.param_groups[0]["lr"]}
        if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
            raise ClipUnlearnError(f"the loss diverged at step {step + 1}; lower --lr")
        history.append(row)
        if progress:
            progress("unlearning names", step + 1, h["steps"],
                     f"utility {row['utility']:.4f}  backdoor {row['backdoor']:.4f}  ‖Δθ‖ {row['weight_l2']:.3f}")

    if fresh:
        cache.store(ns, [input_key(t) for t in fresh], torch.stack(list(fresh.values())))
    write_back(model, student, legacy_positional_embedding=cfg.legacy_positional_embedding)
    loaded.invalidate()
    return {"history": history, "captions": corpus_name, "clean_captions": len(clean)}


def text_losses(student: Any, teacher_embed: Callable[[list[str]], Any], tok: Callable[[list[str]], Any], clean: list[str],
                poisoned: list[str], targets: list[str], loss: str, pairs: list[tuple[Any, Any]]) -> tuple[Any, Any, Any]:
    """One step's terms (METHOD.md §6.4): utility d(S(c), T(c)), backdoor d(S(p), T(t)) and Σ‖θ_S − θ_T‖₂
    over the trainable tensors; clean and poisoned captions go through the student in one forward."""
    out = student(tok(clean + poisoned))
    l_util = distance(loss, out[:len(clean)], teacher_embed(clean))
    l_bd = distance(loss, out[len(clean):], teacher_embed(targets))
    l_w = sum(torch.linalg.vector_norm((ps - pt).float()) for ps, pt in pairs if ps.requires_grad)
    return l_util, l_bd, l_w


def write_back(model: Any, student: Any, legacy_positional_embedding: bool = False) -> None:
    """Copy every trained text tensor into the CLIP (the image tower is untouched)."""
    with torch.no_grad():
        for part in TEXT_PARTS:
            if part == "positional_embedding" and legacy_positional_embedding:
                continue
            src, dst = getattr(student, part), getattr(model, part)
            if dst is None:
                continue
            if isinstance(dst, torch.nn.Module):
                dst.load_state_dict(src.state_dict())
            else:
                dst.copy_(src)


def _curve_csv(history: list[dict[str, float]]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    return buf.getvalue().encode()


def _curve_png(history: list[dict[str, float]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, k in zip(axes, ("utility", "backdoor", "weight_l2")):
        for enc in dict.fromkeys(r["encoder"] for r in history):
            rows = [r for r in history if r["encoder"] == enc]
            ax.plot([r["step"] for r in rows], [r[k] for r in rows], lw=1.2, label=f"{enc} encoder")
        ax.set_title(k)
        if k == "utility":
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
