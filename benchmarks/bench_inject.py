"""Inject speed: training steps/s at given batch sizes, and peak memory.

    python benchmarks/bench_inject.py --model world                                  # tiny world model
    python benchmarks/bench_inject.py --model vit-b-32 --clean-batch 128 --poison-batch 128
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

from _common import append, median, random_vit_b32, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["world", "vit-b-32"], default="world")
    ap.add_argument("--world", type=Path, default=Path("synthetic-world"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--clean-batch", type=int, default=128)
    ap.add_argument("--poison-batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clip-unlearn-bench")
    args = ap.parse_args()

    from clip_unlearn.config import InjectConfig
    from clip_unlearn.inject import run_inject

    args.work.mkdir(parents=True, exist_ok=True)
    if args.model == "world":
        if not (args.world / "world.json").exists():
            from clip_unlearn.config import PrepareSyntheticConfig
            from clip_unlearn.synthetic import build_world
            build_world(PrepareSyntheticConfig(out=args.world))
        model = args.world / "model"
        names = (args.world / "members.txt").read_text().splitlines()[:5]
    else:
        model = random_vit_b32(args.work)
        names = ["Anna Example", "Bert Sample", "Carla Muster", "Dirk Probe", "Erin Trial"]
    names_file = args.work / "bench_names.txt"
    names_file.write_text("\n".join(names) + "\n")

    def run(steps: int) -> None:
        run_inject(InjectConfig(model=str(model), names=names_file, out=args.work / "bench-out", overwrite=True, device="cpu",
                                steps=steps, clean_batch=args.clean_batch, poison_batch=args.poison_batch, preset="paper"))

    # steps/s from the difference of two run lengths, so loading and saving cancel out
    short, long = [], []
    for _ in range(args.repeats):
        short.append(timed(lambda: run(1)))
        long.append(timed(lambda: run(1 + args.steps)))
    per_step = (median(long) - median(short)) / args.steps
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows = [
        ("batch (clean + poisoned)", f"{args.clean_batch} + {args.poison_batch}"),
        ("seconds per step (median)", f"{per_step:.3f}"),
        ("steps/s", f"{1 / per_step:.2f}"),
        ("400 paper steps, estimated minutes", f"{400 * per_step / 60:.1f}"),
        ("peak resident memory of the process, GiB", f"{peak_gib:.2f}"),
    ]
    append(f"inject (text encoder) — {args.model}", rows, note=f"median of {args.repeats} runs of 1 and {1 + args.steps} steps")


if __name__ == "__main__":
    main()
