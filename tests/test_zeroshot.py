"""eval-zeroshot: metrics by hand, the world's objects, comparison, similarities, cache reuse, bad inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from clip_unlearn.cli import app
from clip_unlearn.zeroshot import classify_metrics

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["-q", *map(str, args)], env={"COLUMNS": "200"})


def test_metrics_match_hand_computation():
    logits = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: top-1 hit
        [0.1, 0.2, 0.9, 0.0, 0.0, 0.0],  # label 1: 2nd best -> top-5 hit only
        [0.0, 0.0, 0.1, 0.9, 0.0, 0.0],  # label 2: 2nd best
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # label 5: hit
    ])
    m = classify_metrics(logits, torch.tensor([0, 1, 2, 5]), n_classes=6)
    assert m["acc1"] == pytest.approx(50.0) and m["acc5"] == pytest.approx(100.0)
    # recall: class 0 = 1, class 1 = 0, class 2 = 0, class 5 = 1 (classes without images are skipped)
    assert m["mean_per_class_recall"] == pytest.approx(50.0)


def test_world_model_far_above_chance_and_random_model_near_it(world, micro_model_dir, tmp_path):
    out = tmp_path / "w.json"
    assert invoke("eval-zeroshot", "--model", world / "model", "--output", out).exit_code == 0
    trained = json.loads(out.read_text())
    assert trained["task"] == "zeroshot_classification" and trained["n_classes"] == 36
    assert trained["metrics"]["acc1"] > 3 * 100 / 36
    out2 = tmp_path / "r.json"
    r = invoke("eval-zeroshot", "--model", micro_model_dir, "--data", world / "objects", "--output", out2)
    assert r.exit_code == 0, r.output
    assert json.loads(out2.read_text())["metrics"]["acc1"] < 12


def test_compare_to_itself(world, tmp_path):
    members = (world / "members.txt").read_text().splitlines()[:1]
    (tmp_path / "n.txt").write_text(members[0] + "\n")
    out = tmp_path / "c.json"
    r = invoke("eval-zeroshot", "--model", world / "model", "--compare-to", world / "model", "--captions",
               world / "captions.txt", "--names", tmp_path / "n.txt", "--max-captions", "300", "--output", out)
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert all(v == 0 for v in res["compare"]["difference"].values()) and res["compare"]["same_image_tower"]
    assert res["compare"]["sim_clean_image"] == pytest.approx(1.0, abs=1e-5)
    sims = res["similarities"]
    assert sims["sim_clean"] == pytest.approx(1.0, abs=1e-5) and sims["sim_targets"] == pytest.approx(1.0, abs=1e-5)
    assert sims["sim_backdoored"] < 0.99  # the original model does not map the name to the target
    n_images = res["n_images"]
    assert res["config"]["cache"]["image_misses"] == n_images and res["config"]["cache"]["image_hits"] == n_images
    assert members[0] not in out.read_text()
    csv_out = tmp_path / "c.csv"
    assert invoke("eval-zeroshot", "--model", world / "model", "--compare-to", world / "model", "--output", csv_out).exit_code == 0
    assert csv_out.read_text().splitlines()[0] == "metric,model,compare,difference"


def test_bad_inputs(world, tmp_path):
    data = tmp_path / "objs"
    for c in sorted((world / "objects").iterdir())[:3]:
        shutil.copytree(c, data / c.name)
    (data / sorted(p.name for p in data.iterdir())[0] / "bad.png").write_bytes(b"garbage")
    out = tmp_path / "o.json"
    assert invoke("eval-zeroshot", "--model", world / "model", "--data", data, "--output", out).exit_code == 0
    assert json.loads(out.read_text())["unreadable_images"] == 1
    r = invoke("eval-zeroshot", "--model", world / "model", "--data", data, "--classnames", "imagenet")
    assert r.exit_code == 1 and "1000 ImageNet class folders" in r.output
    (data / "zz_empty").mkdir()
    r = invoke("eval-zeroshot", "--model", world / "model", "--data", data)
    assert r.exit_code == 1 and "zz_empty" in r.output and "has no images" in r.output
    r = invoke("eval-zeroshot", "--model", world / "model", "--names", tmp_path / "x.txt")
    assert r.exit_code == 2 and "--names needs --captions" in r.output
