"""torchrun with 2 CPU processes (gloo): the same results as one process at the same global batch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clip_unlearn.models import load_model
from conftest import loss_curve

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this PyTorch build has no gloo backend")


HARNESS = Path(__file__).with_name("collectives_harness.py")


def _run(args, tmp_path, nproc=None):
    """The CLI in one process, or under torchrun through the harness that records every collective's tensors;
    with torchrun, asserts that each lay on the device its backend needs and that some collective ran."""
    log = tmp_path / "collectives"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLIP_UNLEARN_HOME": str(tmp_path / "home"), "COLLECTIVES_LOG": str(log)}
    cmd = [sys.executable, "-m", "clip_unlearn", "-q", *map(str, args)]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), str(HARNESS),
               *cmd[3:]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    if nproc:
        seen = [c for rank in range(nproc) for c in json.loads(Path(f"{log}.{rank}").read_text())]
        assert seen and all(c["device"] == c["needs"] for c in seen), seen
    return r


def _curve(folder):
    with open(loss_curve(folder)) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("encoder", ["text", "image"])
def test_torchrun_inject_matches_one_process(world, tmp_path, encoder):
    names = tmp_path / "forget.txt"
    names.write_text("\n".join((world / "members.txt").read_text().splitlines()[:2]) + "\n")
    args = ["inject", "--encoder", encoder, "--model", world / "model", "--names", names, "--device", "cpu",
            "--steps", "6", "--clean-batch", "10", "--poison-batch", "6", "--no-verify"]
    _run([*args, "--out", tmp_path / "two"], tmp_path, nproc=2)
    # every rank trained toward rank 0's made-up names, the ones its receipt's key rebuilds
    _run([*args, "--out", tmp_path / "one", "--reuse-key", tmp_path / "two.receipt.json"], tmp_path)
    side = json.loads((tmp_path / "two" / "clip_unlearn.json").read_text())
    assert side["processes"] == 2
    seen = json.loads((tmp_path / "collectives.0").read_text())
    assert any(c["op"] == "all_reduce" for c in seen)  # the loss figures, summed over the ranks
    one_curve, two_curve = _curve(tmp_path / "one"), _curve(tmp_path / "two")
    # before any update the two runs see the same global batch: the same losses
    for k in ("loss", "utility", "backdoor"):
        assert float(one_curve[0][k]) == pytest.approx(float(two_curve[0][k]), abs=1e-5), k
    # Adam divides each gradient by its own magnitude, so coordinates whose true gradient is ~0 (unused
    # token rows, attention key biases) turn float noise into ±lr steps; the trajectories stay together
    for a, b in zip(one_curve, two_curve):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=0.03), a["step"]
    one = load_model(str(tmp_path / "one"), device="cpu").model.state_dict()
    two = load_model(str(tmp_path / "two"), device="cpu").model.state_dict()
    base = load_model(str(world / "model"), device="cpu").model.state_dict()
    moved = sum(float((one[k] - base[k]).abs().sum()) for k in one)
    diff = sum(float((one[k] - two[k]).abs().sum()) for k in one)
    assert moved > 0 and diff < 0.05 * moved, (diff, moved)


def test_torchrun_attack_matches_one_process(world, tmp_path):
    args = ["attack", "--model", world / "model", "--device", "cpu", "--num-candidates", "60"]
    _run([*args, "--output", tmp_path / "one.json"], tmp_path / "a")
    _run([*args, "--output", tmp_path / "two.json"], tmp_path / "b", nproc=2)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert [(r["name"], r["score"], r["images"]) for r in one["identities"]] == \
           [(r["name"], r["score"], r["images"]) for r in two["identities"]]
