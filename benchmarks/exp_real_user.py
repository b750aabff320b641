"""Forgetting as a real user runs it (issue #29): the world's model as a plain open_clip folder, inject's
shipped defaults, the world's faces as --verify-data and its training captions as --captions (a corpus of the
model's own domain, as the paper's LAION captions), no keep list; 5 exposed members per seed.

    python benchmarks/exp_real_user.py --out /tmp/ru --seeds 0 1 2 3 4 5 6 7 8 9
    python benchmarks/exp_real_user.py --out /tmp/ru --seeds 0 1 2 --inject-flags "--full-share 0" --tag share0

Per seed: the members the base model exposes under the full name are sampled (``sorted(random.Random(seed)
.sample(exposed, 5))``, the demo's rule), forgotten with ``inject --model plain/ --names forget.txt
--verify-data world/faces`` (plus --inject-flags), and the unlearned model is attacked under every family on
the train half of the faces (the half the check never saw) with the base attack's candidates and images,
and evaluated with eval-zeroshot against the base (the world's objects and held-out captions). A plain
folder has no sidecar, so nothing of the world reaches inject but the faces a user with photos has.

Prints one JSON line per seed and a Markdown table; every run's files stay under --out.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import time
from pathlib import Path

from _common import cli

from clip_unlearn.demo import namesakes as shared_parts
from clip_unlearn.inject import training_record

FAMILIES = ("full", "lower", "surname", "first", "title", "initial", "typo")


def plain_copy(model: Path, out: Path) -> Path:
    """The model's open_clip files alone: what a user downloads (no sidecar, so no world)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in ("open_clip_config.json", "open_clip_model.safetensors"):
        shutil.copy2(model / f, out / f)
    return out


def exposed(rows: dict[str, dict], who: list[str], family: str) -> int:
    return sum(rows[n]["variants"][family]["exposed"] for n in who)


def run_seed(a: argparse.Namespace, seed: int, world: Path, plain: Path, before: dict, members: list[str]) -> dict:
    out = a.out / (f"seed-{seed}" + (f"-{a.tag}" if a.tag else ""))
    out.mkdir(parents=True, exist_ok=True)
    b = {r["name"]: r for r in before["identities"]}
    candidates = sorted(n for n in members if b[n]["variants"]["full"]["exposed"])
    forget = sorted(random.Random(seed).sample(candidates, a.forget))
    names = out / "forget.txt"
    names.write_text("\n".join(forget) + "\n")
    t = time.perf_counter()
    captions = [] if a.builtin_captions else ["--captions", world / "captions_train.txt"]
    cli("inject", "--model", plain, "--names", names, "--out", out / "u", "--overwrite", "--verify-data", world / "faces",
        *captions, "--cache-dir", a.out / "cache", *shlex.split(a.inject_flags))
    inject_s = time.perf_counter() - t
    return measure(a, seed, out, world, plain, before, members, forget, inject_s)


def measure(a: argparse.Namespace, seed: int, out: Path, world: Path, plain: Path, before: dict, members: list[str],
            forget: list[str], inject_s: float | None) -> dict:
    """Attack and evaluate the unlearned model ``out``/u against the base; the seed's row."""
    b = {r["name"]: r for r in before["identities"]}
    names = out / "forget.txt"
    cli("attack", "--model", out / "u", "--data", world / "faces", "--split", "train", "--variants", "all",
        "--candidates", a.out / "candidates.txt", "--compare-to", a.out / "before.json", "--forgotten", names,
        "--output", out / "after.json", "--cache-dir", a.out / "cache")
    near_all = shared_parts(forget, members)
    (out / "bystanders.txt").write_text("".join(n + "\n" for n in near_all) or "# none\n")
    cli("eval-zeroshot", "--model", out / "u", "--compare-to", plain, "--data", world / "objects", "--captions",
        world / "captions_heldout.txt", "--names", names, *(["--bystanders", out / "bystanders.txt"] if near_all else []),
        "--output", out / "eval.json", "--cache-dir", a.out / "cache")
    after = {r["name"]: r for r in json.loads((out / "after.json").read_text())["identities"]}
    ev = json.loads((out / "eval.json").read_text())
    side = training_record(out / "u")  # the sidecar with the receipt's name-derived counts
    near = [n for n in shared_parts(forget, members) if b[n]["variants"]["full"]["exposed"]]
    others = [n for n in members if n not in forget and n not in near and b[n]["exposed"]]
    sims = ev["similarities"]
    text, image = side.get("text") or {}, side.get("image") or {}  # an image-only run has no text stage
    return {
        "seed": seed,
        "forgotten_exposed": {f: exposed(after, forget, f) for f in FAMILIES},
        "forgotten_exposed_any": sum(after[n]["exposed"] for n in forget),
        "namesakes_kept_full": [exposed(after, near, "full"), len(near)],
        "others_kept": [sum(after[n]["exposed"] for n in others), len(others)],
        "top1_change_points": round(100 * (ev["metrics"]["acc1"] - ev["compare"]["metrics"]["acc1"]), 2),
        "top1_flips": ev["compare"].get("top1_flips"),
        "word_classes_top1_change_points": (None if ev.get("word_classes", {}).get("difference") is None
                                            else round(100 * ev["word_classes"]["difference"], 2)),
        "word_classes": ev.get("word_classes", {}).get("classes"),
        "sim_clean": sims["sim_clean"], "sim_bystanders": sims["sim_bystanders"], "sim_words": sims.get("sim_words"),
        "sim_strangers": sims.get("sim_strangers"), "word_captions": sims.get("word_captions"),
        # exposed after each round, "+k" the near misses trained again with them (--verify-margin)
        "check_rounds": [f"{r['exposed_after']}" + (f"+{r['near_after']}" if r.get("near_after") else "")
                         for r in (text.get("verification") or {}).get("rounds", [])],
        "left_out": (text.get("variants") or {}).get("left_out"),
        "full_name_share": ((text.get("variants") or {}).get("full_name_share") or {}).get("of_poisoned_captions"),
        "sim_id": (image.get("metrics") or {}).get("sim_id"),
        "inject_s": None if inject_s is None else round(inject_s, 1),
    }


