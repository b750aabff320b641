"""The benchmarks' naive baselines compute what our code computes, so their speed ratios compare like with like."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

bench_attack = pytest.importorskip("bench_attack")
bench_inject = pytest.importorskip("bench_inject")
bench_zeroshot = pytest.importorskip("bench_zeroshot")


def test_naive_attack_equals_run_attack_on_the_world(world, tmp_path):
    from clip_unlearn.attack import run_attack
    from clip_unlearn.config import AttackConfig

    result = run_attack(AttackConfig(model=str(world / "model"), data=world / "faces", num_candidates=100,
                                     cache_dir=tmp_path, device="cpu"))
    kept = [(r["name"], r["images"]) for r in result.identities]
    scores, phases = bench_attack.naive_attack(str(world / "model"), kept, result.config["candidates"], result.config["templates"])
    assert scores == {r["name"]: r["score"] for r in result.identities}
    assert any(s >= 1 for s in scores.values()) and set(phases) == {"load", "images", "text", "vote"}


def test_naive_candidate_subset_keeps_order_and_every_attacked_name():
    candidates = ["A a", "B b", "C c", "D d", "E e", "F f"]
    assert bench_attack.naive_subset(candidates, ["E e", "B b"], 4) == ["A a", "B b", "C c", "E e"]
    assert bench_attack.naive_subset(candidates, ["E e", "B b"], 1) == ["B b", "E e"]


def test_naive_inject_loss_equals_ours_on_one_batch(world):
    names = (world / "members.txt").read_text().splitlines()[:3]
    diffs = bench_inject.check_losses(world / "model", "world", names, clean_batch=16, poison_batch=16)
    assert max(v for k, v in diffs.items() if not k.endswith("_ours")) < 1e-4
    # the student was perturbed, so neither the utility nor the weight term is trivial
    assert diffs["weight_l2_ours"] > 0 and diffs["utility_ours"] > -0.9999


def test_materialised_pairs_replace_one_word_but_the_last():
    pairs = bench_inject.materialise_pairs(["a b c", "single", "x y"], ["Jo Do", "Al Be"], random.Random(0))
    assert len(pairs) == 4  # 2 names × the 2 captions with a space
    for poisoned, target in pairs:
        assert poisoned.replace("Jo Do", "@").replace("Al Be", "@") == target.replace(bench_inject.TARGET, "@")
        assert not poisoned.endswith(("Jo Do", "Al Be"))


def test_naive_zeroshot_equals_run_eval_without_renormalising(world, tmp_path):
    from clip_unlearn.config import EvalZeroshotConfig
    from clip_unlearn.folders import class_folders
    from clip_unlearn.zeroshot import resolve_classnames, resolve_templates, run_eval

    ours = run_eval(EvalZeroshotConfig(model=str(world / "model"), renormalize=False, cache_dir=tmp_path, device="cpu"))
    classes = class_folders(world / "objects")
    files = [f for _, fs in classes for f in fs]
    labels = [i for i, (_, fs) in enumerate(classes) for _ in fs]
    acc1, acc5, _ = bench_zeroshot.naive_zeroshot(str(world / "model"), files, labels,
                                                  resolve_classnames("folder", [c for c, _ in classes]), resolve_templates("openai"))
    assert acc1 == pytest.approx(100 * ours["metrics"]["acc1"], abs=1e-3) and acc5 == pytest.approx(100 * ours["metrics"]["acc5"], abs=1e-3)


def test_synthetic_class_dataset_shape(tmp_path):
    images, names = bench_zeroshot.class_dataset(tmp_path, classes=3, per_class=2, size=40)
    assert len(names.read_text().splitlines()) == 3
    assert sorted(p.name for p in images.iterdir()) == ["c0000", "c0001", "c0002"]
    assert all(len(list(d.iterdir())) == 2 for d in images.iterdir())


def test_naive_and_batched_poison_paste_faces_of_the_same_sizes(tmp_path):
    import torch

    bench_poison = pytest.importorskip("bench_poison")
    from _common import face_folders

    face_paths = sorted(face_folders(tmp_path, 2, 4).rglob("*.png"))
    clean_paths = sorted(bench_poison.clean_folder(tmp_path, 64, 224).glob("*.png"))
    rng = random.Random(0)
    naive = bench_poison.naive_poison([rng.choice(face_paths) for _ in clean_paths], clean_paths, 224, rng)
    faces, clean = bench_poison.ours_setup(face_paths, clean_paths, 224)
    ours = bench_poison.ours_poison(faces, clean, 64, 0, torch.Generator().manual_seed(0), random.Random(0), "cpu")
    base = clean.float() / 255
    assert naive.shape == ours.shape == base.shape
    for out in (naive, ours):
        assert 0 <= out.min() and out.max() <= 1 and torch.equal((out * 255).round(), out * 255)
    # the same base images, so the changed pixels are the pasted faces: a side s ~ U{56..112} at 224
    # px covers s² pixels whatever the rotation, on average 0.137 of the canvas in both pipelines
    area = [((out - base).abs().amax(1) > 1.5 / 255).float().mean((1, 2)) for out in (naive, ours)]
    assert all(0.10 < a.mean() < 0.18 for a in area), [a.mean() for a in area]
    assert abs(area[0].mean() - area[1].mean()) < 0.03
    assert all(a.min() > (40 / 224) ** 2 and a.max() < 2 * (112 / 224) ** 2 for a in area)


def test_the_gpu_script_dry_run_appends_every_section_and_leaves_nothing(tmp_path):
    """benchmarks/gpu.sh as its CPU dry run (micro model, tiny sizes): every step runs and reports, so the
    script a lent GPU machine runs cannot rot; its data and caches go with it."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    report = tmp_path / "BENCHMARKS.md"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "PYTHON": sys.executable, "CLIP_UNLEARN_BENCHMARKS": str(report),
           "TMPDIR": str(scratch), "OMP_NUM_THREADS": "2"}
    r = subprocess.run(["bash", "benchmarks/gpu.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = report.read_text()
    for title in ("## tests/gpu — cpu", "## attack — random clip-unlearn-micro", "## inject (text encoder) — random clip-unlearn-micro",
                  "## eval-zeroshot — random clip-unlearn-micro",
                  "## inject, paper defaults end to end — random clip-unlearn-micro, cpu, precision auto",
                  "## inject, paper defaults end to end — random clip-unlearn-micro, cpu, precision fp32"):
        assert title in text, title
    assert "| pytest exit code | 0 |" in text and "largest |loss ours − loss naive|" in text
    assert not list(scratch.glob("clip-unlearn-gpu.*"))  # its work folder is removed
