"""Attack cost against the number of candidates (issue #18 §4): cold (empty cache) and warm, wall time and
peak memory (max RSS of the attack process), at 1,000 and 10,000 candidates.

    python benchmarks/bench_candidates.py --model world --world /tmp/ns10/world
    python benchmarks/bench_candidates.py --model vit-b-32 --templates 1

Each run is `clip-unlearn attack` in a process of its own, so its peak RSS is its own. The attack holds
one template's candidate embeddings and a bounded block of similarities at a time, so memory beyond the
model and the images should grow only with one [candidates, D] block; time should grow linearly.
--templates N uses the first N of the paper's 21 templates (a ViT-B-32 text tower on 2 CPU cores
encodes about 100 prompts a second: 10,000 x 21 would take an hour cold; the rows say which).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import append, face_folders, random_vit_b32


def run(args: list[str]) -> tuple[float, float]:
    """(wall s, peak RSS GB) of one attack process."""
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child execs the CLI; wait4 then gives its own peak RSS, not the benchmark's
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.execv(sys.executable, [sys.executable, "-m", "clip_unlearn", "-q", *args])
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) not in (0, 3):
        raise SystemExit(f"attack failed: {' '.join(args)}")
    return wall, usage.ru_maxrss / 1024 / 1024  # KiB → GiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["world", "vit-b-32"], default="world")
    ap.add_argument("--world", type=Path, default=Path("synthetic-world"))
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--templates", type=int, default=21, help="the first N of the paper's templates (default: 21)")
    ap.add_argument("--identities", type=int, default=100, help="vit-b-32: synthetic identities (default: 100)")
    ap.add_argument("--images", type=int, default=20, help="vit-b-32: images per identity (default: 20)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clip-unlearn-bench")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    from clip_unlearn.attack import PAPER_TEMPLATES

    templates = a.work / f"templates-{a.templates}.txt"
    templates.write_text("".join(t + "\n" for t in PAPER_TEMPLATES[:a.templates]))
    if a.model == "world":
        if not (a.world / "world.json").exists():
            subprocess.run([sys.executable, "-m", "clip_unlearn", "-q", "prepare-synthetic", "--out", str(a.world)], check=True)
        model, data = a.world / "model", []
    else:
        model = random_vit_b32(a.work)
        data = ["--data", str(face_folders(a.work, a.identities, a.images)), "--images-per-identity", str(a.images),
                "--min-images", str(a.images)]
    rows = []
    results = {}
    for n in a.counts:
        cache = Path(tempfile.mkdtemp(prefix="cands-", dir=a.work))
        out = a.work / f"attack-{a.model}-{n}.json"
        args = ["attack", "--model", str(model), *data, "--num-candidates", str(n), "--templates", str(templates),
                "--cache-dir", str(cache), "--output", str(out)]
        cold = run(args)
        warm = run(args)
        results[n] = json.loads(out.read_text())["summary"]
        rows += [(f"{n:,} candidates × {a.templates} templates: cold s / peak RSS GB", f"{cold[0]:.1f} / {cold[1]:.2f}"),
                 (f"{n:,} candidates × {a.templates} templates: warm s / peak RSS GB", f"{warm[0]:.1f} / {warm[1]:.2f}")]
    first, last = a.counts[0], a.counts[-1]
    rows.append((f"exposed at {first:,} / at {last:,} candidates",
                 f"{results[first]['exposed']} / {results[last]['exposed']} of {results[first]['identities']}"))
    append(f"attack against the number of candidates — {a.model}", rows,
           note="each run is its own process (peak RSS from wait4); warm = every embedding cached")


if __name__ == "__main__":
    main()
