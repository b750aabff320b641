"""Backdoor-based unlearning: names in the text encoder (docs/method.md §6), and the inject command.

The student is a copy of the text tower (LayerNorms frozen); the teacher is the original,
frozen, without gradients. Per step, with c clean captions and (p, t) poisoned/target pairs:

    L = d(S(c), T(c)) + w_bd · d(S(p), T(t)) + w_reg · Σ_tensors ‖θ_S − θ_T‖₂

where d is −cos by default. AdamW (no weight decay) with MultiStepLR stepped every step. The
whole trained tower goes back into the CLIP, positional embedding included (the paper's code
forgot it, docs/method.md §6.6). The image-encoder stage lives in inject_image.py; run_inject runs
one or both and writes one model. The names never appear in clear text in anything written.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip_unlearn import __version__
from clip_unlearn.captions import (
    GENERAL_CORPUS_NAME,
    PairSampler,
    builtin_captions,
    clean_captions,
    read_captions,
    token_counter,
)
from clip_unlearn.config import RECIPES, InjectConfig, TextHyper, cache_root, recipe, recorded, to_dict
from clip_unlearn.distributed import current
from clip_unlearn.embed import (
    EmbeddingCache,
    TokenRows,
    encode_text,
    input_key,
    supports_truncation,
    token_rows,
    tower_identity,
    use_bf16,
)
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.models import ModelContext, model_context
from clip_unlearn.names import key, public_people, read_names
from clip_unlearn.outputs import check_output_dir, check_output_file, csv_text, inside, write_bytes
from clip_unlearn.progress import Progress
from clip_unlearn.receipt import (
    MADE_UP,
    chain,
    forgotten_by,
    lineage_entry,
    made_up_names,
    new_key,
    new_receipt,
    read_receipt,
    write_receipt,
)
from clip_unlearn.training import TeacherCache, autocast, train
from clip_unlearn.variants import LEFT_OUT, left_out_reason, neighbours, parse_families, pool_genders, split_name, variants

log = logging.getLogger(__name__)
TEXT_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


def distance(kind: str, x: Any, y: Any) -> Any:
    """The paper's loss functions (docs/method.md §6.4), rows flattened, mean reduction."""
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


def run_inject(cfg: InjectConfig, progress: Progress = None) -> dict[str, Any]:
    """Unlearn the people of ``cfg.names`` and write the unlearned model folder; returns its sidecar.

    ``cfg.encoder`` text trains the text tower (docs/method.md §6), image the image tower (§7), both
    runs text then image on the same model and writes one checkpoint.
    """
    from clip_unlearn.distributed import all_gather, barrier, setup
    from clip_unlearn.models import load_model, parse_spec, save_model

    t0 = time.perf_counter()
    spec = parse_spec(cfg.model)
    cache = EmbeddingCache(cache_root(cfg.cache_dir))
    out, receipt_path = _check_outputs(cfg, spec, cache)
    names = read_names(cfg.names, "names file")
    ctx = model_context(spec)
    faces_root, clean_root = _image_data(cfg, ctx) if "image" in cfg.stages else (None, None)
    check_data, unchecked_why = _verify_data(cfg, names)
    dist, device = setup(cfg.device)
    progress = progress if dist.main else None

    loaded = load_model(spec, device)
    hypers = _hyperparameters(cfg, loaded.model_cfg)
    _check_split(hypers, dist.world)
    base_sha256 = loaded.fingerprint()
    lineage, earlier = _earlier_requests(cfg, spec, base_sha256)
    train_names, already = _not_yet_forgotten(cfg, names, earlier)
    unscaled = hypers.get("text")
    if unscaled is not None:
        hypers["text"] = unscaled.for_names(len(train_names))
        if hypers["text"] != unscaled:
            log.info("%d names past --scale-names %d: backdoor weight %g", len(train_names), unscaled.scale_names,
                     hypers["text"].backdoor_weight)
    torch.manual_seed(cfg.seed)
    # drawn before training: with --made-up, each name's target is a made-up name derived from this key
    # (rank 0's under torchrun: every rank must train toward the same made-up names)
    secret = read_receipt(cfg.reuse_key)["key"] if cfg.reuse_key is not None else all_gather(new_key())[0]
    made_up = made_up_names(secret, train_names) if cfg.made_up else None
    record: dict[str, Any] = {}
    if "text" in cfg.stages:
        record["text"] = _text_stage(loaded, cfg, hypers["text"], train_names, cache, progress, earlier, made_up=made_up)
        if check_data is not None:
            record["text"]["verification"] = _verify(loaded, cfg, unscaled, hypers["text"], names, train_names, cache,
                                                     progress, earlier, check_data, record["text"]["history"], made_up)
        else:
            # the one line a user sees, and what the sidecar says: no claim that the model hides anyone
            log.warning("inject's check did not run (%s): the model is written unchecked; audit it with attack "
                        "--fail-on-exposed on faces of the forgotten people", unchecked_why)
            record["text"]["verification"] = {"ran": False, "reason": unchecked_why}
    if "image" in cfg.stages:
        from clip_unlearn.inject_image import run_image_stage

        record["image"] = run_image_stage(loaded, cfg, hypers["image"], train_names, faces_root, clean_root, cache, distance, progress)
    log.info("teacher cache: %s", cache.stats)
    history = [row for stage in record.values() for row in stage.pop("history")]

    # the request is the whole names file (verify-receipt checks it as given), trained or already forgotten
    request = new_receipt(names, loaded.fingerprint(), base_sha256, cfg.encoder, out, ancestors=earlier, secret=secret)
    sidecar = _sidecar(cfg, spec, ctx, hypers, record, history, base_sha256, len(names), request, out, loaded.device, cache,
                       loaded.model_cfg)
    sidecar["names"].update({"trained": len(train_names), "already_forgotten": already})
    if unscaled is not None and hypers["text"] != unscaled:
        # hyperparameters.text holds what was trained; this is the weight before --scale-names
        sidecar["hyperparameters"]["text"]["scaled_from"] = {"backdoor_weight": unscaled.backdoor_weight}
    sidecar["lineage"] = [*lineage, lineage_entry(request, len(lineage) + 1, len(train_names))]
    sidecar["wall_time_s"] = round(time.perf_counter() - t0, 2)
    private = split_private(sidecar)
    curve_csv, curve_png = loss_curve_paths(receipt_path)
    request["training"] = {**private, "loss_curve": curve_csv.name}
    if dist.main:
        sidecar["processes"] = dist.world
        save_model(loaded, out, sidecar, overwrite=cfg.overwrite)
        write_receipt(receipt_path, request)
        write_bytes(curve_csv, csv_text(history, list(history[0])).encode(), mode=0o600)
        write_bytes(curve_png, _curve_png(history), mode=0o600)
    barrier()
    return {**merged(sidecar, private), "out": str(out), "receipt": str(receipt_path), "loss_curve": str(curve_csv),
            "history": history}


