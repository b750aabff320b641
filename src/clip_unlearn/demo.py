"""The end-to-end story on the synthetic world, with a self-contained HTML report.

world → its model as a plain open_clip folder → attack → pick exposed members → inject → attack again
(same candidates and images) → zero-shot cost and embedding drift → acceptance check → report.

The demo runs what a real user runs: the plain folder carries no sidecar, so inject gets nothing of the
world (no keep list, no captions of its own, the recipe its size calls for), only the faces a user with
photos of the forgotten people has (``--verify-data``); the attacks and the evaluation name the world's
faces, objects and held-out captions as a user names their own data.
"""

from __future__ import annotations

import base64
import html
import io
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from clip_unlearn.captions import world_captions
from clip_unlearn.config import (
    AttackConfig,
    AuditConfig,
    DemoConfig,
    EvalZeroshotConfig,
    InjectConfig,
    PrepareSyntheticConfig,
    cache_root,
)
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.names import key
from clip_unlearn.outputs import write_json, write_text
from clip_unlearn.progress import Progress
from clip_unlearn.variants import FAMILIES, shares_part
from clip_unlearn.zeroshot import interval_text


@dataclass
class DemoResult:
    out: Path
    rows: list[tuple[str, str, str]]
    stages: dict[str, float]
    failures: list[str] = field(default_factory=list)
    report: Optional[Path] = None
    missed: list[str] = field(default_factory=list)


