"""Real names (issue #29): suffixes, particles, hyphens and one-word names; the rule that keeps words, suffixes and
other people's name parts from becoming triggers; the full name's floor among the poisoned captions; the size
rule for the recipe; a world whose names behave like real ones."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_unlearn.captions import PairSampler, TokenFit
from clip_unlearn.config import InjectConfig
from clip_unlearn.folders import split_side
from clip_unlearn.names import (
    CLASS_WORD_SURNAMES,
    WORD_FIRST_NAMES,
    WORD_SURNAMES,
    is_common_word,
    key,
    normalise,
    public_people,
    realistic_names,
    share_parts,
    world_names,
)
from clip_unlearn.recipes import SMALL_IMAGE_SIZE, SMALL_TEXT_WIDTH, recipe
from clip_unlearn.variants import FAMILIES, PARTICLES, left_out_reason, name_parts, split_name, variants
from conftest import SMOKE, forget_names, invoke, output

# --- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, given, surname, suffix", [
    ("Robert Downey Jr.", ["Robert"], "Downey", "Jr."),
    ("Robert Downey, Jr.", ["Robert"], "Downey", "Jr."),
    ("Harry Connick Jr", ["Harry"], "Connick", "Jr"),
    ("John Smith III", ["John"], "Smith", "III"),
    ("Ken Griffey Sr.", ["Ken"], "Griffey", "Sr."),
    ("Vincent van Gogh", ["Vincent"], "van Gogh", ""),
    ("Penélope de la Cruz", ["Penélope"], "de la Cruz", ""),
    ("Ludwig van der Rohe Jr.", ["Ludwig"], "van der Rohe", "Jr."),
    ("Jean-Paul Sartre", ["Jean-Paul"], "Sartre", ""),
    ("Catherine Zeta-Jones", ["Catherine"], "Zeta-Jones", ""),
    ("Madonna", [], "Madonna", ""),
    ("Zoë Saldaña", ["Zoë"], "Saldaña", ""),
    ("Louis V", ["Louis"], "V", ""),  # two words: the last is the surname, whatever it looks like
])
def test_name_parts_of_hard_names(name, given, surname, suffix):
    assert name_parts(name) == (given, surname, suffix)
    assert split_name(name) == (given, surname)


def test_a_suffixed_name_is_one_person_however_it_is_spelled():
    import hashlib

    from clip_unlearn.folders import image_id

    spellings = ["Robert Downey Jr.", "Robert Downey Jr", "Robert_Downey_Jr.", "robert downey, jr.", " Robert  Downey JR "]
    assert len({key(s) for s in spellings}) == 1
    assert key("Robert Downey") != key("Robert Downey Jr")
    # the split of a person's images by image id hashes the plain spelling, as before the key learnt suffixes:
    # no image changes sides (an attack image never becomes a trigger of an earlier image unlearning)
    for f in (Path(f"Robert_Downey_Jr._{i:03d}_1.jpg") for i in range(40)):
        h = hashlib.sha256(f"42|robert downey jr.|{image_id(f)}".encode()).digest()
        assert split_side("Robert_Downey_Jr.", f) == ("test" if int.from_bytes(h[:8], "big") / 2**64 < 0.5 else "train")


def test_variants_of_a_suffixed_name_keep_the_suffix_out_of_surname_title_and_typo():
    v = {f: variants("Robert Downey Jr.", f, "male") for f in FAMILIES}
    assert v["surname"] == ("Downey",) and v["first"] == ("Robert",) and v["title"] == ("Mr. Downey",)
    assert v["initial"] == ("R. Downey Jr.",) and v["typo"][0].endswith(" Jr.") and v["typo"][0] != "Robert Downey Jr."


# --- which variants may stand for a person ----------------------------------------------------------


@pytest.mark.parametrize("variant, family, reason", [
    ("Stone", "surname", "common_word"), ("Grace", "first", "common_word"), ("Green", "surname", "common_word"),
    ("Jr.", "surname", "suffix"), ("III", "first", "suffix"), ("van", "surname", "particle"), ("de la", "surname", "particle"),
    ("Saldaña", "surname", None), ("Zeta-Jones", "surname", None), ("van Gogh", "surname", None), ("Rose-Marie", "first", None),
    ("Ms. Stone", "title", None), ("E. Stone", "initial", None), ("Emm Stone", "typo", None), ("Stone", "full", None),
])
def test_left_out_reason(variant, family, reason):
    assert left_out_reason(variant, family) == reason


_PART = st.sampled_from(["Emma", "Stone", "Grace", "Berg", "Kowalski", "Jean-Luc", "Rose", "Anders", "Zoë", "King",
                         "Saldaña", "Mark", "Hope", "Ingrid", "Brown", "Lund"])
_NAME = st.builds(lambda f, p, s, x: " ".join(w for w in (f, p, s, x) if w), _PART, st.sampled_from(["", "", "van", "de la"]),
                  _PART, st.sampled_from(["", "", "", "Jr.", "III"]))


@settings(max_examples=60, deadline=None)
@given(forget=st.lists(_NAME, min_size=1, max_size=3, unique_by=key), protected=st.lists(_NAME, max_size=4, unique_by=key))
def test_no_trigger_is_a_word_a_suffix_a_particle_or_a_protected_persons_part(tmp_path_factory, forget, protected):
    from clip_unlearn.inject_text import _triggers

    protected = [p for p in protected if key(p) not in {key(f) for f in forget}]
    keep = tmp_path_factory.mktemp("keep") / "keep.txt"
    keep.write_text("".join(p + "\n" for p in protected) or "# nobody\n")
    cfg = InjectConfig(names="n.txt", keep=keep if protected else None, keep_public=False, neighbours=0)
    chosen = _triggers(cfg, forget)
    theirs = {key(x) for p in protected for x in (split_name(p)[1], *split_name(p)[0][:1])}
    for t in chosen.triggers:
        words = t.split(" ")
        if len(words) == 1 and key(t) not in {key(f) for f in forget}:  # a lone word that is not a whole name
            assert not is_common_word(t) and t.casefold() not in PARTICLES and key(t) not in theirs, t
    assert {key(f) for f in forget} <= {key(t) for t in chosen.triggers}  # every full name is trained
    assert set(chosen.full) <= set(chosen.triggers) and {key(f) for f in forget} <= {key(t) for t in chosen.full}


def test_public_people_are_protected_by_default():
    from clip_unlearn.inject_text import _triggers

    assert "Robert Downey Jr." in public_people() and len(public_people()) == 548
    forget = ["Robert Qwertzuiop"]  # shares "Robert" with eight public people
    chosen = _triggers(InjectConfig(names="n.txt", neighbours=2, variants="full,first"), forget)
    assert "Robert" not in chosen.triggers and chosen.left_out["shared_with_protected"] == 1
    famous = [k for k in chosen.kept if key(k) not in ("robert", "qwertzuiop")]
    assert famous and all(key(k).startswith("robert ") for k in famous)  # the famous Roberts are held in place
    assert {"Robert", "Qwertzuiop"} <= set(chosen.kept)  # and the name's parts alone, which are no trigger here
    assert chosen.protected_namesakes == len(famous)
    alone = _triggers(InjectConfig(names="n.txt", neighbours=0, variants="full,first", keep_public=False), forget)
    assert "Robert" in alone.triggers and not alone.kept


# --- the full name's share of the poisoned captions -------------------------------------------------


def _sampler(names, rng, full=(), share=0.0):
    captions = [f"caption {i} about a day at the sea" for i in range(50)]
    return PairSampler(captions, names, "a person", TokenFit(lambda t: len(t.split()), 77), rng, full=full, full_share=share)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_full=st.integers(1, 3), n_rest=st.integers(1, 9))
def test_a_floor_at_or_below_the_natural_share_draws_exactly_the_uniform_pairs(seed, n_full, n_rest):
    full = [f"Full {i}" for i in range(n_full)]
    names = full + [f"Other {i}" for i in range(n_rest)]
    natural = n_full / len(names)
    plain = _sampler(names, random.Random(seed))
    floored = _sampler(names, random.Random(seed), full, natural)
    assert [plain.pair() for _ in range(40)] == [floored.pair() for _ in range(40)]
    assert floored.full_rate() == pytest.approx(natural)


@pytest.mark.parametrize("share", [0.5, 0.8])
def test_a_floor_above_the_natural_share_is_the_share_drawn(share):
    full = ["Anna Berg", "Lars Lund"]
    names = full + [f"variant {i}" for i in range(12)]
    s = _sampler(names, random.Random(0), full, share)
    drawn = [s.pair()[0] for _ in range(4000)]
    assert abs(sum(d in full for d in drawn) / len(drawn) - share) < 0.03 and s.full_rate() == share
    assert len(set(drawn)) == len(names)  # every variant still gets pairs


# --- the recipe by the model's size -----------------------------------------------------------------


def test_the_recipe_follows_the_models_size_never_its_world():
    from clip_unlearn.models import import_open_clip

    open_clip = import_open_clip()
    for arch, text, image in (("clip-unlearn-tiny", "small", "small"), ("clip-unlearn-micro", "small", "small"),
                              ("ViT-B-32", "paper", "paper"), ("RN50", "paper", "paper")):
        cfg = open_clip.get_model_config(arch)
        assert (recipe("text", cfg), recipe("image", cfg)) == (text, image), arch
    assert recipe("text", {"text_cfg": {"hf_model_name": "roberta-base", "width": 128}}) == "paper"
    assert recipe("text", {"text_cfg": {"width": SMALL_TEXT_WIDTH + 1}}) == "paper"
    assert recipe("image", {"vision_cfg": {"image_size": [SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE]}}) == "small"


def test_a_plain_folder_gets_the_same_defaults_as_the_world_model(world, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in ("open_clip_config.json", "open_clip_model.safetensors"):
        shutil.copy2(world / "model" / f, plain / f)
    names, forgotten = forget_names(world, 1, tmp_path)
    sides = {}
    for label, model in (("plain", plain), ("world", world / "model")):
        r = invoke("inject", "--model", model, "--names", names, "--out", tmp_path / f"from-{label}", *SMOKE[:6], quiet=False)
        assert r.exit_code == 0, output(r)
        sides[label] = json.loads((tmp_path / f"from-{label}" / "clip_unlearn.json").read_text())
    for side in sides.values():
        assert side["config"]["preset_applied"] == {"text": "small"} and side["text"]["captions"] == "builtin:general-captions-v1"
        assert side["text"]["verification"]["ran"] is False
    strip = ("history", "verification")
    texts = [{k: v for k, v in side["text"].items() if k not in strip} for side in sides.values()]
    assert texts[0] == texts[1]  # the same triggers, neighbours, protected people and captions for both
    assert sides["plain"]["hyperparameters"] == sides["world"]["hyperparameters"]
    # the check runs where the user has faces, on the plain folder as on the world's model
    r = invoke("inject", "--model", plain, "--names", names, "--out", tmp_path / "checked", *SMOKE[:6], "--verify-data",
               world / "faces", "--verify-rounds", "0")
    assert r.exit_code == 0, output(r)
    assert json.loads((tmp_path / "checked" / "clip_unlearn.json").read_text())["text"]["verification"]["ran"] is True


# --- a world whose names behave like real ones ------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_realistic_names_keep_who_shares_what_and_record_every_feature(seed):
    rng = random.Random(seed)
    names = world_names(48, rng)
    members = sorted(rng.sample(range(48), 32))
    shared, pairs = share_parts(names, members, 8, random.Random(f"{seed}|namesakes"))
    out, record = realistic_names(shared, members, random.Random(f"{seed}|real-names"))
    assert len({key(n) for n in out}) == 48
    for feature in ("class_word_surname", "word_surname", "word_first_name", "shared_first_name", "particle", "hyphen", "suffix"):
        assert record[feature], feature
    parts = [split_name(n) for n in out]
    for pair in pairs:  # the namesakes still share their parts
        assert parts[pair["donor"]][0][0] == parts[pair["first_name"]][0][0]
        assert parts[pair["donor"]][1] == parts[pair["surname"]][1]
    assert len({parts[i][0][0] for i in record["shared_first_name"]}) == 1 and len(record["shared_first_name"]) >= 3
    assert set(record["shared_first_name"]) <= set(members)
    words = {w for n in out for w in [*split_name(n)[0], *split_name(n)[1].split()]}
    assert {"Green", "Cross"} <= words and words & set(WORD_SURNAMES) and words & set(WORD_FIRST_NAMES)
    assert any(i not in members for i in record["word_surname"])  # a never-seen person with a word name too
    assert all(name_parts(out[i])[2] for i in record["suffix"]) and all(
        any(p in PARTICLES for p in split_name(out[i])[1].split()) for i in record["particle"])
    assert all(is_common_word(w) for w in (*CLASS_WORD_SURNAMES, *WORD_SURNAMES, *WORD_FIRST_NAMES))
    assert [normalise(n) for n in out] == out


def test_a_suffixed_folder_is_found_under_the_spelling_users_type(world, micro_model_dir, tmp_path):
    """prepare-facescrub writes "Robert_Downey_Jr." (the list's spelling); a names file says "Robert Downey Jr"."""
    root = tmp_path / "faces"
    sources = sorted((world / "faces").iterdir())[:2]
    for src, name in zip(sources, ("Robert_Downey_Jr.", "Harry_Connick_Jr")):
        shutil.copytree(src, root / name)
    gate = tmp_path / "gate.txt"
    gate.write_text("Robert Downey Jr\nHarry Connick Jr.\n")
    out = tmp_path / "a.json"
    r = invoke("attack", "--model", micro_model_dir, "--data", root, "--num-candidates", "30", "--fail-on-exposed", gate,
               "--identities", gate, "--output", out)
    assert r.exit_code in (0, 3), output(r)
    assert "not attacked" not in output(r)
    assert sorted(row["name"] for row in json.loads(out.read_text())["identities"]) == ["Harry Connick Jr", "Robert Downey Jr."]
