"""Forget without telling (issue #26): the real-user protocol of exp_real_user.py, then ``audit`` of each
unlearned model against the world's never-learned names (non_members.txt), with the faces and the base model.

    python benchmarks/exp_untold.py --out /tmp/ut --seeds 0 1 2 3 4 5 6 7 8 9 --inject-flags=--made-up
    python benchmarks/exp_untold.py --out /tmp/ut --seeds 0 1 2 3 4 5 6 7 8 9 --tag paper   # the default target
    python benchmarks/exp_untold.py --out /tmp/ru --seeds 0 1 2 3 4 5 6 7 8 9 --tag lr --runs  # exp_real_user.py's models
    python benchmarks/exp_untold.py --out /tmp/ut --seeds 0 1 2 --tag image --base-audit \
        --inject-flags "--encoder image --faces /tmp/ut/world/faces --clean-images /tmp/ut/world/clean_images"

Per seed it prints the forgetting row of exp_real_user.py and the audit's AUC per statistic; at the end a
table per statistic: the AUC pooled over seeds (every seed's forgotten scores against every seed's reference
scores), the mean and worst per-seed AUC, and on how many seeds all forgotten were the top k.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import cli
from exp_real_user import measure, prepare, run_seed, table

from clip_unlearn.audit import auc


def audit_seed(a: argparse.Namespace, seed: int, world: Path, plain: Path, model: str = "u") -> dict:
    """The audit of the seed's unlearned model (``model`` "u"), or of the base with the same names ("plain": what
    the statistics say before any unlearning, the members' own tell against never-learned names)."""
    out = a.out / (f"seed-{seed}" + (f"-{a.tag}" if a.tag else ""))
    target = out / "u" if model == "u" else plain
    result = out / ("audit.json" if model == "u" else "audit-base.json")
    cli("audit", "--model", target, "--names", out / "forget.txt", "--reference", world / "non_members.txt",
        "--data", world / "faces", "--base", plain, "--output", result, "--cache-dir", a.out / "cache")
    stats = json.loads(result.read_text())["statistics"]
    return {s["statistic"]: {"attacker": s["attacker"], "auc": s["auc"], "top_k": s.get("top_k"),
                             "forgotten": [r["score"] for r in s.get("ranks", [])], "reference": s.get("reference_scores", [])}
            for s in stats}


def pooled(rows: list[dict], part: str = "audit") -> str:
    lines = ["| statistic | attacker | pooled AUC | per-seed AUC mean | worst per-seed max(AUC, 1 − AUC) | seeds with all forgotten in the top k |",
             "|---|---|---|---|---|---|"]
    for name, first in rows[0][part].items():
        got = [r[part][name] for r in rows if r[part].get(name, {}).get("auc") is not None]
        if not got:
            continue
        fo = [x for g in got for x in g["forgotten"]]
        ref = [x for g in got for x in g["reference"]]
        per = [g["auc"] for g in got]
        allk = sum(g["top_k"]["forgotten"] == g["top_k"]["k"] for g in got)
        lines.append(f"| {name} | {first['attacker']} | {auc(fo, ref):.3f} | {sum(per) / len(per):.3f} | "
                     f"{max(max(x, 1 - x) for x in per):.3f} | {allk} of {len(got)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the world, the runs and the cache")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="selection seeds (default: 0-9)")
    ap.add_argument("--world-seed", type=int, default=0, help="seed of the default world (default: 0)")
    ap.add_argument("--world", type=Path, default=None, help="an existing default world to use [default: build one under --out]")
    ap.add_argument("--forget", type=int, default=5, help="members forgotten per seed (default: 5)")
    ap.add_argument("--inject-flags", default="", help="extra inject flags (default: none: the shipped defaults)")
    ap.add_argument("--reuse", action="store_true", help="read a seed's row.json from an earlier run instead of running it again")
    ap.add_argument("--runs", action="store_true", help="audit the models an earlier exp_real_user.py run with the same "
                    "--out and --tag left (seed-N[-tag]/u), measured again but not trained again")
    ap.add_argument("--base-audit", action="store_true", help="also audit the base model with each seed's names (before)")
    ap.add_argument("--tag", default="", help="suffix of the run folders, to keep runs with other flags apart")
    a = ap.parse_args()
    a.builtin_captions = False
    world, plain, members, before = prepare(a, a.world or a.out / "world")
    rows = []
    for seed in a.seeds:
        saved = a.out / (f"seed-{seed}" + (f"-{a.tag}" if a.tag else "")) / "row.json"
        if a.reuse and saved.exists():
            row = json.loads(saved.read_text())
        else:
            done = saved.parent / "u" / "clip_unlearn.json"
            if a.runs and not done.exists():
                raise SystemExit(f"--runs: no unlearned model at {done.parent}; run exp_real_user.py with the same --out and --tag first")
            row = (measure(a, seed, saved.parent, world, plain, before, members,
                           (saved.parent / "forget.txt").read_text().splitlines(), None) if a.runs
                   else run_seed(a, seed, world, plain, before, members))
            row["audit"] = audit_seed(a, seed, world, plain)
            if a.base_audit:
                row["audit_base"] = audit_seed(a, seed, world, plain, "plain")
            saved.write_text(json.dumps(row))
        rows.append(row)
        print(json.dumps({**{k: v for k, v in row.items() if k != "audit"},
                          "audit_auc": {k: v["auc"] for k, v in row["audit"].items()}}), flush=True)
    print(table(rows))
    print()
    print(pooled(rows))
    if all("audit_base" in r for r in rows):
        print()
        print("the same audit of the base model (before unlearning):")
        print(pooled(rows, "audit_base"))


if __name__ == "__main__":
    main()
