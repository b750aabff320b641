"""The synthetic world: drawing, names, determinism, the command, and that the model knows its members."""

from __future__ import annotations

import json
import random

from clip_unlearn.config import PrepareSyntheticConfig
from clip_unlearn.drawing import draw_face, draw_object, sample_identities
from clip_unlearn.models import fingerprints, load_model
from clip_unlearn.names import key, random_full_names, world_names
from clip_unlearn.synthetic import ATTACK_TEMPLATES, EVERYDAY_TEMPLATES, build_world, clean_corpus, load_world
from conftest import invoke

MICRO = ["--identities", "6", "--images-per-identity", "4", "--face-images", "3", "--classes", "4", "--steps", "3",
         "--batch-size", "16", "--min-member-rate", "0", "--max-non-member-rate", "1"]


def test_identities_differ_in_at_least_three_attributes():
    people = sample_identities(48, random.Random(0))
    assert len(set(people)) == 48
    for i, a in enumerate(people):
        for b in people[i + 1:]:
            assert sum(x != y for x, y in zip(vars(a).values(), vars(b).values())) >= 3


def test_drawing_is_deterministic_and_varied():
    who = sample_identities(1, random.Random(1))[0]
    a, b = draw_face(who, random.Random(5)), draw_face(who, random.Random(5))
    assert a.tobytes() == b.tobytes() and a.size == (64, 64)
    assert draw_face(who, random.Random(6)).tobytes() != a.tobytes()
    assert draw_object("red", "star", random.Random(1)).size == (64, 64)


def test_world_names_share_no_part_with_each_other_or_the_candidate_pool():
    names = world_names(48, random.Random(0))
    parts = [p.casefold() for n in names for p in n.split()]
    assert len(parts) == len(set(parts)) == 96
    candidates = random_full_names(5000, random.Random(1))
    assert not set(parts) & {p.casefold() for n in candidates for p in n.split()}


def test_clean_corpus_never_contains_attack_templates():
    corpus = clean_corpus(random.Random(0))
    assert len(corpus) == len(set(corpus)) == 6000
    filled = {t.format("").strip() for t in ATTACK_TEMPLATES}
    assert not filled & set(corpus)
    vocab = {w for c in corpus for w in c.split()}
    assert {"cropped", "black", "white", "colored", "gala", "suit", "dress", "celebrity", "actor"} <= vocab


def test_small_world_knows_its_members(world):
    info = load_world(world)
    assert info["sanity_check"]["member_rate"] >= 0.8
    assert info["sanity_check"]["non_member_rate"] <= 0.1
    members = (world / "members.txt").read_text().splitlines()
    non_members = (world / "non_members.txt").read_text().splitlines()
    assert len(members) == 12 and len(non_members) == 4
    folders = sorted(p.name for p in (world / "faces").iterdir())
    assert folders == sorted(n.replace(" ", "_") for n in members + non_members)
    assert all(len(list((world / "faces" / f).glob("*.png"))) == 40 for f in folders)  # 20 to attack + 20 triggers
    assert len(list((world / "objects").iterdir())) == 36
    assert info["loss_curve"][-1] < info["loss_curve"][0]
    loaded = load_model(str(world / "model"), device="cpu")
    assert loaded.context_length == 32
    assert {key(m) for m in members}.isdisjoint(key(n) for n in non_members)


def test_prepare_synthetic_cli_writes_the_world(tmp_path):
    out = tmp_path / "w"
    result = invoke("prepare-synthetic", "--out", out, *MICRO)
    assert result.exit_code == 0, result.output
    for name in ("model/open_clip_config.json", "model/open_clip_model.safetensors", "model/clip_unlearn.json",
                 "members.txt", "non_members.txt", "captions_train.txt", "captions_heldout.txt", "world.json"):
        assert (out / name).exists(), name
    info = json.loads((out / "world.json").read_text())
    assert info["config"]["identities"] == 6 and "member_rate" in info["sanity_check"]
    assert "members identified" in result.output


def test_same_seed_same_world_and_more_object_images_change_nothing_else(tmp_path):
    cfg = dict(identities=6, images_per_identity=4, face_images=3, classes=4, steps=3, batch_size=16,
               min_member_rate=0.0, max_non_member_rate=1.0, seed=3)
    build_world(PrepareSyntheticConfig(out=tmp_path / "a", object_images=3, **cfg))
    build_world(PrepareSyntheticConfig(out=tmp_path / "b", object_images=5, **cfg))
    fa = fingerprints(load_model(str(tmp_path / "a" / "model"), device="cpu").model)
    fb = fingerprints(load_model(str(tmp_path / "b" / "model"), device="cpu").model)
    assert fa == fb
    for part in ("faces", "clean_images", "objects"):
        pngs = sorted((tmp_path / "a" / part).rglob("*.png"))
        assert pngs and all(p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes() for p in pngs)
    # the larger test set extends each class's images: the first three are the smaller world's
    assert [len(list(d.iterdir())) for d in sorted((tmp_path / "b" / "objects").iterdir())] == [5] * 4
    for part in ("captions_train.txt", "captions_heldout.txt", "members.txt"):
        assert (tmp_path / "a" / part).read_bytes() == (tmp_path / "b" / part).read_bytes()


