"""The identity inference attack: scoring rules, the synthetic world, caching, comparison, the gate, bad inputs."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from clip_unlearn.attack import CSV_COLUMNS, PAPER_TEMPLATES, compare, predict_one, vote
from clip_unlearn.errors import ClipUnlearnError
from conftest import invoke, output

# --- scoring on hand-made predictions -------------------------------------------------------

def test_vote_unique_plurality_ties_and_threshold():
    # one template, identity 0 owns images 0-4, identity 1 owns images 5-8; true names 0 and 1
    owner = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])
    true_idx = torch.tensor([0, 1])
    preds = torch.tensor([[0, 0, 2, 3, 4,   1, 1, 2, 2]])  # id0: plurality 2/5 (no majority); id1: 2-2 tie
    scores, winners = vote(preds, owner, true_idx, n_names=5)
    assert scores.tolist() == [1, 0]
    assert winners.tolist() == [[0, -1]]  # a tie is no vote, not the lowest index


def test_vote_counts_templates():
    owner = torch.tensor([0, 0, 0])
    preds = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 2, 1]])  # template 3: three-way tie
    scores, winners = vote(preds, owner, torch.tensor([0]), n_names=3)
    assert scores.tolist() == [1] and winners[:, 0].tolist() == [1, 0, -1]


def test_predict_is_per_template_argmax():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    assert [predict_one(images, text[t]).tolist() for t in range(2)] == [[0, 1], [1, 0]]
    assert [predict_one(images, text[t], max_scores=1).tolist() for t in range(2)] == [[0, 1], [1, 0]]  # one image a block


def _result(scores, exposed, candidates=("a", "b", "c"), images=None, **config):
    same = {"templates": ["a photo of {}"], "threshold": 1, "split_applied": "all", "precision_applied": "fp32",
            "variants_applied": ["full"]}
    return {"config": {"candidates": list(candidates), **same, **config},
            "identities": [{"name": n, "score": s, "exposed": e, "images": (images or {}).get(n, ["x.png"])}
                           for (n, s), e in zip(scores.items(), exposed)]}


def test_compare_categories():
    before = _result({"A": 5, "B": 3, "C": 2, "D": 0, "E": 4}, [True, True, True, False, True])
    after = _result({"A": 0, "B": 2, "C": 0, "D": 1, "E": 4}, [False, True, False, True, True])
    cmp = compare(before, after, forgotten=["A", "B"])
    cats = cmp["categories"]
    assert cats["correctly_unlearned"] == ["A"] and cats["failed"] == ["B"]
    assert cats["wrongfully_unlearned"] == ["C"] and cats["newly_recalled"] == ["D"] and cats["unchanged"] == ["E"]
    assert cmp["rates"]["correctly_unlearned"] == 0.5 and cmp["rates"]["wrongfully_unlearned"] == pytest.approx(1 / 3, abs=1e-3)


def test_compare_refuses_different_candidates_or_images():
    with pytest.raises(ClipUnlearnError, match="different candidate names"):
        compare(_result({"A": 1}, [True]), _result({"A": 1}, [True], candidates=("a", "z")), [])
    with pytest.raises(ClipUnlearnError, match="1 identities were attacked with different images"):
        compare(_result({"A": 1}, [True]), _result({"A": 1}, [True], images={"A": ["y.png"]}), [])


@pytest.mark.parametrize("change, flag", [({"templates": ["{}"]}, "--templates"), ({"threshold": 2}, "--threshold"),
                                          ({"split_applied": "train"}, "--split"), ({"precision_applied": "bf16"}, "--precision"),
                                          ({"variants_applied": ["full", "surname"]}, "--variants")])
def test_compare_refuses_runs_that_differ_in_what_they_measure(change, flag):
    with pytest.raises(ClipUnlearnError, match=f"differ in {flag}"):
        compare(_result({"A": 1}, [True]), _result({"A": 1}, [True], **change), [])
    old = _result({"A": 1}, [True])
    del old["config"]["precision_applied"]  # a result from before the key was recorded is not assumed to match
    with pytest.raises(ClipUnlearnError, match="does not record it"):
        compare(old, _result({"A": 1}, [True]), [])


# --- on the synthetic world -------------------------------------------------------------------

@pytest.fixture()
def world_attack(world_before):
    """One full attack (1000 candidates x 21 templates) on the small world, as JSON: the session's "before"
    attack (conftest), run once for every test that attacks the world's base model with the defaults."""
    return json.loads(world_before.read_text())