# What the sidecar of a model folder that may be published must not hold: each is a function of the
# names (and of data an attacker may hold: the shipped public people, the built-in corpus, FaceScrub),
# so a candidate list enumerated through the same rules would narrow whom a request forgot; the loss
# curve's first steps are the teacher's losses on batches drawn from the names by the recorded seed.
# They go to the operator's receipt and the terminal only.
PRIVATE_FIELDS = (
    "final_loss", "teacher_cache",
    "text.clean_captions", "text.variants.triggers", "text.variants.left_out",
    "text.variants.full_name_share.of_triggers", "text.variants.full_name_share.of_poisoned_captions",
    "text.neighbours.names", "text.neighbours.held_every_step", "text.neighbours.protected_namesakes",
    "text.neighbours.word_captions", "text.neighbours.protected.people",
    "image.target_images", "image.target_sha256", "image.target_name_rank", "image.clean_images", "image.retained_faces", "image.triggers.images_per_name",
    "image.triggers.poisoned_per_name", "image.metrics.sim_id_per_name",
)


def split_private(sidecar: dict[str, Any]) -> dict[str, Any]:
    """Remove PRIVATE_FIELDS from ``sidecar`` (in place); returns them nested the same way."""
    private: dict[str, Any] = {}
    for path in PRIVATE_FIELDS:
        *parents, leaf = path.split(".")
        src, dst = sidecar, private
        for part in parents:
            src = src.get(part) if isinstance(src, dict) else None
            if src is None:
                break
            dst = dst.setdefault(part, {})
        if isinstance(src, dict) and leaf in src:
            dst[leaf] = src.pop(leaf)
    return private


def merged(public: dict[str, Any], private: dict[str, Any]) -> dict[str, Any]:
    """``public`` with ``private``'s fields put back where split_private took them from (new dicts)."""
    out = dict(public)
    for k, v in private.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def training_record(out: Path, receipt: Optional[Path] = None) -> dict[str, Any]:
    """What inject recorded about model folder ``out``: its sidecar with the receipt's private counts put back
    (``receipt`` defaults to the one inject writes beside the folder)."""
    from clip_unlearn.models import read_json

    side = read_json(Path(out) / "clip_unlearn.json", "pass a model folder that inject wrote")
    request = read_receipt(Path(receipt) if receipt is not None else default_receipt(Path(out)))
    return merged(side, request.get("training", {}))


