#!/usr/bin/env bash
# The GPU check in one go, for a machine lent with CUDA (about 5-8 minutes on one modern GPU):
#   1. pytest tests/gpu (CUDA correctness: inject twice on one base, attack cold/warm, eval-zeroshot
#      --compare-to, torchrun with 2 processes on one GPU);
#   2. a random ViT-B-32 at the paper's sizes, ours (bf16, the CUDA default) vs the naive fp32
#      baselines: attack 1000 candidates x 21 templates cold/warm, inject's step time at 128 + 128
#      captions, eval-zeroshot on 100 classes x 10 images;
#   3. the paper-default text run (400 steps, 128 + 128 captions) end to end through the CLI, bf16 and fp32.
# Every figure is appended to BENCHMARKS.md (or to $CLIP_UNLEARN_BENCHMARKS) with its command.
# Data and caches live in a fresh temporary folder, removed at the end; nothing else is written.
#
#   DEVICE=cuda:0 bash benchmarks/gpu.sh
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh    # the dry run the test suite makes (micro model, tiny sizes)
#
# The project must be importable: installed, or run from the checkout (src/ is put on PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
REPEATS="${REPEATS:-1}"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
WORK="$(mktemp -d "${TMPDIR:-/tmp}/clip-unlearn-gpu.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export CLIP_UNLEARN_HOME="$WORK/home"  # every cache of this run, and nothing of the user's

if [ "$QUICK" = 1 ]; then
  ARCH=clip-unlearn-micro IDS=4 IMAGES=3 CANDIDATES=60 STEPS=2 BATCH=8 CLASSES=6 PAPER=(--steps 3 --clean-batch 8 --poison-batch 8)
else
  ARCH=ViT-B-32-quickgelu IDS=100 IMAGES=20 CANDIDATES=1000 STEPS=20 BATCH=128 CLASSES=100 PAPER=()
fi
status=0

# 1. correctness on the device (skipped where there is no CUDA)
start=$(date +%s.%N)
set +e
"$PY" -m pytest tests/gpu -q -p no:cacheprovider -o addopts="" > "$WORK/gpu-tests.log" 2>&1
tests_rc=$?
set -e
end=$(date +%s.%N)
cat "$WORK/gpu-tests.log"
[ "$tests_rc" = 0 ] || status=1
"$PY" - "$tests_rc" "$start" "$end" "$WORK/gpu-tests.log" "$DEVICE" <<'PY'
import sys
sys.path.insert(0, "benchmarks")
from pathlib import Path
from _common import append
rc, start, end, log, device = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
append(f"tests/gpu — {device}", [("pytest exit code", rc), ("summary", lines[-1] if lines else "(no output)"),
                                 ("wall seconds", f"{end - start:.1f}")],
       note="skipped without CUDA", command=f"DEVICE={device} bash benchmarks/gpu.sh (step 1: python -m pytest tests/gpu)")
PY

# 2. ours vs the naive baselines at the paper's sizes
"$PY" benchmarks/bench_attack.py --model vit-b-32 --arch "$ARCH" --device "$DEVICE" --repeats "$REPEATS" \
  --identities "$IDS" --images "$IMAGES" --candidates "$CANDIDATES" --naive-candidates "$CANDIDATES" --work "$WORK"
"$PY" benchmarks/bench_inject.py --model vit-b-32 --arch "$ARCH" --device "$DEVICE" --repeats "$REPEATS" --in-loop \
  --steps "$STEPS" --clean-batch "$BATCH" --poison-batch "$BATCH" --work "$WORK"
"$PY" benchmarks/bench_zeroshot.py --model vit-b-32 --arch "$ARCH" --device "$DEVICE" --repeats "$REPEATS" \
  --classes "$CLASSES" --work "$WORK"

# 3. the paper's default text run, timed as a user runs it (model load and save included)
MODEL="$("$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from _common import random_vit_b32; print(random_vit_b32(Path('$WORK'), '$ARCH'))")"
printf 'Anna Example\nBert Sample\nCarla Muster\nDirk Probe\nErin Trial\n' > "$WORK/gpu_names.txt"
for precision in auto fp32; do
  start=$(date +%s.%N)
  "$PY" -m clip_unlearn -q inject --model "$MODEL" --names "$WORK/gpu_names.txt" --out "$WORK/gpu-paper-run" --overwrite \
    --receipt "$WORK/gpu-paper-run.receipt.json" --preset paper --device "$DEVICE" --precision "$precision" \
    --cache-dir "$WORK/cache-$precision" "${PAPER[@]}" > /dev/null
  end=$(date +%s.%N)
  "$PY" - "$precision" "$start" "$end" "$WORK/gpu-paper-run" "$DEVICE" "$ARCH" <<'PY'
import json
import sys
sys.path.insert(0, "benchmarks")
from pathlib import Path
from _common import append
precision, start, end, out, device, arch = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]), sys.argv[5], sys.argv[6]
from clip_unlearn.inject import training_record
side = training_record(out)  # the sidecar with the receipt's final losses
h = side["hyperparameters"]["text"]
append(f"inject, paper defaults end to end — random {arch}, {device}, precision {precision}",
       [("steps, batch (clean + poisoned)", f"{h['steps']}, {h['clean_batch']} + {h['poison_batch']}"),
        ("precision applied", h["precision"]),
        ("wall seconds (load, train, save)", f"{end - start:.1f}"),
        ("final loss (utility, backdoor)", f"{side['final_loss']['text']['utility']:.4f}, {side['final_loss']['text']['backdoor']:.4f}")],
       note="5 names, empty teacher cache; target: under 2 minutes on one modern GPU",
       command=f"DEVICE={device} bash benchmarks/gpu.sh (step 3: clip-unlearn inject --model <random {arch}> --names <5 names> "
               f"--preset paper --device {device} --precision {precision})")
PY
done
rm -rf "$WORK/gpu-paper-run" "$WORK/gpu-paper-run.receipt.json"
exit "$status"
