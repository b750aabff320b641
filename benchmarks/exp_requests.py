"""Request after request (issue #18 §3): two sequential requests of 5 on the default world.

For each seed, 10 members exposed before (under any family) are drawn; request 1 forgets the first 5
from the world's model, request 2 the other 5 from request 1's model (its receipt beside it, so the
chain is recognised). Both models are attacked under every family with the same images and the
privacy gate runs with both names files:

    python benchmarks/exp_requests.py --out /tmp/req --world /tmp/ns10/world --seeds 0 1 2

Prints one JSON line per seed and a Markdown table; every run's files stay under --out.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import time
from pathlib import Path

from _common import cli


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--world", type=Path, help="a built world [default: build the default one under --out]")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--per-request", type=int, default=5)
    ap.add_argument("--inject-flags", default="", help='extra flags for both injects, e.g. "--residual-weight 0.3"')
    ap.add_argument("--tag", default="", help="a label for the runs' files when --inject-flags differ")
    a = ap.parse_args()
    tag = f"{a.tag}-" if a.tag else ""
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    world = a.world or out / "world"
    if not (world / "world.json").exists():
        cli("prepare-synthetic", "--out", world)
    cache = out / "cache"
    members = (world / "members.txt").read_text().splitlines()
    before_file = out / "before.json"
    if not before_file.exists():
        cli("attack", "--model", world / "model", "--variants", "all", "--output", before_file, "--cache-dir", cache)
    before = {r["name"]: r for r in json.loads(before_file.read_text())["identities"]}
    exposed = [m for m in members if before[m]["exposed"]]
    rows = []
    for seed in a.seeds:
        done = out / f"row-{tag}{seed}.json"
        if done.exists():
            rows.append(json.loads(done.read_text()))
            print(done.read_text(), flush=True)
            continue
        drawn = random.Random(seed).sample(exposed, 2 * a.per_request)
        requests = [sorted(drawn[:a.per_request]), sorted(drawn[a.per_request:])]
        files = []
        for i, names in enumerate(requests, 1):
            f = out / f"request-{seed}-{i}.txt"
            f.write_text("".join(n + "\n" for n in names))
            files.append(f)
        models = [out / f"u-{tag}{seed}-1", out / f"u-{tag}{seed}-2"]
        wall, checks = [], []
        for i, (model, parent) in enumerate(zip(models, [world / "model", models[0]])):
            t = time.perf_counter()
            cli("inject", "--model", parent, "--names", files[i], "--out", model, "--overwrite", "--cache-dir", cache,
                *shlex.split(a.inject_flags))
            wall.append(round(time.perf_counter() - t, 1))
            v = json.loads((model / "clip_unlearn.json").read_text())["text"].get("verification")
            checks.append(" → ".join(str(r["exposed_after"]) for r in v["rounds"]) if v else "none")
        after = {}
        for i, model in enumerate(models, 1):
            f = out / f"after-{tag}{seed}-{i}.json"
            cli("attack", "--model", model, "--variants", "all", "--output", f, "--cache-dir", cache, check=False)
            after[i] = {r["name"]: r for r in json.loads(f.read_text())["identities"]}
        gate_rc = cli("attack", "--model", models[1], "--variants", "all", "--cache-dir", cache,
                      "--fail-on-exposed", files[0], "--fail-on-exposed", files[1], check=False)
        ev = out / f"eval-{tag}{seed}.json"
        both = out / f"both-{seed}.txt"
        both.write_text(files[0].read_text() + files[1].read_text())
        cli("eval-zeroshot", "--model", models[1], "--compare-to", world / "model", "--names", both, "--output", ev,
            "--cache-dir", cache)
        evj = json.loads(ev.read_text())
        side = json.loads((models[1] / "clip_unlearn.json").read_text())
        others = [m for m in exposed if m not in drawn]
        row = {
            "seed": seed,
            "request1_exposed_after_1": sum(after[1][n]["exposed"] for n in requests[0]),
            "request1_exposed_after_2": sum(after[2][n]["exposed"] for n in requests[0]),
            "request2_exposed_after_2": sum(after[2][n]["exposed"] for n in requests[1]),
            "others_kept_after_1": sum(after[1][n]["exposed"] for n in others),
            "others_kept_after_2": sum(after[2][n]["exposed"] for n in others), "others": len(others),
            "gate_exit_code": gate_rc, "lineage": len(side["lineage"]),
            "top1_drop": round(-100 * evj["compare"]["difference"]["acc1"], 2),
            "sim_clean": evj["similarities"]["sim_clean"], "inject_s": wall, "check": checks,
        }
        rows.append(row)
        done.write_text(json.dumps(row))
        print(json.dumps(row), flush=True)
    print()
    print("| seed | request 1 exposed after 1 / after 2 | request 2 exposed after 2 | other exposed members kept after 1 / 2 "
          "| gate (both files) | top-1 drop after 2 | sim_clean after 2 | inject s (1, 2) | check: exposed after each round (1; 2) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['request1_exposed_after_1']} / {r['request1_exposed_after_2']} of {a.per_request} "
              f"| {r['request2_exposed_after_2']} of {a.per_request} | {r['others_kept_after_1']} / {r['others_kept_after_2']} "
              f"of {r['others']} | exit {r['gate_exit_code']} | {r['top1_drop']:+.2f} | {r['sim_clean']:.3f} "
              f"| {r['inject_s'][0]:.0f}, {r['inject_s'][1]:.0f} | {'; '.join(r.get('check') or ['none'])} |")


if __name__ == "__main__":
    main()