def test_members_are_exposed_and_non_members_not(world, world_attack):
    members = set((world / "members.txt").read_text().splitlines())
    rows = world_attack["identities"]
    member_rate = sum(r["exposed"] for r in rows if r["name"] in members) / len(members)
    non = [r for r in rows if r["name"] not in members]
    assert member_rate >= 0.8
    assert sum(r["exposed"] for r in non) / len(non) <= 0.25
    assert world_attack["summary"]["candidates"] == 1000 and world_attack["summary"]["templates"] == len(PAPER_TEMPLATES)
    assert all(r["n_images"] == 20 and len(r["images"]) == 20 for r in rows)


def test_same_seed_same_result_and_nothing_reencoded(world, world_attack, world_cache, tmp_path):
    out = tmp_path / "again.json"
    # the fixture's run encoded everything into world_cache (the isolated home is not shared): a second run
    # on that cache re-encodes nothing and finds what the fresh run found
    assert invoke("attack", "--model", world / "model", "--output", out, "--cache-dir", world_cache).exit_code == 0
    again = json.loads(out.read_text())
    assert again["identities"] == world_attack["identities"]
    stats = again["config"]["cache"]
    assert stats["image_misses"] == 0 and stats["text_misses"] == 0
    assert stats["image_hits"] == 16 * 20 and stats["text_hits"] == 21 * 1000


def test_other_seed_other_sample(world, world_attack, tmp_path):
    out = tmp_path / "s.json"
    assert invoke("attack", "--model", world / "model", "--output", out, "--seed", "7", "--num-candidates", "100").exit_code == 0
    other = json.loads(out.read_text())
    assert other["config"]["candidates"] != world_attack["config"]["candidates"]


def test_csv_output_columns_and_compare_to_itself(world, tmp_path):
    out = tmp_path / "r.csv"
    assert invoke("attack", "--model", world / "model", "--output", out, "--num-candidates", "100").exit_code == 0
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and {r[3] for r in rows[1:]} <= {"true", "false"}
    assert (tmp_path / "r.meta.json").exists()
    cmp_out = tmp_path / "c.json"
    result = invoke("attack", "--model", world / "model", "--num-candidates", "100", "--compare-to", out, "--output", cmp_out)
    assert result.exit_code == 0, result.output
    cmp = json.loads(cmp_out.read_text())["compare"]
    assert cmp["tpr_before"] == cmp["tpr_after"] and not cmp["categories"]["wrongfully_unlearned"]
    assert "before → after" in result.output


def test_compare_with_other_candidates_is_refused(world, tmp_path):
    out = tmp_path / "r.json"
    assert invoke("attack", "--model", world / "model", "--output", out, "--num-candidates", "100").exit_code == 0
    result = invoke("attack", "--model", world / "model", "--num-candidates", "120", "--compare-to", out)
    assert result.exit_code == 1 and "different candidate names" in result.output


def test_privacy_gate_exit_codes(world, world_attack, world_cache, tmp_path):
    exposed = [r["name"] for r in world_attack["identities"] if r["exposed"]]
    hidden = [r["name"] for r in world_attack["identities"] if not r["exposed"]]
    gate = tmp_path / "gate.txt"
    gate.write_text(hidden[0] + "\n")
    cached = ["--cache-dir", world_cache]  # the fixture's embeddings: the gate runs encode nothing
    assert invoke("attack", "--model", world / "model", "--fail-on-exposed", gate, *cached).exit_code == 0
    gate.write_text(hidden[0] + "\n" + exposed[0].replace(" ", "_") + "\n")
    result = invoke("attack", "--model", world / "model", "--fail-on-exposed", gate, *cached)
    assert result.exit_code == 3 and "privacy gate failed" in result.output and "line(s) #2" in result.output
    assert exposed[0] not in result.output and exposed[0].split()[-1] not in result.output  # CI logs get positions only
    gate.write_text("Nobody Atall\n")
    result = invoke("attack", "--model", world / "model", "--fail-on-exposed", gate, *cached)
    assert result.exit_code == 1 and "were not attacked" in result.output


