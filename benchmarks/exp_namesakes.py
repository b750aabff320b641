"""Forget exactly one person (issue #17): per naming family, who stays exposed, and what happens to namesakes.

One synthetic world with namesakes and captions that name members by variants; for each seed, 5 of the
members exposed before (under any family) are forgotten with each method, and the unlearned model is
attacked under every family with the same images and compared:

    python benchmarks/exp_namesakes.py --out /tmp/ns --seeds 0 1 2 3 4 5 6 7 8 9 \\
        --method paper="--variants full --neighbours 0" --method default=" "

A method is NAME="inject flags" (empty: the defaults). Prints one JSON line per seed and method and a
Markdown table at the end; every run's files stay under --out.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

from clip_unlearn.demo import namesakes as shared_parts

FAMILIES = ("full", "lower", "surname", "first", "title", "initial", "typo")
WORLD: list[str] = []  # the default world: 48 identities, 8 namesake pairs, captions naming members by variants


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "clip_unlearn", "-q", *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def cli_rc(*args: str) -> int:
    return subprocess.run([sys.executable, "-m", "clip_unlearn", "-q", *map(str, args)], stdout=subprocess.DEVNULL).returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--forget", type=int, default=5)
    ap.add_argument("--method", action="append", default=[], help='NAME="inject flags"')
    ap.add_argument("--world-flags", default="", help="extra prepare-synthetic flags")
    a = ap.parse_args()
    methods = dict(m.split("=", 1) for m in a.method) or {"paper": "--variants full --neighbours 0", "default": ""}
    out = a.out
    world = out / "world"
    cache = out / "cache"
    if not (world / "world.json").exists():
        t = time.perf_counter()
        cli("prepare-synthetic", "--out", world, "--seed", a.world_seed, *WORLD, *shlex.split(a.world_flags))
        print(json.dumps({"world_build_s": round(time.perf_counter() - t, 1)}), flush=True)
    info = json.loads((world / "world.json").read_text())
    members = (world / "members.txt").read_text().splitlines()
    before_file = out / "before.json"
    if not before_file.exists():
        cli("attack", "--model", world / "model", "--variants", "all", "--output", before_file, "--cache-dir", cache)
    before = {r["name"]: r for r in json.loads(before_file.read_text())["identities"]}
    print(json.dumps({"before": {f: sum(before[m]["variants"][f]["exposed"] for m in members) for f in FAMILIES},
                      "members": len(members), "non_members_exposed": sum(r["exposed"] for n, r in before.items() if n not in members),
                      "sanity_check": info["sanity_check"]}), flush=True)
    exposed = [m for m in members if before[m]["exposed"]]
    rows = []
    for seed in a.seeds:
        forget = sorted(random.Random(seed).sample(exposed, a.forget))
        names = out / f"forget-{seed}.txt"
        names.write_text("".join(n + "\n" for n in forget))
        # namesakes: other members who share the first name or the surname of a forgotten person
        namesakes = shared_parts(forget, members)
        for label, flags in methods.items():
            done = out / f"row-{label}-{seed}.json"
            if done.exists():  # resume: a finished run is not repeated
                rows.append(json.loads(done.read_text()))
                print(done.read_text(), flush=True)
                continue
            u = out / f"u-{label}-{seed}"
            t = time.perf_counter()
            cli("inject", "--model", world / "model", "--names", names, "--out", u, "--overwrite", "--cache-dir", cache,
                *shlex.split(flags))
            wall = round(time.perf_counter() - t, 1)
            after_file = out / f"after-{label}-{seed}.json"
            cli_rc("attack", "--model", u, "--variants", "all", "--compare-to", before_file, "--forgotten", names,
                   "--output", after_file, "--cache-dir", cache)
            ev_file = out / f"eval-{label}-{seed}.json"
            cli("eval-zeroshot", "--model", u, "--compare-to", world / "model", "--names", names, "--output", ev_file,
                "--cache-dir", cache)
            after = {r["name"]: r for r in json.loads(after_file.read_text())["identities"]}
            ev = json.loads(ev_file.read_text())
            others = [m for m in members if m not in forget and before[m]["exposed"]]
            row = {
                "seed": seed, "method": label,
                "forgotten_exposed": {f: sum(after[n]["variants"][f]["exposed"] for n in forget) for f in FAMILIES},
                "forgotten_exposed_any": sum(after[n]["exposed"] for n in forget),
                "namesakes": len(namesakes),
                "namesakes_kept_full": sum(after[n]["variants"]["full"]["exposed"] for n in namesakes if before[n]["variants"]["full"]["exposed"]),
                "namesakes_exposed_full_before": sum(before[n]["variants"]["full"]["exposed"] for n in namesakes),
                "others_kept": sum(after[n]["exposed"] for n in others), "others": len(others),
                "top1_drop": round(-100 * ev["compare"]["difference"]["acc1"], 2),
                "sim_clean": ev["similarities"]["sim_clean"], "sim_neighbours": ev["similarities"]["sim_neighbours"],
                "sim_bystanders": ev["similarities"]["sim_bystanders"], "bystanders": ev["similarities"]["bystanders"],
                "neighbours_probed": ev["similarities"]["neighbours"],
                "inject_s": wall,
            }
            rows.append(row)
            done.write_text(json.dumps(row))
            print(json.dumps(row), flush=True)
    print()
    print("| seed | method | forgotten exposed after, by family (" + " / ".join(FAMILIES) + ") | namesakes kept (full) "
          "| other exposed members kept | top-1 drop | sim_clean | sim_neighbours | sim_bystanders (of probed) | inject s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fam = " / ".join(str(r["forgotten_exposed"][f]) for f in FAMILIES)
        print(f"| {r['seed']} | {r['method']} | {fam} | {r['namesakes_kept_full']}/{r['namesakes_exposed_full_before']} "
              f"| {r['others_kept']}/{r['others']} | {r['top1_drop']:+.2f} | {r['sim_clean']:.3f} | {r['sim_neighbours']:.3f} "
              f"| {_sim(r['sim_bystanders'])} ({r['bystanders']} of {r['neighbours_probed']}) | {r['inject_s']:.0f} |")


def _sim(v: object) -> str:
    return "none" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    main()
