#!/usr/bin/env bash
# Every GPU measurement of BENCHMARKS.md in one go (a few minutes on a modern GPU), for a machine
# lent with CUDA: ViT-B-32 (random weights) at the paper's sizes, ours vs the naive baselines, and
# the paper-default text unlearning run (400 steps, 128 + 128 captions) end to end through the CLI.
#   DEVICE=cuda:0 REPEATS=3 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
REPEATS="${REPEATS:-3}"
WORK="${WORK:-${TMPDIR:-/tmp}/clip-unlearn-bench}"
PY="${PYTHON:-python}"

"$PY" benchmarks/bench_attack.py --model vit-b-32 --device "$DEVICE" --repeats "$REPEATS" --naive-candidates 1000 --work "$WORK"
"$PY" benchmarks/bench_inject.py --model vit-b-32 --device "$DEVICE" --repeats "$REPEATS" --steps 20 --work "$WORK"
"$PY" benchmarks/bench_zeroshot.py --model vit-b-32 --device "$DEVICE" --repeats "$REPEATS" --classes 1000 --work "$WORK"

# The paper's default text run, timed as a user runs it (model load and save included).
MODEL="$("$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from _common import random_vit_b32; print(random_vit_b32(Path('$WORK')))")"
printf 'Anna Example\nBert Sample\nCarla Muster\nDirk Probe\nErin Trial\n' > "$WORK/gpu_names.txt"
for precision in auto fp32; do
  start=$(date +%s.%N)
  "$PY" -m clip_unlearn -q inject --model "$MODEL" --names "$WORK/gpu_names.txt" --out "$WORK/gpu-paper-run" --overwrite \
    --preset paper --device "$DEVICE" --precision "$precision" --cache-dir "$WORK/gpu-cache-$precision" > /dev/null
  end=$(date +%s.%N)
  "$PY" - "$precision" "$start" "$end" <<'PY'
import sys
sys.path.insert(0, "benchmarks")
from _common import append
precision, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
append(f"inject, paper defaults end to end — vit-b-32, precision {precision}",
       [("steps, batch (clean + poisoned)", "400, 128 + 128"), ("wall seconds (load, train, save)", f"{end - start:.1f}")],
       note="clip-unlearn inject --preset paper, 5 names, empty teacher cache; target: under 2 minutes on one modern GPU")
PY
done