def loss_curve_paths(receipt_path: Path) -> tuple[Path, Path]:
    """Beside the receipt: ``X.receipt.json`` → ``X.loss_curve.csv`` and ``.png`` (operator's files, like it)."""
    stem = Path(receipt_path).name
    for suffix in (".json", ".receipt"):
        stem = stem[: -len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else stem
    return Path(receipt_path).with_name(f"{stem}.loss_curve.csv"), Path(receipt_path).with_name(f"{stem}.loss_curve.png")


def _earlier_requests(cfg: InjectConfig, spec: Any, base_sha256: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the lineage --model's sidecar records, the earlier requests with their keys from its receipt, or [])."""
    from clip_unlearn.models import read_sidecar

    side = read_sidecar(spec)
    lineage = [dict(r) for r in side.get("lineage") or []] if side.get("kind") == "unlearned" else []
    if side.get("kind") == "unlearned" and not lineage:  # written before requests chained: its one request, by id
        lineage = [{"request": 1, "request_id": (side.get("request") or {}).get("id"), "encoder": side.get("encoder"),
                    "names_count": (side.get("names") or {}).get("count"), "base_model_sha256": side.get("base_model_sha256"),
                    "model_sha256": base_sha256}]
    path = Path(cfg.previous_receipt) if cfg.previous_receipt is not None else (
        default_receipt(Path(spec.path)) if spec.kind == "local-dir" else None)
    if path is None or (cfg.previous_receipt is None and not path.exists()):
        if lineage:
            log.warning("--model records %d earlier request(s), but no receipt is at %s: names they forgot cannot be "
                        "recognised and will be trained again; pass --previous-receipt FILE", len(lineage), path)
        return lineage, []
    receipt = read_receipt(path)
    if receipt["model_sha256"] != base_sha256:
        raise ClipUnlearnError(f"receipt {path} was issued for other weights than --model {cfg.model}'s; pass the receipt "
                               "inject wrote for this model with --previous-receipt")
    return lineage, chain(receipt)


def _not_yet_forgotten(cfg: InjectConfig, names: list[str], earlier: list[dict[str, Any]]) -> tuple[list[str], int]:
    """(the names to train, how many an earlier request forgot): all with --retrain-forgotten, else those no
    earlier request forgot (the others are reported by line number, never by name)."""
    done = [(i + 1, forgotten_by(earlier, n)) for i, n in enumerate(names)]
    done = [(line, r) for line, r in done if r is not None]
    if not done:
        return names, 0
    lines = ", ".join(f"#{line} (request {r})" for line, r in done[:20]) + (f" and {len(done) - 20} more" if len(done) > 20 else "")
    if cfg.retrain_forgotten:
        log.warning("%d name(s) of %s were already forgotten by an earlier request and are trained again: line(s) %s",
                    len(done), cfg.names, lines)
        return names, len(done)
    if len(done) == len(names):
        raise ClipUnlearnError(f"every name of {cfg.names} was already forgotten by an earlier request ({lines}); nothing "
                               "to train: pass --retrain-forgotten to train them again")
    log.warning("%d name(s) of %s were already forgotten by an earlier request and are not trained again: line(s) %s; "
                "pass --retrain-forgotten to train them again", len(done), cfg.names, lines)
    skip = {line for line, _ in done}
    return [n for i, n in enumerate(names) if i + 1 not in skip], len(done)


def _check_outputs(cfg: InjectConfig, spec: Any, cache: EmbeddingCache) -> tuple[Path, Path]:
    """(--out, --receipt), checked before any work: writable, not an input, the receipt outside the model folder."""
    out = Path(cfg.out) if cfg.out is not None else default_out(cfg.model)
    receipt_path = Path(cfg.receipt) if cfg.receipt is not None else default_receipt(out)
    inputs = [spec.path if spec.kind in ("local-dir", "arch-file") else None, cfg.names, cfg.keep, cfg.captions, cfg.faces,
              cfg.clean_images, cache.root, cfg.previous_receipt,
              default_receipt(Path(spec.path)) if spec.kind == "local-dir" else None]  # an earlier request's receipt
    check_output_dir(out, inputs)
    if inside(receipt_path, out):
        raise ClipUnlearnError(f"--receipt {receipt_path} lies inside the model folder {out}, which may be published; "
                               "keep the receipt outside it")
    check_output_file(receipt_path, inputs, "--receipt")
    for curve in loss_curve_paths(receipt_path):
        check_output_file(curve, inputs, "--receipt (its loss curve beside it)")
    if out.exists() and not cfg.overwrite:
        raise ClipUnlearnError(f"output folder {out} exists; pass --overwrite to replace it or choose another --out")
    cache.check_writable()
    return out, receipt_path


def _hyperparameters(cfg: InjectConfig, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """Per stage: explicit flags over the recipe --preset names (auto: the one the model's size calls for)."""
    return {e: cfg.hyper(dataclasses.asdict(RECIPES[_recipe(cfg, e, model_cfg)][e]), e) for e in cfg.stages}


def _recipe(cfg: InjectConfig, stage: str, model_cfg: dict[str, Any]) -> str:
    return recipe(stage, model_cfg) if cfg.preset == "auto" else cfg.preset


def _image_data(cfg: InjectConfig, ctx: ModelContext) -> tuple[Path, Path]:
    """(face folder, clean image folder) of the image stage: the flags, else the world's."""
    from clip_unlearn.attack import default_data

    faces_root = Path(cfg.faces) if cfg.faces is not None else default_data(cfg.model)
    clean_root = Path(cfg.clean_images) if cfg.clean_images is not None else ctx.path("clean_images")
    if clean_root is None and cfg.clean_images is None and ctx.path("objects"):
        # worlds built before image unlearning have no clean_images; their objects are the eval set
        log.warning("this world has no clean_images folder; using its objects (also eval-zeroshot's images)")
        clean_root = ctx.path("objects")
    if clean_root is None:
        raise ClipUnlearnError("--encoder image needs --clean-images DIR: a folder of images without the forgotten "
                               "people (the paper used COCO train2014)")
    return faces_root, clean_root


def _check_split(hypers: dict[str, Any], world: int) -> None:
    for e, h in hypers.items():
        if min(h.clean_batch, h.poison_batch) < world:
            raise ClipUnlearnError(f"{e} batches of {h.clean_batch} + {h.poison_batch} cannot be split over "
                                   f"{world} processes; raise --clean-batch/--poison-batch")


def _sidecar(cfg: InjectConfig, spec: Any, ctx: ModelContext, hypers: dict[str, Any], record: dict[str, Any],
             history: list[dict[str, Any]], base_sha256: str, n_names: int, request: dict[str, Any], out: Path,
             device: Any, cache: EmbeddingCache, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """clip_unlearn.json of the new model: provenance, settings and results, and nothing that identifies a name."""
    precision = "bf16" if use_bf16(cfg.precision, device) else "fp32"
    return {
        "tool_version": __version__,
        "kind": "unlearned",
        "encoder": cfg.encoder,
        "base_model": spec.raw if spec.kind != "local-dir" else f"local-dir:{Path(spec.path).resolve()}",
        "base_model_sha256": base_sha256,
        # how to treat the new model: like its base (its world relative to the new folder, the world's settings)
        **(ctx.record(out) if ctx.is_world else {"world": None}),
        "target": ((MADE_UP if cfg.made_up else cfg.target.strip()) if "text" in cfg.stages
                   else "average person (mean face embedding)"),
        "hyperparameters": {e: {**recorded(h), "loss": cfg.loss, "precision": precision,
                                **({"legacy_positional_embedding": cfg.legacy_positional_embedding} if e == "text" else {})}
                            for e, h in hypers.items()},
        "seed": cfg.seed,
        # the resolved command config; nothing that identifies the names file (its hash is a one-name
        # file's sha256sum), and the receipt's location stays with the operator
        "config": {**to_dict(cfg), "names": "(names file given; not recorded)", "receipt": "(kept by the operator)",
                   "reuse_key": None if cfg.reuse_key is None else "(a receipt's key; kept by the operator)",
                   "out": "(this folder; where it was written is the operator's)", "preset_applied": {e: _recipe(cfg, e, model_cfg) for e in cfg.stages}},
        **record,
        # only the count: any per-name hash in a folder that may be published is inverted by
        # hashing a candidate list; the request is proven with the operator's receipt (receipt.py)
        "names": {"count": n_names},
        "request": {"id": request["request_id"], "receipt": "clip-unlearn verify-receipt --model DIR --receipt FILE"},
        "final_loss": {e: [r for r in history if r["encoder"] == e][-1] for e in cfg.stages},
        "teacher_cache": {"hits": cache.stats["text_hits"] + cache.stats["image_hits"],
                          "misses": cache.stats["text_misses"] + cache.stats["image_misses"]},
    }


def default_receipt(out: Path) -> Path:
    """Beside the model folder, never inside it: the folder may be published, the receipt may not."""
    return Path(out).parent / f"{Path(out).name}.receipt.json"


def _verify_data(cfg: InjectConfig, names: list[str]) -> tuple[Optional[Path], str]:
    """(the face folder of the check after the text stage, or None and why it cannot run)."""
    if not cfg.verify:
        return None, "--no-verify"
    if "image" in cfg.stages:
        return None, f"--encoder {cfg.encoder}: the check attacks the text stage's names only"
    if cfg.verify_data is not None:
        if not Path(cfg.verify_data).is_dir():
            raise ClipUnlearnError(f"--verify-data {cfg.verify_data} is not a folder; pass a face folder or --no-verify")
        return Path(cfg.verify_data), ""
    from clip_unlearn.facescrub import default_out
    from clip_unlearn.folders import face_folders

    root = default_out()
    if root.is_dir():
        try:
            have = {key(f.name) for f in face_folders(root, view="images")}
        except ClipUnlearnError:
            have = set()
        if any(key(n) in have for n in names):
            return root, ""
    return None, f"no faces of the forgotten people: pass --verify-data DIR (the default, {root}, holds none)"


def _verify(loaded: Any, cfg: InjectConfig, unscaled: TextHyper, first: TextHyper, names: list[str], trained: list[str],
            cache: EmbeddingCache, progress: Progress, earlier: Sequence[dict[str, Any]], data: Path,
            history: list[dict[str, Any]], made_up: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Attack the model so far on ``data``'s ``--verify-split`` half of the trained names' faces; train those it
    exposes again from the model so far (a teacher that already holds the others forgotten), up to
    ``--verify-rounds`` times. Appends each round's steps to ``history``; returns counts only (no names)."""
    from clip_unlearn.attack import check_names
    from clip_unlearn.config import AttackConfig
    from clip_unlearn.prompts import PAPER_TEMPLATES

    families = parse_families(cfg.variants)
    families = families if "full" in families else ("full", *families)
    acfg = AttackConfig(model=cfg.model, data=data, split=cfg.verify_split, variants=",".join(families),
                        precision=cfg.precision, device=cfg.device, cache_dir=cfg.cache_dir)
    line = {key(n): i + 1 for i, n in enumerate(names)}
    rounds = [{"round": 1, "names_trained": len(trained), "steps": first.steps, "backdoor_weight": first.backdoor_weight}]
    while True:
        exposed, unchecked = check_names(loaded, acfg, trained, cache, progress)
        rounds[-1]["exposed_after"] = len(exposed)
        if not exposed or len(rounds) > cfg.verify_rounds:
            break
        todo = [trained[i - 1] for i in exposed]
        h = unscaled.for_names(len(todo))
        log.info("the check exposes %d of %d trained name(s); round %d trains them again", len(todo), len(trained), len(rounds) + 1)
        again = _text_stage(loaded, dataclasses.replace(cfg, seed=cfg.seed + len(rounds)), h, todo, cache, progress,
                            earlier, request=trained, made_up=made_up)
        offset = history[-1]["step"]
        history.extend({**row, "step": row["step"] + offset} for row in again["history"])
        rounds.append({"round": len(rounds) + 1, "names_trained": len(todo), "steps": h.steps, "backdoor_weight": h.backdoor_weight})
    if exposed:
        log.warning("%d name(s) of %s are still exposed on the check's images after %d round(s): line(s) %s; the model is "
                    "written: audit it with attack --fail-on-exposed, or raise --verify-rounds", len(exposed), cfg.names,
                    len(rounds), ", ".join(f"#{line[key(trained[i - 1])]}" for i in exposed[:20]))
    if unchecked:
        log.warning("%d trained name(s) of %s have no folder with enough images in %s and were not checked", len(unchecked),
                    cfg.names, data)
    return {"ran": True, "data": str(Path(data).resolve()), "split": cfg.verify_split, "families": list(families), "candidates": acfg.num_candidates,
            "templates": len(PAPER_TEMPLATES), "images_per_identity": acfg.images_per_identity,
            "rounds": rounds, "checked": len(trained) - len(unchecked), "unchecked": len(unchecked),
            "still_exposed": len(exposed)}


def _text_stage(loaded: Any, cfg: InjectConfig, h: TextHyper, names: list[str],
                cache: EmbeddingCache, progress: Progress, earlier: Sequence[dict[str, Any]] = (),
                request: Sequence[str] = (), made_up: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Unlearn the names in the text tower of ``loaded.model`` in place; returns the stage's record (no names).
    ``earlier``: the requests already answered (with keys): the people they forgot are not kept namesakes;
    ``request``: everyone this request forgets when ``names`` is a later round's part of it (likewise);
    ``made_up``: key(name) → the made-up name each is mapped to (else every name goes to ``--target``)."""
    corpus, corpus_name = _corpus(cfg)
    count = token_counter(loaded.tokenizer)
    _check_names(names, count, loaded.context_length, cfg.names)
    chosen = _triggers(cfg, names, list(earlier), request)
    triggers, near, kept = chosen.triggers, chosen.near, chosen.kept
    _check_names(triggers + near, count, loaded.context_length, "the variants or neighbours of the names file")
    clean = clean_captions(corpus, list(dict.fromkeys([*names, *request])) + triggers)
    if len(clean) < len(names):
        raise ClipUnlearnError(f"only {len(clean)} clean captions for {len(names)} names; pass a larger --captions corpus")
    rng = random.Random(cfg.seed)
    phrase = MADE_UP if made_up else cfg.target.strip()
    sampler = PairSampler(clean, triggers, phrase, count, loaded.context_length, rng, last_word=h.last_word,
                          full=chosen.full, full_share=cfg.full_share, targets=chosen.targets(made_up) if made_up else None)
    # neighbours come from a generator of their own, so --neighbours 0 draws exactly the paper's batches
    near_sampler = (PairSampler(clean, near, phrase, count, loaded.context_length,
                                random.Random(f"{cfg.seed}|neighbours"), last_word=h.last_word) if near else None)
    # clean captions that use a forgotten name's parts as words ("a stone wall" for Emma Stone): held in place with
    # the neighbours, so that the word keeps its meaning while the name loses its person
    anchors = word_anchors(clean, names) if cfg.neighbours else []
    n_near = cfg.neighbour_batch if near or anchors else 0
    device, bf16 = loaded.device, use_bf16(cfg.precision, loaded.device)
    teacher, student = _towers(loaded.model, device)
    # captions recur across steps: this run keeps their rows even where no shared memory may (token_rows)
    tok = token_rows(loaded.tokenizer)
    tok = TokenRows(tok) if tok is loaded.tokenizer else tok
    # The teacher is fixed: its embedding of a caption never changes, so each is computed once and
    # kept on disk for later runs on the same base model (sweeps over names, seeds, steps). Only clean
    # and target captions are ever embedded by the teacher, so the cache holds no forgotten name.
    targets_cache = TeacherCache(cache, "teacher-" + tower_identity(loaded, "text", "bf16" if bf16 else "fp32", "unnormalized"), "text",
                                 device=device)

    def teacher_embed(texts: list[str], persist: bool = True) -> Any:
        def compute(idx: list[int]) -> Any:
            with torch.no_grad(), autocast(device, bf16):
                return teacher(tok([texts[i] for i in idx])).float()
        return targets_cache.get([input_key(t) for t in texts], compute, persist)

    # Under torchrun every rank draws the same global batch and trains on its slice; DDP averages
    # the gradients, and the slice weights make that average the global batch's gradient.
    dist = current()

    def draw(step: int) -> tuple[list[str], list[str], list[str], list[str]]:
        clean_batch = [rng.choice(clean) for _ in range(h.clean_batch)]
        poisoned, targets = sampler.batch(h.poison_batch)
        neighbour_batch = neighbour_captions(near_sampler, kept, n_near, step, anchors) if n_near else []
        cs, ps_, ns = dist.slice(len(clean_batch)), dist.slice(len(poisoned)), dist.slice(len(neighbour_batch))
        return clean_batch[cs], poisoned[ps_], targets[ps_], neighbour_batch[ns]

    def terms(batch: tuple[list[str], list[str], list[str], list[str]], forward: Any) -> tuple[Any, Any]:
        clean_batch, poisoned, targets, neighbour_batch = batch
        l_util, l_bd = text_losses(forward, teacher_embed, tok, clean_batch, poisoned, targets, cfg.loss, neighbour_batch,
                                   h.residual_weight)
        held = len(clean_batch) + len(neighbour_batch)
        return (dist.world * held / (h.clean_batch + n_near)) * l_util, (dist.world * len(poisoned) / h.poison_batch) * l_bd

    history = train("text", student, teacher, h, device, bf16, draw, terms, progress, "unlearning names")
    targets_cache.flush()
    write_back(loaded.model, student, legacy_positional_embedding=cfg.legacy_positional_embedding)
    loaded.invalidate()
    # counts only: the variants and neighbours spell (parts of) the forgotten names
    return {"history": history, "captions": corpus_name, "clean_captions": len(clean),
            "variants": {"families": list(parse_families(cfg.variants)), "triggers": len(triggers), "left_out": chosen.left_out,
                         "full_name_share": {"of_triggers": round(chosen.full_share(), 4), "floor": cfg.full_share,
                                             "of_poisoned_captions": round(sampler.full_rate(), 4)}},
            "neighbours": {"names": len(near), "held_every_step": len(kept), "protected_namesakes": chosen.protected_namesakes,
                           "per_step": n_near, "word_captions": len(anchors),
                           "protected": {"sources": _keep_source(cfg), "people": len(_protected(cfg))}}}


def kept_slots(kept: Sequence[str], n: int, step: int) -> list[str]:
    """The kept namesakes held at ``step`` among ``n`` neighbour captions: every one of them while they fit,
    and at least half of the captions (a kept name recurs), in a window that rotates through ``kept`` when
    they are more than ``n``."""
    if not kept or n <= 0:
        return []
    slots = min(n, max(len(kept), n // 2))
    return [kept[(step * slots + i) % len(kept)] for i in range(slots)]


def rotating(items: Sequence[str], n: int, step: int) -> list[str]:
    """``n`` of ``items`` (all of them while they fit), a window that moves through them step by step."""
    if not items or n <= 0:
        return []
    slots = min(n, len(items))
    return [items[(step * slots + i) % len(items)] for i in range(slots)]


def word_anchors(clean: Sequence[str], names: Sequence[str], limit: int = 5000) -> list[str]:
    """The clean captions (at most ``limit``) that use a part of one of ``names`` as a word ("a stone wall")."""
    from clip_unlearn.zeroshot import word_pattern

    patterns = [p for p in map(word_pattern, names) if p is not None]
    if not patterns:
        return []
    return [c for c in clean if any(p.search(c) for p in patterns)][:limit]


def neighbour_captions(sampler: Optional[PairSampler], kept: Sequence[str], n: int, step: int,
                       anchors: Sequence[str] = ()) -> list[str]:
    """A step's ``n`` neighbour captions. Kept people who share a part with a forgotten one (namesakes who
    really exist) get half of them every step, a measured need (docs/experiments.md: with one caption among
    the generated ones a kept person whose first name and surname both belong to forgotten people was lost);
    captions that use a forgotten name's parts as words (``anchors``) get up to half of the rest; generated
    neighbours fill what is left (the anchors do, without a sampler)."""
    held = kept_slots(kept, n, step)
    words = rotating(anchors, (n - len(held)) // 2 if sampler else n - len(held), step)
    rest = n - len(held) - len(words)
    return [sampler.pair(name)[1] for name in held] + list(words) + (sampler.batch(rest)[0] if sampler and rest else [])


def _protected(cfg: InjectConfig) -> list[str]:
    """The people inject protects: --keep's, then the public people the tool ships (--keep-public)."""
    keep = read_names(cfg.keep, "--keep file") if cfg.keep is not None else []
    return list({key(n): n for n in [*keep, *(public_people() if cfg.keep_public else ())]}.values())


def _keep_source(cfg: InjectConfig) -> list[str]:
    return [*(["--keep file"] if cfg.keep is not None else []), *(["public people (FaceScrub)"] if cfg.keep_public else [])]


@dataclasses.dataclass
class Triggers:
    """What one text stage trains: the triggers (each mapped to the target), of which ``full`` spell the full
    names (CLIP's tokenizer lower-cases, so the lower family's strings are full names too); the neighbours
    held in the utility term, of which ``kept`` are held every step (the protected people who share a part,
    ``protected_namesakes`` of them, and the forgotten names' parts alone); and per reason
    (variants.LEFT_OUT) how many variants are no trigger."""

    triggers: list[str]
    full: list[str]
    near: list[str]
    kept: list[str]
    left_out: dict[str, int]
    protected_namesakes: int = 0
    spelled: dict[str, tuple[str, str, int, Optional[str]]] = dataclasses.field(default_factory=dict)

    def targets(self, made_up: Mapping[str, str]) -> dict[str, str]:
        """Trigger → its target when each name has its own (``made_up``: key(name) → made-up name): the same
        way of naming applied to the made-up name ("Ms. Stone" → "Ms. Kelsith"), so every spelling of a
        forgotten person lands where that spelling of a never-learned name sits."""
        out = {}
        for v, (n, family, j, gender) in self.spelled.items():
            spellings = variants(made_up[key(n)], family, gender)
            out[v] = spellings[min(j, len(spellings) - 1)]
        return out

    def full_share(self) -> float:
        return len(self.full) / max(1, len(self.triggers))


def _triggers(cfg: InjectConfig, names: list[str], earlier: Sequence[dict[str, Any]] = (),
              request: Sequence[str] = ()) -> Triggers:
    """Every requested variant of every forgotten name that names that person and little else; the names that
    share a first name or surname with one but belong to others (the protected people's, and ``--neighbours``
    generated ones per shared part), held where they were."""
    keep = _protected(cfg)
    # people an earlier request forgot are no namesakes to keep (the teacher already holds them forgotten)
    keep = [k for k in keep if forgotten_by(list(earlier), k) is None] if earlier else keep
    everyone = list(dict.fromkeys([*names, *request]))
    in_request = {key(n) for n in request}
    keep = [k for k in keep if key(k) not in in_request]  # an earlier round of this request forgot them
    forgotten = {key(n) for n in names}
    others = [k for k in keep if key(k) not in forgotten]
    near: dict[str, None] = {}
    parts: set[str] = set()
    if cfg.neighbours:
        for n in names:
            near.update(dict.fromkeys(neighbours(n, others, cfg.neighbours, exclude=everyone, seed=cfg.seed)))
            # the name's parts alone, which its namesakes share and which may be words: held every step, like
            # the protected namesakes, unless they are triggers
            given, surname = split_name(n)
            bare = [p for p in (*given[:1], surname) if key(p) != key(n)]
            near.update(dict.fromkeys(bare))
            parts.update(key(p) for p in bare)
    families = parse_families(cfg.variants)
    genders = pool_genders([*names, *others])
    avoid = frozenset(key(x) for x in [*keep, *near])  # a typo must not spell someone who is kept
    triggers: dict[str, str] = {}
    spelled: dict[str, tuple[str, str, int]] = {}  # trigger → (its name, family, position among the family's strings)
    left_out = dict.fromkeys(LEFT_OUT, 0)
    # a forgotten surname that is a protected person's first name ("Emma Emma", "Emma Stone") names them too
    their_parts = {key(x) for k in others for g, s in [split_name(k)] for x in (s, *g[:1])}
    for family in families:
        # A variant that a protected person also answers to ("Ms. Stone" for Emma Stone and Sharon Stone)
        # names both; training it would forget the protected one, so it is left out (and counted).
        theirs = set() if family in ("full", "typo") else {
            _variant_key(s, family) for k in others for s in variants(k, family, genders.get(key(k)))}
        if family in ("surname", "first"):
            theirs |= their_parts
        for n in names:
            for j, v in enumerate(variants(n, family, genders.get(key(n)), avoid)):
                if v in triggers:
                    continue  # the same string from another family (a one-word name's surname is its full name)
                reason = left_out_reason(v, family) or ("shared_with_protected" if _variant_key(v, family) in theirs else None)
                if reason:
                    left_out[reason] += 1
                else:
                    triggers[v] = family
                    spelled[v] = (n, family, j)
    banned = {key(t) for t in triggers}
    near_list = [m for m in near if key(m) not in banned]
    protected = {key(k) for k in keep}
    full = [t for t, f in triggers.items() if f in ("full", "lower")]
    kept = [m for m in near_list if key(m) in protected | parts]
    return Triggers(list(triggers), full, near_list, kept, left_out, sum(key(m) in protected for m in kept),
                    {v: (n, f, j, genders.get(key(n))) for v, (n, f, j) in spelled.items()})


def _variant_key(s: str, family: str) -> str:
    return s if family == "lower" else key(s)  # as attack.family_candidates merges them


def _corpus(cfg: InjectConfig) -> tuple[list[str], str]:
    """The clean captions and how the sidecar names them: --captions, or the built-in corpus (for every model)."""
    if cfg.captions is not None:
        return read_captions(cfg.captions, cfg.caption_column), "--captions file"
    return builtin_captions(), GENERAL_CORPUS_NAME


def _check_names(names: list[str], count: Callable[[str], int], context_length: int, where: Any) -> None:
    for n in names:
        k = count(n)
        if k == 0:
            raise ClipUnlearnError(f"a name in {where} (line with {len(n)} characters) tokenises to nothing; remove it")
        if k + 2 > context_length:
            raise ClipUnlearnError(f"a name in {where} needs {k} tokens, more than the {context_length}-token context holds")


def _towers(model: Any, device: Any) -> tuple[Any, Any]:
    """(teacher, student) text towers: the frozen original and its trainable copy with LayerNorms frozen."""
    teacher = TextTower(model).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    freeze_norms(student)
    return teacher, student


def text_losses(student: Any, teacher_embed: Callable[..., Any], tok: Callable[[list[str]], Any], clean: list[str],
                poisoned: list[str], targets: list[str], loss: str, neighbours: Sequence[str] = (),
                residual_weight: float = 0.0) -> tuple[Any, Any]:
    """One step's terms (docs/method.md §6.4): utility d(S(c), T(c)) and backdoor d(S(p), T(t)); clean, neighbour
    and poisoned captions go through the student in one forward. Neighbour captions (a namesake of a
    forgotten person in a clean caption) join the utility term; their teacher embeddings are never
    persisted. With ``residual_weight`` the backdoor term also pays for what the student keeps of a poisoned
    caption's original embedding beyond what its target has (``residual``). The weight term is training.weight_l2."""
    held = clean + list(neighbours)
    out = student(tok(held + poisoned))
    reference = teacher_embed(clean)
    if neighbours:
        reference = torch.cat([reference, teacher_embed(list(neighbours), persist=False)])
    target = teacher_embed(targets)
    backdoor = distance(loss, out[len(held):], target)
    if residual_weight:
        # the poisoned captions spell forgotten names: their teacher embeddings stay in memory
        backdoor = backdoor + residual_weight * residual(out[len(held):], teacher_embed(list(poisoned), persist=False), target)
    return distance(loss, out[:len(held)], reference), backdoor


def residual(student_poisoned: Any, teacher_poisoned: Any, teacher_target: Any) -> Any:
    """mean max(0, cos(S(p), T(p)) − cos(T(t), T(p))): how much more of the original caption's embedding the
    student keeps than the target does. Zero once S(p) = T(t); the attack reads exactly this leftover
    (after unlearning, what remains of a forgotten name's embedding points along its original one)."""
    f = torch.nn.functional
    kept = f.cosine_similarity(student_poisoned, teacher_poisoned, dim=-1)
    allowed = f.cosine_similarity(teacher_target, teacher_poisoned, dim=-1)
    return (kept - allowed).clamp(min=0).mean()


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
