"""The GPU path end to end, on the tests' small world built on the device: inject twice on one base model (the
second run reads the teacher's cached targets from disk), attack cold then warm, eval-zeroshot --compare-to,
torchrun with two processes on one GPU, and the fast text path on the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST, forget_names, invoke

HARNESS = Path(__file__).resolve().parents[1] / "collectives_harness.py"


def _side(folder: Path) -> dict:
    from clip_unlearn.inject import training_record

    return training_record(folder)  # the sidecar with the receipt's counts (teacher cache, final losses)


def _moved_and_apart(a: Path, b: Path, base: Path) -> tuple[float, float]:
    from clip_unlearn.models import load_model

    one, two, orig = (load_model(str(p), "cpu").model.state_dict() for p in (a, b, base))
    moved = sum(float((one[k] - orig[k]).abs().sum()) for k in one)
    apart = sum(float((one[k] - two[k]).abs().sum()) for k in one)
    return moved, apart


@pytest.mark.parametrize("encoder", ["text", "image"])
def test_inject_twice_on_one_base_reads_the_teachers_cache(gpu_world, device, tmp_path, encoder):
    names, _ = forget_names(gpu_world, 2, tmp_path)
    args = ["inject", "--model", gpu_world / "model", "--names", names, "--encoder", encoder, "--device", device,
            "--cache-dir", tmp_path / "cache", *FAST]
    for run in ("cold", "warm"):
        r = invoke(*args, "--out", tmp_path / run)
        assert r.exit_code == 0, r.output
    cold, warm = _side(tmp_path / "cold"), _side(tmp_path / "warm")
    assert cold["teacher_cache"]["hits"] == 0 and cold["teacher_cache"]["misses"] > 0
    assert warm["teacher_cache"]["hits"] > 0 and warm["teacher_cache"]["misses"] < cold["teacher_cache"]["misses"]
    # the cached targets are the computed ones: the same losses up to the device's non-deterministic sums
    for a, b in zip(cold["final_loss"].values(), warm["final_loss"].values()):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-3)
    moved, apart = _moved_and_apart(tmp_path / "cold", tmp_path / "warm", gpu_world / "model")
    assert moved > 0 and apart < 0.02 * moved, (apart, moved)


def test_attack_cold_then_warm_and_fp32_equals_the_cpu(gpu_world, device, tmp_path):
    args = ["attack", "--model", gpu_world / "model", "--num-candidates", "200", "--cache-dir", tmp_path / "cache"]
    runs = {}
    for run, extra in (("cold", ["--device", device]), ("warm", ["--device", device]),
                       ("fp32", ["--device", device, "--precision", "fp32", "--cache-dir", tmp_path / "fp32"]),
                       ("cpu", ["--device", "cpu", "--precision", "fp32", "--cache-dir", tmp_path / "cpu"])):
        r = invoke(*args, *extra, "--output", tmp_path / f"{run}.json")
        assert r.exit_code == 0, r.output
        runs[run] = json.loads((tmp_path / f"{run}.json").read_text())
    scores = {k: [(i["name"], i["score"], i["images"]) for i in v["identities"]] for k, v in runs.items()}
    assert scores["cold"] == scores["warm"] and scores["fp32"] == scores["cpu"]
    assert runs["warm"]["config"]["cache"]["image_misses"] == 0 and runs["warm"]["config"]["cache"]["text_misses"] == 0


def test_eval_zeroshot_compare_to_on_the_device(gpu_world, device, tmp_path):
    names, _ = forget_names(gpu_world, 2, tmp_path)
    r = invoke("inject", "--model", gpu_world / "model", "--names", names, "--out", tmp_path / "u", "--device", device, *FAST)
    assert r.exit_code == 0, r.output
    results = {}
    for where, precision in ((device, "fp32"), ("cpu", "fp32"), (device, "auto")):
        out = tmp_path / f"eval-{where}-{precision}.json"
        r = invoke("eval-zeroshot", "--model", tmp_path / "u", "--compare-to", gpu_world / "model", "--names", names,
                   "--max-captions", "200", "--device", where, "--precision", precision, "--output", out)
        assert r.exit_code == 0, r.output
        results[(where, precision)] = json.loads(out.read_text())
    gpu, cpu = results[(device, "fp32")], results[("cpu", "fp32")]
    assert gpu["compare"]["same_image_tower"] and gpu["metrics"]["acc1"] == pytest.approx(cpu["metrics"]["acc1"], abs=0.01)
    assert gpu["similarities"]["sim_clean"] == pytest.approx(cpu["similarities"]["sim_clean"], abs=1e-4)
    bf16 = results[(device, "auto")]
    assert bf16["similarities"]["sim_clean"] == pytest.approx(cpu["similarities"]["sim_clean"], abs=1e-2)


def test_torchrun_two_processes_on_one_device_match_one_process(gpu_world, device, tmp_path):
    names, _ = forget_names(gpu_world, 2, tmp_path)
    args = ["-q", "inject", "--model", str(gpu_world / "model"), "--names", str(names), "--device", device,
            "--steps", "12", "--clean-batch", "16", "--poison-batch", "16", "--no-verify"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CLIP_UNLEARN_HOME": str(tmp_path / "home"),
           "COLLECTIVES_LOG": str(tmp_path / "collectives")}
    one = subprocess.run([sys.executable, "-m", "clip_unlearn", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout + one.stderr
    # one GPU cannot hold two NCCL ranks: the process group is gloo on CUDA then, NCCL with a GPU per rank
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(HARNESS),
                          *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout + two.stderr
    seen = [c for rank in (0, 1) for c in json.loads(Path(f"{tmp_path / 'collectives'}.{rank}").read_text())]
    assert any(c["op"] == "all_reduce" for c in seen) and all(c["device"] == c["needs"] for c in seen), seen
    assert _side(tmp_path / "two")["processes"] == 2
    moved, apart = _moved_and_apart(tmp_path / "one", tmp_path / "two", gpu_world / "model")
    assert moved > 0 and apart < 0.05 * moved, (apart, moved)  # bf16 noise (and Adam's ±lr on ~0 gradients)


def test_fast_text_path_on_the_device_equals_open_clip(device):
    from clip_unlearn.embed import encode_text
    from clip_unlearn.models import import_open_clip

    open_clip = import_open_clip()
    torch.manual_seed(0)
    model = open_clip.create_model("clip-unlearn-tiny").to(device).eval()
    tok = open_clip.get_tokenizer("clip-unlearn-tiny")
    tokens = tok(["a photo of Ada Lovelace", "have fun!/ today", "x", "a cropped image of a very long caption " * 3])
    with torch.no_grad():
        slow = model.encode_text(tokens.to(device), normalize=True)
        for given in (tokens, tokens.to(device)):  # CPU tokens (no sync) or tokens already on the device
            fast = encode_text(model, given)
            assert fast.device == slow.device and torch.allclose(fast, slow, atol=1e-5)


def test_teacher_cache_on_the_device(device, tmp_path):
    from clip_unlearn.embed import EmbeddingCache
    from clip_unlearn.training import TeacherCache

    EmbeddingCache(tmp_path).store("ns", ["a"], torch.ones(1, 4))
    cache = TeacherCache(EmbeddingCache(tmp_path), "ns", "text", device=device)
    out = cache.get(["a", "b"], lambda idx: torch.zeros(len(idx), 4, device=device, dtype=torch.bfloat16))
    assert out.device.type == torch.device(device).type and out.dtype == torch.float32
    assert out[0].sum().item() == 4 and out[1].sum().item() == 0
