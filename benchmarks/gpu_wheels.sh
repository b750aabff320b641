#!/usr/bin/env bash
# For a lent GPU machine that holds PyTorch but not all of this project's dependencies: download, here,
# the wheels it lacks into .whl/ (git-ignored), for the machine's Python (3.12 by default).
#   bash benchmarks/gpu_wheels.sh            # then, on the GPU machine, with .whl carried along:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     PYTHONPATH=/tmp/site DEVICE=cuda bash benchmarks/gpu.sh
# The list is what such a machine was seen to lack (its image has torch, typer, rich, pandas, pyarrow,
# httpx, matplotlib, safetensors, timm, huggingface_hub, regex, pytest and hypothesis).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.12}"
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl open_clip_torch==3.3.0 ftfy wcwidth faker platformdirs
ls -1 .whl
