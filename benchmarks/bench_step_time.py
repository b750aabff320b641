"""Text-stage step time of two source trees on the same run: the loss figures read once per step (a host
sync each) against once per LOG_EVERY steps, and whether both train the same model (fp32 losses to 1e-6).

    git worktree add /tmp/before ee18961      # the commit before the change
    python benchmarks/bench_step_time.py --before /tmp/before/src --world synthetic-world

Each tree runs ``run_inject`` (the world's model, the world's text settings, --no-verify) in a process of its
own with that tree first on sys.path; the two alternate for --repeats rounds. In-loop seconds per step come
from the progress callback's clock between the first and the last step it reports. On a CPU the sync costs
nearly nothing (the figures are ready when the step returns); the change is aimed at CUDA, where each read
waits for the queued work: the CPU rows show the change costs nothing and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, append, median

DRIVER = r"""
import json, sys, time
from pathlib import Path
from clip_unlearn.config import InjectConfig
from clip_unlearn.inject import run_inject
world, names, out, steps, device = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
ticks = []
cfg = InjectConfig(model=str(world / "model"), names=names, out=out, overwrite=True, steps=steps, verify=False,
                   device=device, precision="fp32", cache_dir=out.parent / "cache")
result = run_inject(cfg, progress=lambda label, done, *a: ticks.append((done, time.perf_counter())) if label.startswith("unlearning") else None)
(s0, t0), (s1, t1) = ticks[0], ticks[-1]
print(json.dumps({"per_step": (t1 - t0) / (s1 - s0), "history": result["history"]}))
"""


def run_tree(src: Path, world: Path, names: Path, work: Path, steps: int, device: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])),
           "CLIP_UNLEARN_HOME": str(work / "home")}
    r = subprocess.run([sys.executable, "-c", DRIVER, str(world), str(names), str(work / "out"), str(steps), device],
                       env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="src/ folder of the tree to compare against")
    ap.add_argument("--after", type=Path, default=ROOT / "src", help="src/ folder of the new tree (default: this checkout's)")
    ap.add_argument("--world", type=Path, default=Path("synthetic-world"), help="world folder, built if missing (default: synthetic-world)")
    ap.add_argument("--steps", type=int, default=60, help="training steps per run (default: 60)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds, each running both trees (default: 3)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clip-unlearn-bench-steps",
                    help="scratch folder for models and caches (default: $TMPDIR/clip-unlearn-bench-steps)")
    args = ap.parse_args()
    if not (args.world / "world.json").exists():
        from clip_unlearn.config import PrepareSyntheticConfig
        from clip_unlearn.synthetic import build_world
        build_world(PrepareSyntheticConfig(out=args.world))
    names = args.work / "names.txt"
    args.work.mkdir(parents=True, exist_ok=True)
    names.write_text("\n".join((args.world / "members.txt").read_text().splitlines()[:5]) + "\n")
    times: dict[str, list[float]] = {"before": [], "after": []}
    histories: dict[str, list] = {}
    for r in range(args.repeats):
        for label, src in (("before", args.before), ("after", args.after)):
            result = run_tree(src.resolve(), args.world.resolve(), names, args.work / label, args.steps, args.device)
            times[label].append(result["per_step"])
            histories.setdefault(label, result["history"])
            print(f"round {r + 1} {label}: {result['per_step']:.4f} s/step")
    keys = ("loss", "utility", "backdoor", "weight_l2")
    worst = max(abs(a[k] - b[k]) for a, b in zip(histories["before"], histories["after"]) for k in keys)
    same_steps = [a["step"] for a in histories["before"]] == [b["step"] for b in histories["after"]]
    before, after = median(times["before"]), median(times["after"])
    from clip_unlearn.training import LOG_EVERY

    append(f"inject step time, loss figures read per step vs every {LOG_EVERY} steps — world text stage, {args.device}", [
        ("steps per run, precision", f"{args.steps}, fp32"),
        ("seconds per step (median of rounds): before / after", f"{before:.4f} / {after:.4f}"),
        ("after / before", f"{after / before:.3f}"),
        ("history rows per run: before = after (one per step)", "yes" if same_steps else "NO"),
        ("largest |difference| of any loss term at any step", f"{worst:.1e}" + (" (≤ 1e-6)" if worst <= 1e-6 else " (ABOVE 1e-6)")),
    ], note=f"{args.repeats} rounds alternating the trees, each in a fresh process; --before {args.before}")


if __name__ == "__main__":
    main()
