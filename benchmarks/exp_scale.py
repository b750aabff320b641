"""Many names at once (issue #18 §2): forget k exposed members of a 200-identity world at once, with the defaults.

    clip-unlearn prepare-synthetic --out w200 --identities 200
    python benchmarks/exp_scale.py --out scale --world w200 --counts 100 1 4 16 64 --seeds 0 1 2

For each k and seed, k members exposed before (the paper's attack: full names, 1000 candidates, 21
templates) are drawn (`sorted(random.Random(seed).sample(exposed, k))`), forgotten with `inject`'s
defaults, and the model is attacked again with the same images and evaluated. With the defaults inject
checks its model on the other (test) half of the world's faces and trains again whom that exposes; the
"check" column gives the counts it saw after each round (`--inject-flags --no-verify` turns it off). Prints one JSON line per
run and a Markdown table; resumable (a finished run is not repeated).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import time
from pathlib import Path

from _common import cli

from clip_unlearn.inject import training_record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--world", type=Path, required=True, help="a world built with prepare-synthetic --identities 200")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16, 64, 100])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--inject-flags", default="", help='extra inject flags, e.g. "--steps 1200 --milestones 800,1200"')
    ap.add_argument("--tag", default="", help="a label for the runs' files when --inject-flags differ")
    a = ap.parse_args()
    tag = f"{a.tag}-" if a.tag else ""
    out, world = a.out, a.world
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    members = (world / "members.txt").read_text().splitlines()
    before_file = out / "before.json"
    if not before_file.exists():
        cli("attack", "--model", world / "model", "--output", before_file, "--cache-dir", cache)
    before = {r["name"]: r for r in json.loads(before_file.read_text())["identities"]}
    exposed = [m for m in members if before[m]["exposed"]]
    rows = []
    for k in a.counts:
        for seed in a.seeds:
            done = out / f"row-{tag}{k}-{seed}.json"
            if done.exists():
                rows.append(json.loads(done.read_text()))
                continue
            forget = sorted(random.Random(seed).sample(exposed, k))
            names = out / f"forget-{k}-{seed}.txt"
            names.write_text("".join(n + "\n" for n in forget))
            u = out / f"u-{tag}{k}-{seed}"
            t = time.perf_counter()
            cli("inject", "--model", world / "model", "--names", names, "--out", u, "--overwrite", "--cache-dir", cache,
                *shlex.split(a.inject_flags))
            wall = round(time.perf_counter() - t, 1)
            after_file = out / f"after-{tag}{k}-{seed}.json"
            cli("attack", "--model", u, "--output", after_file, "--cache-dir", cache, check=False)
            ev_file = out / f"eval-{tag}{k}-{seed}.json"
            cli("eval-zeroshot", "--model", u, "--compare-to", world / "model", "--output", ev_file, "--cache-dir", cache)
            after = {r["name"]: r for r in json.loads(after_file.read_text())["identities"]}
            ev = json.loads(ev_file.read_text())
            side = training_record(u)  # the sidecar with the receipt's name-derived counts
            others = [m for m in exposed if m not in forget]
            row = {"k": k, "seed": seed, "flags": a.inject_flags, "forgotten_exposed": sum(after[n]["exposed"] for n in forget),
                   "others_kept": sum(after[n]["exposed"] for n in others), "others": len(others),
                   "top1_change": round(100 * ev["compare"]["difference"]["acc1"], 2),
                   "sim_clean": ev["similarities"]["sim_clean"], "inject_s": wall,
                   "steps": side["hyperparameters"]["text"]["steps"], "triggers": side["text"]["variants"]["triggers"],
                   "backdoor_weight": side["hyperparameters"]["text"]["backdoor_weight"],
                   "check": _check_rounds(side)}
            rows.append(row)
            done.write_text(json.dumps(row))
            print(json.dumps(row), flush=True)
    print()
    print("| names at once | seed | forgotten still exposed | other exposed members kept | top-1 change (points) | sim_clean | inject s | steps | triggers | backdoor weight | check: exposed after each round |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["k"], r["seed"])):
        print(f"| {r['k']} | {r['seed']} | {r['forgotten_exposed']} of {r['k']} | {r['others_kept']} of {r['others']} "
              f"| {r['top1_change']:+.2f} | {r['sim_clean']:.3f} | {r['inject_s']:.0f} | {r['steps']} | {r['triggers']} "
              f"| {r.get('backdoor_weight', 1.0):g} | {r.get('check') or 'none'} |")


def _check_rounds(side: dict) -> str:
    """inject's check as "3 → 0 of 100" (exposed on the test half after each round), or "" without one."""
    v = side["text"].get("verification")
    return " → ".join(str(r["exposed_after"]) for r in v["rounds"]) + f" of {v['checked']}" if v else ""


if __name__ == "__main__":
    main()
