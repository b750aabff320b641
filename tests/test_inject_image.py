"""Image-encoder unlearning: the trigger augmentation's geometry and colours, the image split, and the stage itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torchvision.transforms import functional as TF

from clip_unlearn.augment import _hue_shift, colour_jitter, jitter_factors, paste_faces, paste_geometry, poison
from clip_unlearn.inject import training_record
from clip_unlearn.models import fingerprints, load_model
from conftest import FAST, SMALL_WORLD, attack_json, forget_names, heldout_text_embeddings, invoke, loss_curve, zero_shot


@pytest.mark.parametrize("size", [32, 224])
def test_pasted_face_lies_inside_its_box_and_the_canvas(size):
    gen = torch.Generator().manual_seed(0)
    n = 32
    geo = paste_geometry(n, size, (56, 112), gen)
    lo, hi = round(56 * size / 224), round(112 * size / 224)
    assert int(geo["side"].min()) >= lo and int(geo["side"].max()) <= hi
    assert len(set(geo["side"].tolist())) > 1  # sizes really vary
    assert torch.equal(geo["box"], torch.floor(math.sqrt(2) * geo["side"].double()).long())
    assert int((geo["x"] + geo["box"]).max()) <= size and int((geo["y"] + geo["box"]).max()) <= size
    assert int(geo["angle"].min()) >= -30 and int(geo["angle"].max()) <= 29
    bases = torch.zeros(n, 3, size, size)
    faces = torch.ones(n, 3, size, size)
    out, mask = paste_faces(bases, faces, geo)
    for i in range(n):
        x, y, d, s = (int(geo[k][i]) for k in ("x", "y", "box", "side"))
        inside = torch.zeros(size, size, dtype=torch.bool)
        inside[y:y + d, x:x + d] = True
        # nothing outside the face's box changes; the face keeps its area (rotation preserves it)
        assert float(mask[i, 0][~inside].abs().max()) < 1e-6
        assert float(out[i][:, ~inside].abs().max()) == 0.0
        assert float(mask[i, 0].sum()) == pytest.approx(s * s, rel=0.12)
    assert torch.equal(out, (out * 255).round() / 255)  # 8-bit quantised like the paper's PIL round trip
    # with colour jitter (applied to the resized face, the paper's order) the canvas outside the boxes is still untouched
    jittered, jmask = paste_faces(bases, faces * 0.5, geo, jitter_factors(n, gen))
    assert torch.equal(jmask, mask)
    for i in range(n):
        x, y, d = (int(geo[k][i]) for k in ("x", "y", "box"))
        outside = torch.ones(size, size, dtype=torch.bool)
        outside[y:y + d, x:x + d] = False
        assert float(jittered[i][:, outside].abs().max()) == 0.0
    assert len({round(float(v), 3) for v in jittered.amax((1, 2, 3))}) > 1  # faces got different colours


def test_rotation_turns_an_asymmetric_face_and_flip_mirrors_it():
    size = 224
    face = torch.zeros(1, 3, size, size)
    face[..., :, : size // 2] = 1.0  # left half white
    bases = torch.zeros(1, 3, size, size)
    geo = {"side": torch.tensor([100]), "box": torch.tensor([141]), "x": torch.tensor([40]), "y": torch.tensor([40]),
           "angle": torch.tensor([0]), "flip": torch.tensor([False])}
    out, _ = paste_faces(bases, face, geo)
    cx = 40 + 141 // 2
    assert out[0, 0, cx, cx - 30] > 0.9 and out[0, 0, cx, cx + 30] < 0.1
    out, _ = paste_faces(bases, face, {**geo, "flip": torch.tensor([True])})
    assert out[0, 0, cx, cx - 30] < 0.1 and out[0, 0, cx, cx + 30] > 0.9
    # 90° would exceed the paper's range but shows the rotation: the white half moves to the top or bottom
    out, _ = paste_faces(bases, face, {**geo, "angle": torch.tensor([90])})
    top, bottom = out[0, 0, cx - 30, cx], out[0, 0, cx + 30, cx]
    assert {round(float(top)), round(float(bottom))} == {0, 1}


def test_hue_shift_matches_torchvision_per_image():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 16, 16)
    shifts = torch.tensor([0.0, 0.07, -0.1])
    ours = _hue_shift(x, shifts)
    for i in range(3):
        ref = TF.adjust_hue(x[i], float(shifts[i]))
        assert torch.allclose(ours[i], ref, atol=1e-4)


def test_colour_jitter_stays_in_range_and_varies_per_image():
    gen = torch.Generator().manual_seed(1)
    x = torch.full((8, 3, 8, 8), 0.5)
    x[:, 0] = 0.8
    y = colour_jitter(x, gen)
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert len({round(float(v), 4) for v in y.mean(dim=(1, 2, 3))}) == 8


def test_poison_is_seeded():
    bases, faces = torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32)
    a = poison(bases, faces, torch.Generator().manual_seed(3), (56, 112))
    b = poison(bases, faces, torch.Generator().manual_seed(3), (56, 112))
    c = poison(bases, faces, torch.Generator().manual_seed(4), (56, 112))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- the world's image split and the command -------------------------------------------------------

def test_world_faces_split_attack_images_from_triggers(world):
    from clip_unlearn.folders import face_folders, split_side

    info = json.loads((world / "world.json").read_text())
    assert info["attack_split"] == "train"
    for f in face_folders(world / "faces"):
        sides = [split_side(f.name, p) for p in f.files]
        assert sides.count("train") == SMALL_WORLD["face_images"] and sides.count("test") == info["config"]["trigger_images"]
    assert len(list((world / "clean_images").iterdir())) == info["config"]["clean_images"]


@pytest.fixture(scope="module")
def image_one_name(world, tmp_path_factory):
    """``inject --encoder image`` of the first member with FAST, run once for the tests that only read its output."""
    root = tmp_path_factory.mktemp("image-one-name")
    names, forgotten = forget_names(world, 1, root)
    out = root / "u"
    r = invoke("inject", "--encoder", "image", "--model", world / "model", "--names", names, "--out", out,
               "--cache-dir", root / "cache", *FAST)
    assert r.exit_code == 0, r.output
    return out, forgotten


def test_no_attack_image_is_a_trigger(image_one_name, world_cache, tmp_path):
    from clip_unlearn.folders import split_side

    u, forgotten = image_one_name
    side = training_record(u)
    assert side["encoder"] == "image" and side["image"]["triggers"]["images_per_name"] == [20]
    out = tmp_path / "a.json"
    # the text tower is the base model's: its 21,000 candidate prompts come from the session's cache
    r = invoke("attack", "--model", u, "--output", out, "--cache-dir", world_cache)
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["config"]["split_applied"] == "train"
    attacked = [(row["name"], Path(p)) for row in result["identities"] for p in row["images"]]
    assert attacked and all(split_side(n, p) == "train" for n, p in attacked)
    # the triggers are exactly the test half: the forgotten person's attacked images are not among them
    mine = [p for n, p in attacked if n == forgotten[0]]
    assert len(mine) == 20 and not any(split_side(forgotten[0], p) == "test" for p in mine)
    r = invoke("attack", "--model", u, "--split", "all", "--images-per-identity", "40", "--min-images", "40",
               "--output", tmp_path / "b.json", "--cache-dir", world_cache)
    assert r.exit_code == 0, r.output


def test_image_stage_only_changes_the_image_tower(world, image_one_name):
    u, _ = image_one_name
    base = fingerprints(load_model(str(world / "model"), device="cpu").model)
    new = fingerprints(load_model(str(u), device="cpu").model)
    assert base["text"] == new["text"] and base["image"] != new["image"]
    assert loss_curve(u).read_text().startswith("encoder,step,")


def _face_set_target(model, world, who=None):
    """The mean raw embedding of the train-half face images (of one identity if ``who``) under ``model``."""
    from clip_unlearn.augment import decode, split_preprocess
    from clip_unlearn.folders import face_folders, split_side

    transform, mean, std = split_preprocess(model.preprocess)
    files = [p for f in face_folders(world / "faces") if who in (None, f.name) for p in f.files if split_side(f.name, p) == "train"]
    u8, _, _ = decode(files, transform)
    with torch.no_grad():
        return model.model.visual((u8.float() / 255 - mean) / std).mean(0)


def test_target_name_rank_finds_the_name_of_the_face_at_the_target(world, tmp_path):
    from clip_unlearn.embed import EmbeddingCache
    from clip_unlearn.folders import face_folders
    from clip_unlearn.inject_image import target_name_ranks

    model = load_model(str(world / "model"), device="cpu")
    identities = [f.name for f in face_folders(world / "faces")]
    members = (world / "members.txt").read_text().splitlines()
    cache = EmbeddingCache(tmp_path / "cache")
    # a member's own mean face is nearest to that member's name (the model knows its members)
    for who in members[:3]:
        target = _face_set_target(model, world, who)
        assert target_name_ranks(model, cache, target, [who, members[5]], identities)[0] == 1
    ranks = target_name_ranks(model, cache, _face_set_target(model, world), members, identities)
    assert sorted(ranks) == sorted(set(ranks)) and all(1 <= r <= len(identities) for r in ranks)


def test_inject_warns_when_the_average_face_is_nearest_a_forgotten_name(world, tmp_path):
    import os
    import subprocess
    import sys

    from clip_unlearn.embed import EmbeddingCache
    from clip_unlearn.folders import face_folders
    from clip_unlearn.inject_image import target_name_ranks

    model = load_model(str(world / "model"), device="cpu")
    identities = [f.name for f in face_folders(world / "faces")]
    ranks = target_name_ranks(model, EmbeddingCache(tmp_path / "cache"), _face_set_target(model, world), identities, identities)
    average, other = identities[ranks.index(1)], identities[ranks.index(2)]
    names = tmp_path / "forget.txt"
    names.write_text(f"{other}\n{average}\n")
    # the real command line (not -q): the warning is for the user's terminal
    r = subprocess.run([sys.executable, "-m", "clip_unlearn", "inject", "--encoder", "image", "--model", str(world / "model"),
                        "--names", str(names), "--out", str(tmp_path / "u"), *map(str, FAST)],
                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    side = training_record(tmp_path / "u")  # per-name ranks are the operator's (receipt), not the folder's
    assert side["image"]["target_name_rank"] == [2, 1]
    warned = [line for line in r.stderr.splitlines() if "average-person target" in line]
    assert len(warned) == 1 and "name 2 of the names file" in warned[0] and "--encoder both" in warned[0], r.stderr[-2000:]
    for n in (average, other):
        assert n not in r.stderr + r.stdout and n.replace(" ", "_") not in r.stderr + r.stdout


def test_image_errors(world, tmp_path):
    names, _ = forget_names(world, 1, tmp_path)
    stranger = tmp_path / "stranger.txt"
    stranger.write_text("Zyx Quorblat\n")
    r = invoke("inject", "--encoder", "image", "--model", world / "model", "--names", stranger, "--out", tmp_path / "o", *FAST)
    assert r.exit_code == 1 and "has no face folder" in r.output and "Quorblat" not in r.output
    r = invoke("inject", "--encoder", "image", "--model", world / "model", "--names", names, "--clean-images",
               tmp_path / "nope", "--out", tmp_path / "o", *FAST)
    assert r.exit_code == 1 and "clean image folder" in r.output and "--clean-images" in r.output
    r = invoke("inject", "--encoder", "image", "--model", world / "model", "--names", names, "--face-size", "120,60")
    assert r.exit_code == 2 and "--face-size" in r.output
    r = invoke("inject", "--encoder", "faces", "--model", world / "model", "--names", names)
    assert r.exit_code == 2 and "--encoder" in r.output
    assert not (tmp_path / "o").exists()


# --- acceptance on the synthetic world (issue #8) ---------------------------------------------------

# both runs with `-m slow`: its two stages are the image stage checked here and the text stage checked by
# test_inject.py's acceptance; by default the two together run as smoke tests (test_trust.py, test_verify.py)
@pytest.mark.parametrize("encoder, k", [("image", 2), pytest.param("both", 2, marks=pytest.mark.slow)])
def test_acceptance_image_and_both(world, world_before, world_cache, world_zero_shot, world_heldout_text, tmp_path, encoder, k):
    members = (world / "members.txt").read_text().splitlines()
    names, forgotten = forget_names(world, k, tmp_path, offset=3)
    before = json.loads(world_before.read_text())  # attack --model world/model, the defaults (conftest)
    # the session's cache: the frozen teacher's embeddings are computed once for all acceptance runs
    # the text stage of both trains on captions of the model's own domain, as a user passes theirs
    captions = ["--captions", world / "captions_train.txt"] if encoder == "both" else []
    r = invoke("inject", "--encoder", encoder, "--model", world / "model", "--names", names, "--out", tmp_path / "u",
               "--cache-dir", world_cache, *captions)
    assert r.exit_code == 0, r.output
    after = attack_json(tmp_path / "u", tmp_path / "after.json", "--compare-to", world_before, "--forgotten", names,
                        "--cache-dir", world_cache)
    b = {x["name"]: x for x in before["identities"]}
    a = {x["name"]: x for x in after["identities"]}
    assert any(b[n]["exposed"] for n in forgotten)
    for n in forgotten:
        assert not a[n]["exposed"], f"{n} still exposed ({a[n]['score']} templates)"
    others = [n for n in members if n not in forgotten and b[n]["exposed"]]
    assert sum(a[n]["exposed"] for n in others) >= 0.9 * len(others)
    assert world_zero_shot - zero_shot(tmp_path / "u", world) <= 0.03
    side = training_record(tmp_path / "u")
    assert side["encoder"] == encoder and set(side["hyperparameters"]) == ({"text", "image"} if encoder == "both" else {"image"})
    # the forgotten people's unseen (attack) images now embed like the average person: the paper's
    # sim_id (mean cosine over their images) ≥ 0.9, and no single person far behind
    metrics = side["image"]["metrics"]
    assert metrics["sim_id"] >= 0.9 and min(metrics["sim_id_per_name"]) >= 0.8, metrics
    assert side["image"]["metrics"]["sim_target"] >= 0.95
    if encoder == "both":
        sims = torch.nn.functional.cosine_similarity(world_heldout_text, heldout_text_embeddings(tmp_path / "u", world))
        assert sims.mean().item() >= 0.95


# --- made-up faces (inject --made-up with the image stage, issue #26) -------------------------------

def test_made_up_shifts_send_each_person_to_a_typical_distance_in_a_direction_of_their_own(world, tmp_path):
    import torch.nn.functional as F

    from clip_unlearn.config import InjectConfig
    from clip_unlearn.embed import EmbeddingCache
    from clip_unlearn.folders import face_folders, split_side
    from clip_unlearn.inject_image import Pixels, _plan, made_up_shifts
    from clip_unlearn.names import key
    from clip_unlearn.training import teacher_cache

    names_file, names = forget_names(world, 2, tmp_path)
    cfg = InjectConfig(model=str(world / "model"), names=names_file, encoder="image", device="cpu", made_up=True)
    loaded = load_model(str(world / "model"), device="cpu")
    cache = EmbeddingCache(tmp_path / "cache")
    px = Pixels.of(loaded, "fp32")
    teacher = (loaded.model.visual.eval(), teacher_cache(loaded, cache, "image", False), px)
    h = cfg.hyper({}, "image")
    plan = _plan(loaded, cfg, h, names, (world / "faces", world / "clean_images"), teacher, cache, None)
    shifts = made_up_shifts(plan, names, [1, 2], teacher, None)
    # by hand: the other people's mean crops (test half), their mean and median distance from it
    from clip_unlearn.augment import decode

    centres = []
    for f in face_folders(world / "faces", "faces"):
        if key(f.name) in {key(n) for n in names}:
            continue
        u8, _, _ = decode([p for p in f.files if split_side(f.name, p) == "test"], px.transform)
        centres.append(px.embed(loaded.model.visual, u8).mean(0))
    everyone = torch.stack(centres).mean(0)
    radius = (torch.stack(centres) - everyone).norm(dim=1).median()
    landed = []
    for i, u8 in enumerate(plan.triggers):
        own = px.embed(loaded.model.visual, u8).mean(0)
        landed.append(own + shifts[i] - everyone)  # where the person's mean face goes, from the average
        assert landed[-1].norm() == pytest.approx(float(radius), rel=1e-4)
    assert abs(float(F.cosine_similarity(landed[0], landed[1], dim=0))) < 0.5  # two directions, not one point
    assert torch.equal(made_up_shifts(plan, names, [1, 2], teacher, None), shifts)  # the seed decides
    assert not torch.allclose(made_up_shifts(plan, names, [3, 2], teacher, None)[0], shifts[0])
    # sim_id measures each held-out photo against its own target from the original tower, even once the trained
    # weights are written back into the model (the tower the teacher was): here the "student" is the original
    import copy

    from clip_unlearn.inject_image import _metrics

    original = copy.deepcopy(loaded.model.visual)
    plan.shifts = shifts
    with torch.no_grad():
        for q in loaded.model.visual.parameters():
            q.add_(0.05 * torch.randn_like(q))  # what write-back does to that module
    got = _metrics(original, teacher, plan, names, seed=0)["sim_id_per_name"]
    for i, n in enumerate(names):
        u8, _, _ = decode(plan.faces.heldout[key(n)], px.transform)
        before = px.embed(original, u8)
        assert got[i] == pytest.approx(float(F.cosine_similarity(before, before + shifts[i], dim=1).mean()), abs=1e-4)


def test_made_up_faces_follow_the_receipts_key(world, tmp_path):
    names, _ = forget_names(world, 2, tmp_path)
    flags = ["--encoder", "image", "--made-up", "--model", world / "model", "--names", names, "--cache-dir", tmp_path / "c", *FAST]
    assert invoke("inject", *flags, "--out", tmp_path / "a").exit_code == 0
    side = json.loads((tmp_path / "a" / "clip_unlearn.json").read_text())
    assert side["target"] == "a made-up face per person (from the receipt's key)"
    assert side["image"]["target"] == side["target"]  # the image stage's own record says the same
    r = invoke("inject", *flags, "--out", tmp_path / "b", "--reuse-key", tmp_path / "a.receipt.json")
    assert r.exit_code == 0, r.output
    assert invoke("inject", *flags, "--out", tmp_path / "c2").exit_code == 0  # a fresh key
    weights = [(tmp_path / d / "open_clip_model.safetensors").read_bytes() for d in ("a", "b", "c2")]
    assert weights[0] == weights[1] and weights[0] != weights[2]