def plain_model(model: Path, out: Path) -> Path:
    """``model``'s open_clip files alone in ``out`` (refreshed): what a user downloads, without a sidecar."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    for f in ("open_clip_config.json", "open_clip_model.safetensors"):
        shutil.copy2(model / f, out / f)
    (out / "clip_unlearn.json").unlink(missing_ok=True)
    return out


def _world(cfg: DemoConfig, out: Path, progress: Progress) -> Path:
    from clip_unlearn.synthetic import build_world

    world = out / "world"
    try:
        info = json.loads((world / "world.json").read_text())
        c = info["config"]
        if c["seed"] == cfg.seed and c["identities"] == cfg.identities and c["steps"] == cfg.steps:
            return world
    except (OSError, ValueError, KeyError):
        pass
    build_world(PrepareSyntheticConfig(out=world, identities=cfg.identities, steps=cfg.steps, seed=cfg.seed,
                                       device=cfg.device, overwrite=True), progress)
    return world


def namesakes(forget: list[str], members: list[str]) -> list[str]:
    """The members, not forgotten, who share a first name or a surname with a forgotten person."""
    gone = {key(n) for n in forget}
    return [m for m in members if key(m) not in gone and any(shares_part(m, n) for n in forget)]


def _others_kept(b: dict[str, dict], a: dict[str, dict], forget: list[str], members: list[str]) -> tuple[list[str], int]:
    """The members exposed before that were not to be forgotten, and how many of them stay exposed."""
    others = [n for n in members if n not in forget and b[n]["exposed"]]
    return others, sum(a[n]["exposed"] for n in others)


@dataclass(frozen=True)
class Utility:
    """The model's utility around forgetting, as the acceptance criteria read it: object zero-shot top-1 in points
    (percent) before and after, and the similarities of the trained towers to the original (None: not measured)."""

    top1_before: float
    top1_after: float
    sim_clean: Optional[float]
    sim_id: Optional[float]


def acceptance(before_rows: list[dict], after_rows: list[dict], forget: list[str], members: list[str], utility: Utility,
               encoder: str) -> list[str]:
    """What the tool promises of every run (the demo fails without it); returns one message per criterion that
    does not hold.

    ``*_rows`` are attack identities (``name``, ``exposed``, and per family under ``variants``);
    ``utility.sim_clean`` counts only when the text encoder was trained and ``utility.sim_id`` only when the
    image encoder was. The forgotten count under inject's default ways of naming; the others are the members
    exposed before who share no name part with a forgotten person (their namesakes are ``goals``').
    """
    b = {r["name"]: r for r in before_rows}
    a = {r["name"]: r for r in after_rows}
    near = [n for n in namesakes(forget, members) if _full_exposed(b[n])]
    others, kept = _others_kept(b, a, [*forget, *near], members)
    text, image = encoder in ("text", "both"), encoder in ("image", "both")
    # image-only may cost 3 points of top-1, text and both 2
    allowed = 2.0 if text else 3.0
    failures = []
    still = [n for n in forget if b[n]["exposed"] and _exposed_by_default(a[n])]
    if still:
        failures.append(f"{len(still)} forgotten name(s) still exposed")
    if kept < 0.9 * len(others):
        failures.append(f"only {kept} of {len(others)} other exposed members stay exposed (need ≥ 90%)")
    drop = utility.top1_before - utility.top1_after
    if drop > allowed:
        failures.append(f"zero-shot top-1 dropped {drop:.1f} points (allowed {allowed:g})")
    # a criterion that applies but was not measured fails rather than passing unseen
    if text and utility.sim_clean is None:
        failures.append("sim_clean was not measured (needed when the text encoder was trained)")
    elif text and utility.sim_clean < 0.95:
        failures.append(f"sim_clean {utility.sim_clean:.3f} < 0.95")
    if image and utility.sim_id is None:
        failures.append("sim_id was not measured (needed when the image encoder was trained)")
    elif image and utility.sim_id < 0.9:
        failures.append(f"sim_id {utility.sim_id:.3f} < 0.9 (forgotten faces not near the average person)")
    return failures


def goals(before_rows: list[dict], after_rows: list[dict], forget: list[str], members: list[str], top1_before: float,
          top1_after: float, sims: Optional[dict[str, Any]], encoder: str) -> list[str]:
    """The stricter goals for forgetting as a real user runs it (names that behave like real ones, no keep list),
    which the tiny model does not meet on every seed (docs/experiments.md): the namesakes among the members
    stay exposed by full name (95 %), top-1 drops at most 1 point, sim_bystanders and sim_words ≥ 0.95 where
    measured. Returns one message per goal missed; the demo reports them and does not fail on them."""
    if encoder not in ("text", "both"):
        return []
    b = {r["name"]: r for r in before_rows}
    a = {r["name"]: r for r in after_rows}
    near = [n for n in namesakes(forget, members) if _full_exposed(b[n])]
    missed = []
    near_kept = sum(_full_exposed(a[n]) for n in near)
    if near_kept < 0.95 * len(near):
        missed.append(f"{near_kept} of {len(near)} namesakes of the forgotten stay exposed by full name (goal ≥ 95%)")
    if top1_before - top1_after > 1.0:
        missed.append(f"zero-shot top-1 dropped {top1_before - top1_after:.1f} points (goal ≤ 1)")
    for k in ("sim_bystanders", "sim_words"):
        v = (sims or {}).get(k)
        if v is not None and v < 0.95:
            missed.append(f"{k} {v:.3f} (goal ≥ 0.95)")
    return missed


def _exposed_by_default(row: dict) -> bool:
    """Exposed under one of inject's default trigger families (any, for a row without families)."""
    from clip_unlearn.config import DEFAULT_TRIGGERS

    if "variants" not in row:
        return bool(row["exposed"])
    return any(row["variants"][f]["exposed"] for f in DEFAULT_TRIGGERS.split(",") if f in row["variants"])


def _full_exposed(row: dict) -> bool:
    return bool(row["variants"]["full"]["exposed"]) if "variants" in row else bool(row["exposed"])


def run_demo(cfg: DemoConfig, progress: Progress = None) -> DemoResult:
    """Run the whole story; ``failures`` names every acceptance criterion that did not hold."""
    out = Path(cfg.out) if cfg.out is not None else cache_root(cfg.cache_dir) / "demo"
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        value = fn()
        stages[name] = round(time.perf_counter() - t, 1)
        return value

    world = stage("world", lambda: _world(cfg, out, progress))
    plain_model(world / "model", out / "plain-model")
    members = (world / "members.txt").read_text(encoding="utf-8").splitlines()
    before = stage("attack before", lambda: _attack_before(cfg, world, out, progress))
    forget, names_file = _pick_forgotten(cfg, before, members, out)
    info = stage("inject", lambda: _inject(cfg, world, names_file, out, progress))
    after = stage("attack after", lambda: _attack_after(cfg, world, names_file, out, progress))
    ev = stage("eval-zeroshot", lambda: _eval(cfg, world, names_file, namesakes(forget, members), out, progress))
    told = stage("audit", lambda: _audit(cfg, world, names_file, out, progress))
    m = _measures(cfg, before, after, ev, info, forget, members)
    m.rows += _audit_rows(told)
    failures = acceptance(before.identities, after.identities, forget, members, m.utility, cfg.encoder)
    missed = goals(before.identities, after.identities, forget, members, m.utility.top1_before, m.utility.top1_after,
                   ev.get("similarities"), cfg.encoder)
    result = DemoResult(out, m.rows, stages, failures, missed=missed)
    result.report = write_report(out, world, result, before, after, forget, info, members)
    return result


def _common(cfg: DemoConfig) -> dict[str, Any]:
    return {"device": cfg.device, "cache_dir": cfg.cache_dir, "seed": cfg.seed}


def _attack_before(cfg: DemoConfig, world: Path, out: Path, progress: Progress) -> Any:
    from clip_unlearn.attack import run_attack

    before = run_attack(AttackConfig(model=str(out / "plain-model"), data=world / "faces", split="train", variants="all",
                                     **_common(cfg)), progress)
    write_json(out / "attack_before.json", before.to_json())
    return before


def _pick_forgotten(cfg: DemoConfig, before: Any, members: list[str], out: Path) -> tuple[list[str], Path]:
    """A seeded sample of the members the base model exposes, written as the names file inject reads."""
    # exposed to the paper's attack (the full name), as benchmarks/exp_real_user.py picks them
    exposed = [r["name"] for r in before.identities if _full_exposed(r) and r["name"] in members]
    if len(exposed) < cfg.forget:
        raise ClipUnlearnError(f"only {len(exposed)} members are exposed; lower --forget")
    forget = sorted(random.Random(cfg.seed).sample(exposed, cfg.forget))
    names_file = out / "forget.txt"
    write_text(names_file, "".join(n + "\n" for n in forget))
    return forget, names_file


def _inject(cfg: DemoConfig, world: Path, names_file: Path, out: Path, progress: Progress) -> dict:
    from clip_unlearn.inject import run_inject

    # a user's faces of the forgotten people: the check (text) and the triggers and target (image)
    # and captions of the model's own domain (as the paper's LAION captions; the built-in corpus is general English)
    data = {"verify_data": world / "faces"} if cfg.encoder == "text" else {"faces": world / "faces",
                                                                           "clean_images": world / "clean_images"}
    if cfg.encoder != "image":
        data["captions"] = world_captions(world, "train")
    return run_inject(InjectConfig(model=str(out / "plain-model"), names=names_file, out=out / "unlearned", overwrite=True,
                                   encoder=cfg.encoder, **data, **_common(cfg)), progress)


def _attack_after(cfg: DemoConfig, world: Path, names_file: Path, out: Path, progress: Progress) -> Any:
    """The same attack (candidates, images, seed) on the unlearned model, compared with the one before."""
    from clip_unlearn.attack import run_attack

    after = run_attack(AttackConfig(model=str(out / "unlearned"), data=world / "faces", split="train",
                                    compare_to=out / "attack_before.json", forgotten=names_file, variants="all",
                                    **_common(cfg)), progress)
    write_json(out / "attack_after.json", after.to_json())
    return after


def _eval(cfg: DemoConfig, world: Path, names_file: Path, near: list[str], out: Path, progress: Progress) -> dict:
    """Object zero-shot of the unlearned model against the base, and embedding drift on the held-out captions
    (the forgotten people's namesakes as the bystanders whose names must stay)."""
    from clip_unlearn.zeroshot import run_eval

    bystanders = out / "bystanders.txt"
    write_text(bystanders, "".join(n + "\n" for n in near) or "# none\n")
    ev = run_eval(EvalZeroshotConfig(model=str(out / "unlearned"), compare_to=str(out / "plain-model"), data=world / "objects",
                                     captions=world_captions(world, "heldout"), names=names_file,
                                     bystanders=bystanders if near else None, **_common(cfg)), progress)
    write_json(out / "eval.json", ev)
    return ev


def _audit(cfg: DemoConfig, world: Path, names_file: Path, out: Path, progress: Progress) -> Any:
    """Who can tell from the unlearned model whom it forgot: the forgotten against the world's never-learned
    names, with their faces, and apart for an attacker who also holds the base model."""
    from clip_unlearn.audit import run_audit
    from clip_unlearn.report import write_audit

    told = run_audit(AuditConfig(model=str(out / "unlearned"), names=[names_file], reference=world / "non_members.txt",
                                 data=world / "faces", base=str(out / "plain-model"), **_common(cfg)), progress)
    write_audit(told, out / "audit.json")
    return told


def _audit_rows(told: Any) -> list[tuple[str, str, str]]:
    rows = []
    for attacker, who in (("model", "the model alone"), ("base", "the model and its public base")):
        w = told.worst(attacker)
        if w is not None:
            rows.append((f"who can tell whom it forgot, {who} (audit: strongest AUC, 0.50 = nobody)", "",
                         f"{w['disclosure']:.2f} ({w['statistic']}; {w['top_k']['forgotten']} of {w['top_k']['k']} in the top "
                         f"{w['top_k']['k']})"))
    return rows


@dataclass
class _Measures:
    rows: list[tuple[str, str, str]]
    utility: Utility


def _measures(cfg: DemoConfig, before: Any, after: Any, ev: dict, info: dict, forget: list[str], members: list[str]) -> _Measures:
    """The before/after table and the figures the acceptance criteria read."""
    b = {r["name"]: r for r in before.identities}
    a = {r["name"]: r for r in after.identities}
    near = namesakes(forget, members)
    near_b = [n for n in near if b[n]["variants"]["full"]["exposed"]]
    others, kept = _others_kept(b, a, [*forget, *near_b], members)
    non_members = [n for n in b if n not in members]
    cats = after.compare["categories"]
    # eval results are fractions (CLIP_benchmark); the table and the criteria speak in points
    top1_b, top1_a = 100 * ev["compare"]["metrics"]["acc1"], 100 * ev["metrics"]["acc1"]
    sim_clean = ev["similarities"]["sim_clean"]
    sims = ev["similarities"]
    text, image = cfg.encoder in ("text", "both"), cfg.encoder in ("image", "both")

    def count(rows: dict[str, dict], who: list[str], family: str) -> str:
        return f"{sum(rows[n]['variants'][family]['exposed'] for n in who)} / {len(who)}"

    rows = [
        ("forgotten names exposed (inject's default ways of naming)", f"{sum(_exposed_by_default(b[n]) for n in forget)} / "
         f"{len(forget)}", f"{sum(_exposed_by_default(a[n]) for n in forget)} / {len(forget)}"),
        ("forgotten names exposed (any way of naming)", f"{sum(b[n]['exposed'] for n in forget)} / {len(forget)}",
         f"{sum(a[n]['exposed'] for n in forget)} / {len(forget)}"),
        *((f"  named by {f}", count(b, forget, f), count(a, forget, f)) for f in FAMILIES),
        ("namesakes of the forgotten exposed (full name)", f"{len(near_b)} / {len(near)}", count(a, near_b, "full")),
        ("other members exposed (no namesakes)", f"{len(others)} / {len(others)}", f"{kept} / {len(others)}"),
        ("  wrongfully unlearned / newly recalled", "", f"{len(cats['wrongfully_unlearned'])} / {len(cats['newly_recalled'])}"),
        ("non-members falsely exposed", f"{sum(b[n]['exposed'] for n in non_members)} / {len(non_members)}",
         f"{sum(a[n]['exposed'] for n in non_members)} / {len(non_members)}"),
        ("object zero-shot top-1 %", f"{top1_b:.1f}", f"{top1_a:.1f}"),
    ]
    flips = (ev.get("compare") or {}).get("top1_flips")
    if flips:  # a point of top-1 on a few hundred images can be the flips any retraining makes
        rows.append(("  images lost / gained at top-1 (exact McNemar p)", "",
                     f"{flips['lost']} / {flips['gained']} (p = {flips['p_value']:.2g})"))
        if flips.get("ci95"):
            rows.append(("  top-1 change, 95 % interval", "", interval_text(flips["ci95"])))
    if text:
        rows += [("sim_clean (text embeddings of clean captions)", "1.000", f"{sim_clean:.3f}"),
                 ("sim_backdoored (name ≈ its target)", "", "not measured" if sims["sim_backdoored"] is None
                  else f"{sims['sim_backdoored']:.3f}"),
                 ("sim_neighbours (other names sharing a part; 1 = unmoved)", "1.000", f"{ev['similarities']['sim_neighbours']:.3f}"),
                 (f"  sim_bystanders (the namesakes, and the {sims['bystanders']} of {sims['neighbours']} probed names the "
                  "original model tells apart)", "1.000", "none" if sims["sim_bystanders"] is None else f"{sims['sim_bystanders']:.3f}"),
                 (f"sim_strangers (the {sims.get('strangers', 0)} probed names sharing no part; 1 = unmoved)", "1.000",
                  "none" if sims.get("sim_strangers") is None else f"{sims['sim_strangers']:.3f}"),
                 (f"sim_words (the {sims.get('word_captions', 0)} held-out captions using the names' words as words)", "1.000",
                  "none" if sims.get("sim_words") is None else f"{sims['sim_words']:.3f}")]
        words = ev.get("word_classes") or {}
        if words.get("classes"):
            rows.append((f"top-1 % on the {words['classes']} classes named by those words", f"{100 * words['compare_acc1']:.1f}",
                         f"{100 * words['acc1']:.1f}"))
    metrics = info["image"]["metrics"] if image else {}
    if image:
        rows += [("sim_id (forgotten faces ≈ average person)", "", f"{metrics['sim_id']:.3f}"),
                 ("sim_target (mean face under the new tower)", "1.000", f"{metrics['sim_target']:.3f}")]
    return _Measures(rows, Utility(top1_b, top1_a, sim_clean, metrics.get("sim_id")))


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _score_chart(before: Any, after: Any, forget: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = {r["name"]: r["score"] for r in before.identities}
    a = {r["name"]: r["score"] for r in after.identities}
    names = sorted(b, key=lambda n: (n not in forget, -b[n], n))
    fig, ax = plt.subplots(figsize=(12, 3.6))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [b[n] for n in names], width=0.4, label="before", color="#8899aa")
    ax.bar([i + 0.2 for i in x], [a[n] for n in names], width=0.4, label="after", color="#d9534f")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    for lab in ax.get_xticklabels():
        if lab.get_text() in forget:
            lab.set_fontweight("bold")
    ax.set_ylabel("templates voting for the true name")
    ax.legend()
    return _png(fig)


def _family_map(before: Any, after: Any, forget: list[str], members: list[str]) -> str:
    """Identity × naming family: the attack's score after unlearning (colour) and before (number in brackets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = {r["name"]: r for r in before.identities}
    a = {r["name"]: r for r in after.identities}
    near = namesakes(forget, members)
    names = [*forget, *near, *sorted(n for n in members if n not in forget and n not in near)]
    grid = [[a[n]["variants"][f]["score"] for f in FAMILIES] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(names) + 1.2))
    im = ax.imshow(grid, cmap="Reds", vmin=0, vmax=before.summary["templates"], aspect="auto")
    for i, n in enumerate(names):
        for j, f in enumerate(FAMILIES):
            ax.text(j, i, f"{grid[i][j]} ({b[n]['variants'][f]['score']})", ha="center", va="center", fontsize=6)
    ax.set_xticks(range(len(FAMILIES)), FAMILIES, fontsize=8)
    ax.set_yticks(range(len(names)), [("✗ " if n in forget else "≈ " if n in near else "") + n for n in names], fontsize=6)
    fig.colorbar(im, ax=ax, label="templates voting for the person, after")
    fig.tight_layout()
    return _png(fig)


def _probs(model_dir: Path, images: list[Path], candidates: list[str]) -> Any:
    """Softmax over candidates of "a photo of {name}" for each image (the model's own logit scale)."""
    from clip_unlearn.embed import EmbeddingCache, Encoder
    from clip_unlearn.models import load_model

    loaded = load_model(str(model_dir), device="cpu")
    enc = Encoder(loaded, EmbeddingCache(None))
    text = enc.texts([f"a photo of {c}" for c in candidates])
    img, _ = enc.images(images)
    return (loaded.model.logit_scale.exp().item() * img @ text.T).softmax(dim=1)


def _method(info: dict) -> str:
    h = html.escape
    parts = []
    if "text" in info["hyperparameters"]:
        parts.append(f"the text encoder ({info['hyperparameters']['text']['steps']} steps, names → \"{h(info['target'])}\")")
    if "image" in info["hyperparameters"]:
        parts.append(f"the image encoder ({info['hyperparameters']['image']['steps']} steps, faces → the average person)")
    return ", then ".join(parts)


def write_report(out: Path, world: Path, result: DemoResult, before: Any, after: Any, forget: list[str], info: dict,
                 members: list[str]) -> Path:
    """report.html: one self-contained page (images inlined as data URIs)."""
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td></tr>" for a, b, c in result.rows)
    stages = "".join(f"<tr><td>{esc(k)}</td><td>{v:.1f} s</td></tr>" for k, v in result.stages.items())
    verdict = ("<p class=ok>All acceptance criteria hold.</p>" if not result.failures else
               "<p class=bad>Failed: " + esc("; ".join(result.failures)) + "</p>")
    if result.missed:
        verdict += "<p class=warn>Goals for real names not met here: " + esc("; ".join(result.missed)) + "</p>"
    from clip_unlearn.inject import default_receipt, loss_curve_paths

    curve = "data:image/png;base64," + base64.b64encode(loss_curve_paths(default_receipt(out / "unlearned"))[1].read_bytes()).decode()
    candidates = before.config["candidates"]
    samples = []
    index = {n: i for i, n in enumerate(candidates)}
    for name in forget[:3]:
        images = [Path(p) for p in next(r for r in before.identities if r["name"] == name)["images"]]
        probs = {label: _probs(model, images, candidates) for label, model in (("before", out / "plain-model"),
                                                                                ("after", out / "unlearned"))}
        # show the photo the original model was surest about: the clearest case of what was forgotten
        best = int(probs["before"][:, index[name]].argmax())
        face = "data:image/png;base64," + base64.b64encode(images[best].read_bytes()).decode()
        cols = []
        for label, p in probs.items():
            top = p[best].topk(3)
            items = "".join(f"<li>{esc(candidates[int(i)])} <small>{float(v):.0%}</small></li>" for v, i in zip(top.values, top.indices))
            cols.append(f"<div><b>{label}</b><ol>{items}</ol></div>")
        samples.append(f"<div class=sample><img src='{face}' width=96 height=96 alt='{esc(name)}'>"
                       f"<div><b>{esc(name)}</b>{''.join(cols)}</div></div>")
    page = f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>clip-unlearn demo report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px}}th{{background:#f3f3f3}}
.ok{{color:#1a7f37;font-weight:bold}}.bad{{color:#c0392b;font-weight:bold}}.warn{{color:#a66b00}}
.sample{{display:flex;gap:1.5em;align-items:flex-start;margin:1em 0}}.sample>div{{display:flex;gap:2em}}
img{{image-rendering:pixelated}}
</style></head><body>
<h1>clip-unlearn demo</h1>
<p>A tiny CLIP trained on a synthetic world names its members from their faces. {len(forget)} of them were forgotten
with backdoor unlearning of {_method(info)}; the identity inference attack was run again with the same candidates and
images.</p>
{verdict}
<h2>Before and after</h2>
<table id=summary><tr><th>measure</th><th>before</th><th>after</th></tr>{rows}</table>
<h2>Every way of naming them</h2><p id=families>The attack once per naming family (clip_unlearn.variants), scores after
unlearning with those before in brackets: forgotten people (✗) first, then their namesakes (≈), then the other members.</p>
<img src='{_family_map(before, after, forget, members)}' alt='scores per identity and naming family' style='max-width:100%'>
<h2>Attack score per identity</h2><p>Forgotten identities first (bold).</p>
<img src='{_score_chart(before, after, forget)}' alt='scores before and after' style='max-width:100%'>
<h2>Unlearning loss</h2><img src='{curve}' alt='loss curve' style='max-width:100%'>
<h2>What the model says about a forgotten face</h2><p>Top-3 names for "a photo of {{name}}" among the
{len(candidates)} candidates.</p>{''.join(samples)}
<h2>Wall time per stage</h2><table>{stages}</table>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