def test_the_gate_takes_one_names_file_per_request(world, world_attack, world_cache, tmp_path):
    exposed = [r["name"] for r in world_attack["identities"] if r["exposed"]]
    hidden = [r["name"] for r in world_attack["identities"] if not r["exposed"]]
    first, second = tmp_path / "request-1.txt", tmp_path / "request-2.txt"
    first.write_text(hidden[0] + "\n")
    second.write_text(hidden[1] + "\n")
    cached = ["--cache-dir", world_cache]
    gates = ["--fail-on-exposed", first, "--fail-on-exposed", second]
    assert invoke("attack", "--model", world / "model", *gates, *cached).exit_code == 0
    second.write_text(hidden[1] + "\n" + exposed[0] + "\n" + exposed[1] + "\n")
    first.write_text(exposed[2] + "\n" + hidden[0] + "\n")
    r = invoke("attack", "--model", world / "model", *gates, *cached, "--output", tmp_path / "a.json")
    text = " ".join(output(r).split())
    assert r.exit_code == 3 and "3 name(s) still exposed" in text
    assert f"#1 of {first}; #2, #3 of {second}" in text
    assert not any(n in text for n in exposed[:3])
    # the report the user asked for names them; the terminal table labels them by file and line
    table = invoke("attack", "--model", world / "model", *gates, *cached, quiet=False)
    assert "#2 of --fail-on-exposed file 2" in " ".join(output(table).split())
    second.write_text("Nobody Atall\n")
    r = invoke("attack", "--model", world / "model", *gates, *cached)
    assert r.exit_code == 1 and f"line(s) #1 of {second}" in " ".join(output(r).split())


# --- bad inputs ---------------------------------------------------------------------------------

@pytest.fixture()
def small_faces(world, tmp_path):
    """Three identities copied from the world, one with too few images and one with a corrupt file."""
    root = tmp_path / "faces"
    folders = sorted((world / "faces").iterdir())[:3]
    for f in folders:
        shutil.copytree(f, root / f.name)
    for p in sorted((root / folders[0].name).glob("*.png"))[5:]:
        p.unlink()
    for f in folders[1:]:  # exactly 20 readable, so that sampling 20 must meet the corrupt file
        for p in sorted((root / f.name).glob("*.png"))[20:]:
            p.unlink()
    (root / folders[1].name / "999.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root, [f.name.replace("_", " ") for f in folders]


def test_corrupt_images_skipped_and_too_few_not_attacked(world, small_faces, tmp_path):
    root, names = small_faces
    out = tmp_path / "r.json"
    result = invoke("attack", "--model", world / "model", "--data", root, "--output", out, "--num-candidates", "50",
                    "--images-per-identity", "20")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    attacked = {r["name"] for r in data["identities"]}
    assert names[0] not in attacked and {names[1], names[2]} <= attacked
    assert data["summary"]["too_few_images"] == 1
    assert all(not p.endswith("999.png") for r in data["identities"] for p in r["images"])
    assert "identities with too few images" in " ".join(result.output.split())


def test_unreadable_image_is_counted_when_sampled(world, small_faces, tmp_path):
    root, names = small_faces
    out = tmp_path / "r.json"
    result = invoke("attack", "--model", world / "model", "--data", root, "--output", out, "--num-candidates", "50",
                    "--images-per-identity", "5", "--min-images", "20")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["summary"]["unreadable_images"] == 1


def test_candidates_file_must_contain_attacked_names(world, small_faces, tmp_path):
    root, names = small_faces
    cands = tmp_path / "c.txt"
    cands.write_text(f"{names[1]}\nSomeone Else\n")
    result = invoke("attack", "--model", world / "model", "--data", root, "--candidates", cands)
    assert result.exit_code == 1 and "lacks 1 attacked name" in result.output and names[2] in result.output


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "has no identity folders"),
])
def test_missing_or_empty_data_folder(world, tmp_path, setup, message):
    data = tmp_path / "nope"
    setup(data)
    result = invoke("attack", "--model", world / "model", "--data", data)
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_bad_templates_and_output_suffix(world, tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("a photo of someone\n")
    result = invoke("attack", "--model", world / "model", "--templates", bad)
    assert result.exit_code == 1 and "needs exactly one {}" in result.output
    assert invoke("attack", "--model", world / "model", "--output", tmp_path / "r.txt").exit_code == 2


def test_paper_preset_selects_laion_counts_and_train_half(world, tmp_path):
    src = sorted((world / "faces").iterdir())
    root = tmp_path / "facescrub"
    # two FaceScrub names from the LAION table: count 1 (kept) and > 300 (dropped)
    for name, folder in (("Joanna_García", src[0]), ("Jennifer_Aniston", src[1])):
        dest = root / "actresses" / "images" / name
        dest.mkdir(parents=True)
        for i, p in enumerate(sorted(folder.glob("*.png"))):
            shutil.copy(p, dest / f"{name}_{1000 + i}.png")
    out = tmp_path / "r.json"
    result = invoke("attack", "--model", world / "model", "--data", root, "--preset", "paper", "--output", out,
                    "--min-images", "5", "--images-per-identity", "5", "--num-candidates", "50")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["identities"]] == ["Joanna García"]
    from pathlib import Path

    from clip_unlearn.folders import split_side
    assert all(split_side("Joanna García", Path(p)) == "train" for p in data["identities"][0]["images"])