def _p(row: dict) -> str:
    """The top-1 change's McNemar p-value and 95 % interval, where the run's eval has them (runs measured
    before them do not)."""
    flips = row.get("top1_flips") or {}
    ci = f", {100 * flips['ci95'][0]:+.2f} to {100 * flips['ci95'][1]:+.2f}" if flips.get("ci95") else ""
    return f" (p {flips['p_value']:.2g}{ci})" if flips else ""


def table(rows: list[dict]) -> str:
    head = ("| seed | forgotten exposed (any family; per family) | namesakes kept (full) | others kept | top-1 change | "
            "word classes top-1 change | sim_clean | sim_bystanders | sim_words | sim_strangers | check rounds | inject s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        fam = ", ".join(f"{f} {n}" for f, n in r["forgotten_exposed"].items() if n)
        lines.append(f"| {r['seed']} | {r['forgotten_exposed_any']}" + (f" ({fam})" if fam else "") +
                     f" | {r['namesakes_kept_full'][0]}/{r['namesakes_kept_full'][1]} | {r['others_kept'][0]}/{r['others_kept'][1]}"
                     f" | {r['top1_change_points']:+.2f}{_p(r)} | {r['word_classes_top1_change_points']} | {r['sim_clean']:.4f}"
                     f" | {r['sim_bystanders']} | {r['sim_words']} | {r.get('sim_strangers')} | {' → '.join(map(str, r['check_rounds']))} | {r['inject_s']} |")
    return "\n".join(lines)


def prepare(a: argparse.Namespace, world: Path) -> tuple[Path, Path, list[str], dict]:
    """The world (built under ``world`` when missing), its model as a plain folder, its members, and the base
    attack every seed is compared with (its candidates written for the attacks after)."""
    if not (world / "world.json").exists():
        t = time.perf_counter()
        cli("prepare-synthetic", "--out", world, "--seed", a.world_seed)
        print(json.dumps({"world_build_s": round(time.perf_counter() - t, 1)}), flush=True)
    plain = plain_copy(world / "model", a.out / "plain")
    members = (world / "members.txt").read_text().splitlines()
    if not (a.out / "before.json").exists():
        cli("attack", "--model", plain, "--data", world / "faces", "--split", "train", "--variants", "all",
            "--output", a.out / "before.json", "--cache-dir", a.out / "cache")
    before = json.loads((a.out / "before.json").read_text())
    (a.out / "candidates.txt").write_text("\n".join(before["config"]["candidates"]) + "\n")
    return world, plain, members, before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the world, the runs and the cache")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="selection seeds (default: 0-9)")
    ap.add_argument("--world-seed", type=int, default=0, help="seed of the default world (default: 0)")
    ap.add_argument("--forget", type=int, default=5, help="members forgotten per seed (default: 5)")
    ap.add_argument("--inject-flags", default="", help="extra inject flags (default: none: the shipped defaults)")
    ap.add_argument("--builtin-captions", action="store_true",
                    help="train on inject's built-in general corpus instead of the world's captions_train.txt (the "
                         "corpus of the model's own domain, as a user passes theirs with --captions)")
    ap.add_argument("--tag", default="", help="suffix of the run folders, to keep runs with other flags apart")
    a = ap.parse_args()
    world, plain, members, before = prepare(a, a.out / "world")
    rows = []
    for seed in a.seeds:
        rows.append(run_seed(a, seed, world, plain, before, members))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
