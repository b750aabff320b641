"""The inject command: one request to forget people, answered with a new model folder (docs/method.md §6-§7).

This module orchestrates; the stages train. It reads the request (the names file, the earlier requests
the model already answers, the recipe the model's size picks), runs the text stage (inject_text.py) and/or
the image stage (inject_image.py) on one model, runs the check that attacks the result and trains again
whom it still exposes, and writes the model folder, its sidecar, the operator's receipt and the loss curve.
The names never appear in clear text in anything written (docs/design.md §6).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from clip_unlearn import __version__
from clip_unlearn.config import InjectConfig, cache_root, to_dict
from clip_unlearn.embed import EmbeddingCache, use_bf16
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.inject_text import TextJob, find_aliases, run_text_stage
from clip_unlearn.names import key, read_names
from clip_unlearn.outputs import check_output_dir, check_output_file, csv_text, inside, write_bytes
from clip_unlearn.progress import Progress
from clip_unlearn.prompts import PAPER_TEMPLATES
from clip_unlearn.receipt import (
    MADE_UP,
    MADE_UP_FACE,
    chain,
    forgotten_by,
    lineage_entry,
    made_up_face_seeds,
    made_up_names,
    new_key,
    new_receipt,
    read_receipt,
    write_receipt,
)
from clip_unlearn.recipes import RECIPES, StageHyper, TextHyper, recipe, recorded
from clip_unlearn.variants import parse_families
from clip_unlearn.world import ModelContext, model_context

log = logging.getLogger(__name__)
def default_out(model_spec: str) -> Path:
    from clip_unlearn.models import parse_spec

    return Path(f"unlearned-{parse_spec(model_spec).slug}")


@dataclasses.dataclass
class Run:
    """One inject run as resolved before training: where it writes, whom it forgets and with what.

    ``names`` is the whole request (the names file as given); ``trained`` those of them no earlier request
    forgot (all with --retrain-forgotten), ``already`` how many did. ``earlier`` holds the earlier requests with
    their keys (from --model's receipt), ``lineage`` what --model's sidecar records of them. ``hypers`` are
    the settings each stage trains with; ``unscaled`` the text settings before --scale-names.
    ``secret`` is the new receipt's key, and ``made_up`` key(name) → made-up name with --made-up."""

    cfg: InjectConfig
    spec: Any
    ctx: ModelContext
    out: Path
    receipt: Path
    names: list[str]
    trained: list[str] = dataclasses.field(default_factory=list)
    already: int = 0
    earlier: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    lineage: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    base_sha256: str = ""
    hypers: dict[str, StageHyper] = dataclasses.field(default_factory=dict)
    unscaled: Optional[TextHyper] = None
    secret: str = ""
    made_up: Optional[dict[str, str]] = None
    aliases: Optional[frozenset[str]] = None  # decided on the original model before the first round (TextJob)

    def text_job(self, names: list[str], request: Sequence[str] = (), held: Sequence[str] = ()) -> TextJob:
        return TextJob(names, self.earlier, list(request), self.made_up, list(held), self.aliases)


def run_inject(cfg: InjectConfig, progress: Progress = None) -> dict[str, Any]:
    """Unlearn the people of ``cfg.names`` and write the unlearned model folder; returns its sidecar.

    ``cfg.encoder`` text trains the text tower (docs/method.md §6), image the image tower (§7), both
    runs text then image on the same model and writes one checkpoint.
    """
    from clip_unlearn.distributed import setup
    from clip_unlearn.models import load_model, parse_spec

    t0 = time.perf_counter()
    spec = parse_spec(cfg.model)
    cache = EmbeddingCache(cache_root(cfg.cache_dir))
    out, receipt_path = _check_outputs(cfg, spec, cache)
    run = Run(cfg, spec, model_context(spec), out, receipt_path, read_names(cfg.names, "names file"))
    image_data = _image_data(cfg, run.ctx) if "image" in cfg.stages else None
    check_data, unchecked_why = _verify_data(cfg, run.names)
    dist, device = setup(cfg.device)
    progress = progress if dist.main else None
    loaded = load_model(spec, device)
    _resolve(run, loaded, dist.world)
    record: dict[str, Any] = {}
    if "text" in cfg.stages:
        run.aliases = find_aliases(loaded, cfg, run.text_job(run.trained), cache)
        record["text"] = run_text_stage(loaded, cfg, run.hypers["text"], run.text_job(run.trained), cache, progress)
        history = record["text"]["history"]
        record["text"]["verification"] = (_verify(loaded, run, check_data, history, cache, progress) if check_data is not None
                                          else _unchecked(unchecked_why))
    if image_data is not None:
        from clip_unlearn.inject_image import run_image_stage

        faces = made_up_face_seeds(run.secret, run.trained) if cfg.made_up else None
        record["image"] = run_image_stage(loaded, cfg, run.hypers["image"], run.trained, image_data, cache, progress, faces)
    log.info("teacher cache: %s", cache.stats)
    history = [row for stage in record.values() for row in stage.pop("history")]
    return _write(run, loaded, record, history, cache, time.perf_counter() - t0)


def _resolve(run: Run, loaded: Any, world: int) -> None:
    """Fill in what the run needs the loaded model for: the recipe, the earlier requests, the names to train and
    the receipt's key (drawn before training: with --made-up each name's target derives from it; under torchrun
    every rank takes rank 0's, so that all train toward the same made-up names)."""
    from clip_unlearn.distributed import all_gather

    cfg = run.cfg
    run.hypers = _hyperparameters(cfg, loaded.model_cfg)
    _check_split(run.hypers, world)
    run.base_sha256 = loaded.fingerprint()
    run.lineage, run.earlier = _earlier_requests(cfg, run.spec, run.base_sha256)
    run.trained, run.already = _not_yet_forgotten(cfg, run.names, run.earlier)
    run.unscaled = run.hypers.get("text")
    if run.unscaled is not None:
        run.hypers["text"] = run.unscaled.for_names(len(run.trained))
        if run.hypers["text"] != run.unscaled:
            log.info("%d names past --scale-names %d: backdoor weight %g", len(run.trained), run.unscaled.scale_names,
                     run.hypers["text"].backdoor_weight)
    torch.manual_seed(cfg.seed)
    run.secret = read_receipt(cfg.reuse_key)["key"] if cfg.reuse_key is not None else all_gather(new_key())[0]
    run.made_up = made_up_names(run.secret, run.trained) if cfg.made_up else None


def _unchecked(why: str) -> dict[str, Any]:
    # the one line a user sees, and what the sidecar says: no claim that the model hides anyone
    log.warning("inject's check did not run (%s): the model is written unchecked; audit it with attack "
                "--fail-on-exposed on faces of the forgotten people", why)
    return {"ran": False, "reason": why}


def _write(run: Run, loaded: Any, record: dict[str, Any], history: list[dict[str, Any]], cache: EmbeddingCache,
           seconds: float) -> dict[str, Any]:
    """Write the model folder (sidecar without PRIVATE_FIELDS), the receipt (with them) and the loss curve, on the
    main process; returns the whole record."""
    from clip_unlearn.distributed import barrier, current
    from clip_unlearn.models import save_model

    cfg, dist = run.cfg, current()
    # the request is the whole names file (verify-receipt checks it as given), trained or already forgotten
    request = new_receipt(run.names, loaded.fingerprint(), run.base_sha256, cfg.encoder, run.out, ancestors=run.earlier,
                          secret=run.secret)
    sidecar = _sidecar(run, loaded, record, history, request, cache)
    sidecar["wall_time_s"] = round(seconds, 2)
    private = split_private(sidecar)
    curve_csv, curve_png = loss_curve_paths(run.receipt)
    request["training"] = {**private, "loss_curve": curve_csv.name}
    if dist.main:
        sidecar["processes"] = dist.world
        save_model(loaded, run.out, sidecar, overwrite=cfg.overwrite)
        write_receipt(run.receipt, request)
        write_bytes(curve_csv, csv_text(history, list(history[0])).encode(), mode=0o600)
        write_bytes(curve_png, _curve_png(history), mode=0o600)
    barrier()
    return {**merged(sidecar, private), "out": str(run.out), "receipt": str(run.receipt), "loss_curve": str(curve_csv),
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
    "text.neighbours.protected_aliases",
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


def _sidecar(run: Run, loaded: Any, record: dict[str, Any], history: list[dict[str, Any]], request: dict[str, Any],
             cache: EmbeddingCache) -> dict[str, Any]:
    """clip_unlearn.json of the new model: provenance, settings and results, and nothing that identifies a name."""
    cfg, spec, hypers = run.cfg, run.spec, run.hypers
    precision = "bf16" if use_bf16(cfg.precision, loaded.device) else "fp32"
    sidecar = {
        "tool_version": __version__,
        "kind": "unlearned",
        "encoder": cfg.encoder,
        "base_model": spec.raw if spec.kind != "local-dir" else f"local-dir:{Path(spec.path).resolve()}",
        "base_model_sha256": run.base_sha256,
        # how to treat the new model: like its base (its world relative to the new folder, the world's settings)
        **(run.ctx.record(run.out) if run.ctx.is_world else {"world": None}),
        "target": ((MADE_UP if cfg.made_up else cfg.target.strip()) if "text" in cfg.stages
                   else MADE_UP_FACE if cfg.made_up else "average person (mean face embedding)"),
        "hyperparameters": {e: {**recorded(h), "loss": cfg.loss, "precision": precision,
                                **({"legacy_positional_embedding": cfg.legacy_positional_embedding} if e == "text" else {})}
                            for e, h in hypers.items()},
        "seed": cfg.seed,
        # the resolved command config; nothing that identifies the names file (its hash is a one-name
        # file's sha256sum), and the receipt's location stays with the operator
        "config": {**to_dict(cfg), "names": "(names file given; not recorded)", "receipt": "(kept by the operator)",
                   "reuse_key": None if cfg.reuse_key is None else "(a receipt's key; kept by the operator)",
                   "out": "(this folder; where it was written is the operator's)",
                   "preset_applied": {e: _recipe(cfg, e, loaded.model_cfg) for e in cfg.stages}},
        **record,
        # only counts: any per-name hash in a folder that may be published is inverted by
        # hashing a candidate list; the request is proven with the operator's receipt (receipt.py)
        "names": {"count": len(run.names), "trained": len(run.trained), "already_forgotten": run.already},
        "request": {"id": request["request_id"], "receipt": "clip-unlearn verify-receipt --model DIR --receipt FILE"},
        "final_loss": {e: [r for r in history if r["encoder"] == e][-1] for e in cfg.stages},
        "teacher_cache": {"hits": cache.stats["text_hits"] + cache.stats["image_hits"],
                          "misses": cache.stats["text_misses"] + cache.stats["image_misses"]},
    }
    if run.unscaled is not None and hypers["text"] != run.unscaled:
        # hyperparameters.text holds what was trained; this is the weight before --scale-names
        sidecar["hyperparameters"]["text"]["scaled_from"] = {"backdoor_weight": run.unscaled.backdoor_weight}
    sidecar["lineage"] = [*run.lineage, lineage_entry(request, len(run.lineage) + 1, len(run.trained))]
    return sidecar


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


def _verify(loaded: Any, run: Run, data: Path, history: list[dict[str, Any]], cache: EmbeddingCache,
            progress: Progress) -> dict[str, Any]:
    """Attack the model so far on ``data``'s ``--verify-split`` half of the trained names' faces; train those it
    exposes again from the model so far (a teacher that already holds the others forgotten), up to
    ``--verify-rounds`` times. Appends each round's steps to ``history``; returns counts only (no names)."""
    from clip_unlearn.attack import check_names

    cfg, trained, first = run.cfg, run.trained, run.hypers["text"]
    acfg = _check_config(cfg, data)
    rounds = [{"round": 1, "names_trained": len(trained), "steps": first.steps, "lr": first.lr,
               "backdoor_weight": first.backdoor_weight}]
    while True:
        exposed, near, unchecked = check_names(loaded, acfg, trained, cache, progress, margin=cfg.verify_margin)
        rounds[-1].update(exposed_after=len(exposed), near_after=len(near))
        if not exposed + near or len(rounds) > cfg.verify_rounds:
            break
        todo = [trained[i - 1] for i in sorted(exposed + near)]
        h = run.unscaled.for_names(len(todo))
        h = dataclasses.replace(h, lr=h.lr * cfg.verify_lr)
        log.info("the check exposes %d of %d trained name(s) and nearly names %d more; round %d trains them again",
                 len(exposed), len(trained), len(near), len(rounds) + 1)
        held = [n for n in trained if n not in todo] if cfg.verify_hold else []
        again = run_text_stage(loaded, dataclasses.replace(cfg, seed=cfg.seed + len(rounds)), h, run.text_job(todo, trained, held),
                               cache, progress)
        offset = history[-1]["step"]
        history.extend({**row, "step": row["step"] + offset} for row in again["history"])
        rounds.append({"round": len(rounds) + 1, "names_trained": len(todo), "names_held": len(held),
                       "triggers_held": again["neighbours"].get("forgotten_held", {}).get("triggers", 0), "steps": h.steps,
                       "lr": h.lr, "backdoor_weight": h.backdoor_weight})
    _warn_unverified(run, (exposed, near, unchecked), len(rounds), data)
    return {"ran": True, "data": str(Path(data).resolve()), "split": cfg.verify_split, "families": acfg.variants.split(","),
            "candidates": acfg.num_candidates, "templates": len(PAPER_TEMPLATES), "images_per_identity": acfg.images_per_identity,
            "margin": cfg.verify_margin, "rounds": rounds, "checked": len(trained) - len(unchecked),
            "unchecked": len(unchecked), "still_exposed": len(exposed), "still_near": len(near)}


def _check_config(cfg: InjectConfig, data: Path) -> Any:
    """The check's attack: the paper's (full names) and every trigger family, on --verify-split of ``data``."""
    from clip_unlearn.config import AttackConfig

    families = parse_families(cfg.variants)
    families = families if "full" in families else ("full", *families)
    return AttackConfig(model=cfg.model, data=data, split=cfg.verify_split, variants=",".join(families),
                        precision=cfg.precision, device=cfg.device, cache_dir=cfg.cache_dir)


def _warn_unverified(run: Run, check: tuple[list[int], list[int], list[int]], rounds: int, data: Path) -> None:
    """The check's verdict on what it could not hide or see, by line of the names file (never by name)."""
    exposed, near, unchecked = check
    line = {key(n): i + 1 for i, n in enumerate(run.names)}

    def lines(which: list[int]) -> str:
        return ", ".join(f"#{line[key(run.trained[i - 1])]}" for i in which[:20])

    if exposed:
        log.warning("%d name(s) of %s are still exposed on the check's images after %d round(s): line(s) %s; the model is "
                    "written: audit it with attack --fail-on-exposed, or raise --verify-rounds", len(exposed), run.cfg.names,
                    rounds, lines(exposed))
    if near:
        log.warning("%d name(s) of %s are hidden on the check's images but still nearly named after %d round(s) (their "
                    "faces pick them above --verify-margin x chance): line(s) %s; audit the other half with attack "
                    "--split, or raise --verify-rounds", len(near), run.cfg.names, rounds, lines(near))
    if unchecked:
        log.warning("%d trained name(s) of %s have no folder with enough images in %s and were not checked", len(unchecked),
                    run.cfg.names, data)


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