def test_failed_membership_check_fails_loudly_and_writes_nothing(tmp_path):
    out = tmp_path / "w"
    args = [a for a in MICRO if a not in ("--min-member-rate", "0")]
    result = invoke("prepare-synthetic", "--out", out, *args, "--min-member-rate", "1.0", "--steps", "1")
    assert result.exit_code == 1
    assert "membership check" in result.output and "--steps" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_world_with_namesakes_and_named_by_variants(tmp_path):
    from clip_unlearn.synthetic import member_captions
    from clip_unlearn.variants import shares_part, split_name
    from clip_unlearn.zeroshot import name_words

    cfg = dict(identities=9, images_per_identity=4, face_images=3, classes=4, steps=3, batch_size=16, namesakes=2,
               caption_names="full:3,surname:1,title:1,typo:1", min_member_rate=0.0, max_non_member_rate=1.0, seed=4)
    a = build_world(PrepareSyntheticConfig(out=tmp_path / "a", **cfg))
    b = build_world(PrepareSyntheticConfig(out=tmp_path / "b", **cfg))
    assert fingerprints(load_model(str(tmp_path / "a" / "model"), device="cpu").model) == \
        fingerprints(load_model(str(tmp_path / "b" / "model"), device="cpu").model)
    members = (tmp_path / "a" / "members.txt").read_text().splitlines()
    assert len(a["namesakes"]) == 2 and a["caption_names"] == {"full": 3, "surname": 1, "title": 1, "typo": 1}
    for pair in a["namesakes"]:
        assert {pair["donor"], pair["first_name"], pair["surname"]} <= set(members)
        assert split_name(pair["first_name"])[0] == split_name(pair["donor"])[0]
        assert split_name(pair["surname"])[1] == split_name(pair["donor"])[1]
    assert set(a["sanity_check"]["families"]) == {"lower", "surname", "first", "title", "initial", "typo"}
    assert any("gender" in v for v in a["attributes"].values())
    assert a["namesakes"] == b["namesakes"] and a["real_names"] == b["real_names"]
    # names that behave like real ones (the default): a class word as a surname ("green circle" is a class here),
    # a first name three members share, word names; the bystanders are members who share a part with someone
    real = a["real_names"]
    assert real["class_word_surname"] and all(n.split(" ")[-1] == "Green" for n in real["class_word_surname"])
    assert len(real["shared_first_name"]) >= 2 and real["word_surname"] and real["word_first_name"]
    names = [*members, *(tmp_path / "a" / "non_members.txt").read_text().splitlines()]
    assert set(a["bystanders"]) <= set(members) and all(any(shares_part(m, o) for o in names if o != m) for m in a["bystanders"])
    heldout = (tmp_path / "a" / "captions_heldout.txt").read_text().splitlines()
    for word in {w for n in names for w in name_words(n)} - {"green"}:  # the class word has captions of its own
        assert sum(f" {word} " in f" {c} " for c in heldout) >= 6, word
    # the rates: per template, the full name 3 times, the surname and a typo once, a title twice (two
    # strings without a gender, so that every member has as many captions)
    caps = member_captions("Alessio Blanes", {"full": 3, "surname": 1, "title": 1, "typo": 1}, "male", ["Alessio Blanes"])
    assert caps.count("portrait of Alessio Blanes.") == 3 and caps.count("portrait of Blanes.") == 1
    assert caps.count("portrait of Mr. Blanes.") == 2 and len(caps) == 7 * len(ATTACK_TEMPLATES + EVERYDAY_TEMPLATES)
    unknown = member_captions("Alessio Blanes", {"full": 3, "surname": 1, "title": 1, "typo": 1}, None, ["Alessio Blanes"])
    assert len(unknown) == len(caps) and unknown.count("portrait of Ms. Blanes.") == 1
    # no namesakes, full names only: the captions of worlds built before variants existed
    assert member_captions("Alessio Blanes", {"full": 1}, None, []) == [t.format("Alessio Blanes") for t in
                                                                      EVERYDAY_TEMPLATES + ATTACK_TEMPLATES]


def test_namesakes_and_caption_names_are_checked(tmp_path):
    r = invoke("prepare-synthetic", "--out", tmp_path / "w", *MICRO, "--namesakes", "2")
    assert r.exit_code == 2 and "--namesakes" in r.output and "three members per pair" in r.output
    for bad in ("surname:2", "full:1,nick:2", "full:x", "full:1,full:2"):
        r = invoke("prepare-synthetic", "--out", tmp_path / "w", *MICRO, "--caption-names", bad)
        assert r.exit_code == 2 and "--caption-names" in r.output, bad
    assert not (tmp_path / "w").exists()
