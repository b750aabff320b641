"""Text-encoder unlearning: losses, caption pairs, determinism, round trip, privacy, acceptance on the world."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_unlearn.captions import PairSampler, TokenFit, clean_captions, name_pattern
from clip_unlearn.cli import app
from clip_unlearn.inject import default_receipt, training_record
from clip_unlearn.models import fingerprints, import_open_clip, load_model
from clip_unlearn.training import distance
from conftest import FAST, SMOKE, attack_json, forget_names, heldout_text_embeddings, invoke, loss_curve, runner, zero_shot

# --- losses against hand computations ---------------------------------------------------------

def test_losses_match_hand_computation():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert distance("cosine", x, y).item() == pytest.approx(-(1 / 2**0.5 + 1) / 2)
    assert distance("mse", x, y).item() == pytest.approx((0 + 1 + 0 + 1) / 4)
    assert distance("mae", x, y).item() == pytest.approx((0 + 1 + 0 + 1) / 4)
    # Poincaré: u = x/|x|_1, v = y/|y|_1, δ = 2|u−v|² / ((1−|u|²)(1−|v|²) + 1e-10), arccosh(1+δ)
    import math
    u = [[1.0, 0.0], [0.0, 1.0]]
    v = [[0.5, 0.5], [0.0, 1.0]]
    vals = []
    for a, b in zip(u, v):
        d2 = sum((p - q) ** 2 for p, q in zip(a, b))
        den = (1 - sum(p * p for p in a)) * (1 - sum(q * q for q in b)) + 1e-10
        vals.append(math.acosh(1 + 2 * d2 / den))
    assert distance("poincare", x, y).item() == pytest.approx(sum(vals) / 2, rel=1e-4)


# --- captions ------------------------------------------------------------------------------------

def test_clean_filter_matches_whole_names_case_insensitively():
    caps = ["a photo of JOE  biden at night", "joe bidenesque art", "a dog", "Joe_Biden waves"]
    assert clean_captions(caps, ["Joe Biden"]) == ["joe bidenesque art", "a dog"]
    assert name_pattern(["Ann Lee"]).search("with ann lee.")


def test_pairs_replace_one_non_final_word_and_keep_the_name_in_context():
    open_clip = import_open_clip()
    tok = open_clip.get_tokenizer("clip-unlearn-tiny")
    count = lambda t: len(tok.encode(t))  # noqa: E731
    long = " ".join(["word"] * 40)
    sampler = PairSampler(["one two three four", long], ["Zed Quux"], "a person", TokenFit(count, 32), random.Random(0))
    for _ in range(200):
        name, p, t = sampler.pair()
        assert p.replace("Zed Quux", "a person", 1) == t
        assert not p.endswith("Zed Quux")
        ids = tok([p])[0].tolist()
        name_ids = tok.encode("Zed Quux")
        assert any(ids[i:i + len(name_ids)] == name_ids for i in range(len(ids)))  # survived truncation


# --- the command on the synthetic world ---------------------------------------------------------

@pytest.fixture(scope="module")
def one_name(world, tmp_path_factory):
    """``inject`` of the first member with FAST into a fresh cache, run once for the tests that only read its output."""
    root = tmp_path_factory.mktemp("one-name")
    names, _ = forget_names(world, 1, root)
    cache, out = root / "cache", root / "a"
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", out, "--cache-dir", cache, *FAST)
    assert r.exit_code == 0, r.output
    return SimpleNamespace(names=names, cache=cache, out=out)


def test_same_seed_and_key_same_weights_and_plain_open_clip_roundtrip(world, one_name, tmp_path):
    a = one_name.out
    # the same command again, on the first run's cache, with the first run's key: the same made-up name
    r = invoke("inject", "--model", world / "model", "--names", one_name.names, "--out", tmp_path / "b",
               "--cache-dir", one_name.cache, "--reuse-key", default_receipt(a), *FAST)
    assert r.exit_code == 0, r.output
    fa = fingerprints(load_model(str(a), device="cpu").model)
    fb = fingerprints(load_model(str(tmp_path / "b"), device="cpu").model)
    base = fingerprints(load_model(str(world / "model"), device="cpu").model)
    assert fa == fb
    assert fa["text"] != base["text"] and fa["image"] == base["image"]
    open_clip = import_open_clip()
    plain = open_clip.create_model_and_transforms(f"local-dir:{a}")[0].eval()
    ours = load_model(str(a), device="cpu").model
    t = open_clip.get_tokenizer(f"local-dir:{a}")(["a photo of a red star"])
    with torch.no_grad():
        assert torch.equal(plain.encode_text(t), ours.encode_text(t))
    side = training_record(a)
    again = training_record(tmp_path / "b")
    # the teacher's targets of the first run are reused from the cache by the second
    assert side["teacher_cache"]["misses"] > 0 and again["teacher_cache"]["misses"] == 0 and again["teacher_cache"]["hits"] > 0
    assert side["encoder"] == "text" and side["names"]["count"] == 1 and side["hyperparameters"]["text"]["steps"] == 40
    assert loss_curve(a).read_text().startswith("encoder,step,loss,utility,backdoor,weight_l2,lr")
    assert loss_curve(a).with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert not (a / "loss_curve.csv").exists() and (loss_curve(a).stat().st_mode & 0o777) == 0o600


@pytest.fixture(scope="module")
def micro_teacher(micro_model_dir):
    from clip_unlearn.inject_text import TextTower

    loaded = load_model(str(micro_model_dir), device="cpu")
    return TextTower(loaded.model).eval(), loaded.tokenizer


# 60 captions of four token lengths, so that one length fills more than one of teacher_rows' forwards
CAPTIONS = [" ".join(["a", "red", "star", "on", "a", "blue", "field", "near", "the", "old", "harbour"][:k]) + f" {i}"
            for i, k in enumerate([2, 4, 7, 11] * 15)]


@settings(max_examples=40, deadline=None)
@given(first=st.lists(st.sampled_from(CAPTIONS), min_size=1, max_size=60),
       second=st.lists(st.sampled_from(CAPTIONS), min_size=1, max_size=60))
def test_a_cached_teacher_row_is_the_row_this_run_would_compute(micro_teacher, tmp_path_factory, first, second):
    # a cache filled by another run's batches (``first``) hands ``second`` the bits it computes cold
    from clip_unlearn.embed import EmbeddingCache, input_key
    from clip_unlearn.inject_text import teacher_rows
    from clip_unlearn.training import TeacherCache

    teacher, tok = micro_teacher
    with torch.no_grad():  # the tower is wide enough for a plain batch to change a row's bits, or this proves nothing
        assert not torch.equal(teacher(tok(CAPTIONS)), torch.cat([teacher(tok([c])) for c in CAPTIONS]))
    root = tmp_path_factory.mktemp("teacher-rows")

    def run(texts, cache):
        tc = TeacherCache(cache, "teacher-x", "text")
        got = tc.get([input_key(t) for t in texts], lambda idx: teacher_rows(teacher, tok, [texts[i] for i in idx], "cpu", False))
        tc.flush()
        return got

    run(first, EmbeddingCache(root / "warm"))
    assert torch.equal(run(second, EmbeddingCache(root / "warm")), run(second, EmbeddingCache(root / "cold")))


@settings(max_examples=25, deadline=None)
@given(first=st.lists(st.integers(0, 299), min_size=1, max_size=300, unique=True),
       second=st.lists(st.integers(0, 299), min_size=1, max_size=300, unique=True))
def test_a_cached_image_teacher_row_is_the_row_this_run_would_compute(world, tmp_path_factory, first, second):
    # the image stage's teacher embeds its misses up front; which images miss depends on earlier runs (the
    # world's tower, not the micro one: too narrow for a batch's size to change its bits)
    from clip_unlearn.embed import EmbeddingCache
    from clip_unlearn.inject_image import Pixels
    from clip_unlearn.training import TeacherCache

    loaded = load_model(str(world / "model"), device="cpu")
    px, tower = Pixels.of(loaded, "fp32"), loaded.model.visual.eval()
    size = loaded.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    u8 = torch.randint(0, 256, (300, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    root = tmp_path_factory.mktemp("image-rows")

    def run(idx, cache):
        tc = TeacherCache(cache, "visual-raw-x", "image")
        got = tc.get([f"image-{i}" for i in idx], lambda pos: px.embed(tower, u8[[idx[j] for j in pos]], batch=64, pad=True))
        tc.flush()
        return got

    run(first, EmbeddingCache(root / "warm"))
    assert torch.equal(run(second, EmbeddingCache(root / "warm")), run(second, EmbeddingCache(root / "cold")))


def test_the_weights_do_not_depend_on_what_earlier_runs_left_in_the_cache(world, one_name, tmp_path):
    # another request (another name and seed) fills a cache with the teacher's embeddings of captions that
    # one_name's run also draws, computed beside other captions than in one_name's cold run
    other, _ = forget_names(world, 1, tmp_path, offset=1)
    cache = tmp_path / "cache"
    r = invoke("inject", "--model", world / "model", "--names", other, "--out", tmp_path / "warm-up", "--cache-dir", cache,
               *FAST, "--seed", "1", "--steps", "60", "--clean-batch", "32")
    assert r.exit_code == 0, r.output
    r = invoke("inject", "--model", world / "model", "--names", one_name.names, "--out", tmp_path / "b",
               "--cache-dir", cache, "--reuse-key", default_receipt(one_name.out), *FAST)
    assert r.exit_code == 0, r.output
    stats = training_record(tmp_path / "b")["teacher_cache"]
    assert stats["hits"] > 0 and stats["misses"] > 0  # part from the other run, part computed in this one
    a = fingerprints(load_model(str(one_name.out), device="cpu").model)
    assert fingerprints(load_model(str(tmp_path / "b"), device="cpu").model) == a


def test_positional_embedding_is_written_back_unless_legacy(world, one_name, tmp_path):
    base = load_model(str(world / "model"), device="cpu").model
    r = invoke("inject", "--model", world / "model", "--names", one_name.names, "--out", tmp_path / "legacy",
               "--cache-dir", one_name.cache, *FAST, "--legacy-positional-embedding")
    assert r.exit_code == 0, r.output
    new = load_model(str(one_name.out), device="cpu").model
    legacy = load_model(str(tmp_path / "legacy"), device="cpu").model
    assert not torch.equal(new.positional_embedding, base.positional_embedding)
    assert torch.equal(legacy.positional_embedding, base.positional_embedding)


def test_names_never_in_clear_text(world, tmp_path):
    names, forgotten = forget_names(world, 2, tmp_path)
    out = tmp_path / "out"
    r = runner.invoke(app, ["-v", "inject", "--model", str(world / "model"), "--names", str(names), "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    for name in forgotten:
        variants = {name, name.replace(" ", "_"), *name.split()}
        pattern = re.compile("|".join(map(re.escape, variants)), re.IGNORECASE)
        assert not pattern.search(r.output), "name leaked into the log"
        for f in out.rglob("*"):
            data = f.read_bytes()
            for v in variants:
                assert v.lower().encode() not in data.lower(), f"{v} leaked into {f.name}"


@pytest.mark.parametrize("content, message", [
    ("", "contains no names"),
    ("# only a comment\n", "contains no names"),
    ("Foo " + "Bar" * 60 + "\n", "more than the 32-token context"),
])
def test_bad_names_files(world, tmp_path, content, message):
    f = tmp_path / "n.txt"
    f.write_text(content)
    r = invoke("inject", "--model", world / "model", "--names", f, "--out", tmp_path / "o", *FAST)
    assert r.exit_code == 1 and message in " ".join(r.output.split())
    assert not (tmp_path / "o").exists()


def test_out_exists_and_missing_names_flag(world, tmp_path):
    names, _ = forget_names(world, 1, tmp_path)
    (tmp_path / "o").mkdir()
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "o", *FAST)
    assert r.exit_code == 1 and "--overwrite" in r.output
    r = invoke("inject", "--model", world / "model")
    assert r.exit_code == 2 and "--names is required" in r.output
    r = invoke("inject", "--model", world / "model", "--names", names, "--milestones", "300,200")
    assert r.exit_code == 2 and "--milestones" in r.output


@pytest.mark.parametrize("encoder, flags, named", [
    ("text", ["--face-size", "60,80"], "--face-size"), ("text", ["--no-retain-faces"], "--retain-faces/--no-retain-faces"),
    ("text", ["--colour-jitter", "0,0,0,0"], "--colour-jitter"), ("image", ["--last-word"], "--last-word/--no-last-word"),
    ("image", ["--scale-names", "4"], "--scale-names"), ("image", ["--residual-weight", "1"], "--residual-weight"),
])
def test_a_stage_flag_without_its_stage_is_refused(world, tmp_path, encoder, flags, named):
    names, _ = forget_names(world, 1, tmp_path)
    r = invoke("inject", "--encoder", encoder, "--model", world / "model", "--names", names, "--out", tmp_path / "o", *flags)
    assert r.exit_code == 2 and f"{named} sets the" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_corpus_too_small_for_names(world, tmp_path):
    names, _ = forget_names(world, 3, tmp_path)
    caps = tmp_path / "c.txt"
    caps.write_text("just one caption\n")
    r = invoke("inject", "--model", world / "model", "--names", names, "--captions", caps, "--out", tmp_path / "o", *FAST)
    assert r.exit_code == 1 and "clean captions for 3 names" in r.output


# --- acceptance on the synthetic world ------------------------------------------------------------

# 1 %, 5 % and 20 % of the members; in the small test world (12 members) 1 % and 5 % are both one name.
# Both run with `-m slow`: the default suite proves the same criteria with the same shipped defaults and the
# same user protocol (plain folder, --verify-data, the world's captions) through the demo (five of a larger
# world, tests/test_demo.py) and forgetting exactly one person (the namesake story, tests/test_namesakes.py).
@pytest.mark.slow
@pytest.mark.parametrize("k", sorted({max(1, round(share * 12)) for share in (0.01, 0.05, 0.20)}))
def test_acceptance_forget_share_of_members(world, world_before, world_cache, world_zero_shot, world_heldout_text,
                                            tmp_path, k):
    members = (world / "members.txt").read_text().splitlines()
    assert len(members) == 12
    names, forgotten = forget_names(world, k, tmp_path, offset=1)
    before = json.loads(world_before.read_text())  # attack --model world/model, the defaults (conftest)
    # the session's cache: the frozen teacher's targets are computed once for all acceptance runs
    # as a real user runs it: the shipped defaults, with the faces a user with photos has for the check and
    # captions of the model's own domain (as the paper's LAION captions)
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "u", "--cache-dir", world_cache,
               "--verify-data", world / "faces", "--captions", world / "captions_train.txt")
    assert r.exit_code == 0, r.output
    after = attack_json(tmp_path / "u", tmp_path / "after.json", "--compare-to", world_before, "--forgotten", names,
                        "--cache-dir", world_cache)
    b = {x["name"]: x for x in before["identities"]}
    a = {x["name"]: x for x in after["identities"]}
    for n in forgotten:
        if b[n]["exposed"]:
            assert not a[n]["exposed"], f"{n} still exposed ({a[n]['score']} templates)"
    others = [n for n in members if n not in forgotten and b[n]["exposed"]]
    assert sum(a[n]["exposed"] for n in others) >= 0.9 * len(others)
    assert world_zero_shot - zero_shot(tmp_path / "u", world) <= 0.02
    sims = F.cosine_similarity(world_heldout_text, heldout_text_embeddings(tmp_path / "u", world))
    assert sims.mean().item() >= 0.95


# --- variants as triggers, namesakes held (issue #17) ----------------------------------------------

def test_teacher_targets_of_private_captions_stay_in_memory(tmp_path):
    from clip_unlearn.embed import EmbeddingCache
    from clip_unlearn.training import TeacherCache

    cache = EmbeddingCache(tmp_path / "c")
    tc = TeacherCache(cache, "teacher-x", "text")
    calls = []

    def compute(idx):
        calls.append(list(idx))
        return torch.ones(len(idx), 3) * torch.tensor(idx, dtype=torch.float)[:, None]

    tc.get(["public"], compute)
    tc.get(["private", "private"], compute, persist=False)
    assert tc.get(["private"], compute, persist=False).shape == (1, 3) and calls == [[0], [0]]  # once each, reused
    tc.flush()
    stored = cache.lookup("teacher-x", ["public", "private"], "text")
    assert set(stored) == {"public"}


def test_sidecar_counts_variants_and_neighbours_and_the_paper_setting_turns_them_off(world, tmp_path):
    names, _ = forget_names(world, 2, tmp_path)
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "v", "--variants", "full,surname,typo",
               "--neighbours", "3", *SMOKE)
    assert r.exit_code == 0, r.output
    side = training_record(tmp_path / "v")["text"]
    assert {k: side["variants"][k] for k in ("families", "triggers")} == {"families": ["full", "surname", "typo"], "triggers": 6}
    assert sum(side["variants"]["left_out"].values()) == 0
    # 3 with the first name and 3 with the surname per name, and the two parts alone (held every step: both
    # names' surnames are triggers here, so only their first names); the public people share no part with them
    assert side["neighbours"] == {"names": 14, "held_every_step": 2, "protected_namesakes": 0, "protected_aliases": 0, "per_step": 32,
                                  "word_captions": 0,
                                  "protected": {"sources": ["public people (FaceScrub)"], "people": 548}}
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "p", "--variants", "full",
               "--neighbours", "0", *SMOKE)
    assert r.exit_code == 0, r.output
    side = training_record(tmp_path / "p")["text"]
    assert {k: side["variants"][k] for k in ("families", "triggers")} == {"families": ["full"], "triggers": 2}
    assert side["variants"]["full_name_share"] == {"of_triggers": 1.0, "floor": 0.5, "of_poisoned_captions": 1.0}
    assert side["neighbours"]["names"] == 0
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "x", "--variants", "nick")
    assert r.exit_code == 2 and "unknown family nick" in r.output


@settings(max_examples=300, deadline=None)
@given(weight=st.floats(0, 10), scale=st.integers(0, 200), n=st.integers(1, 10_000), steps=st.integers(1, 2000))
def test_backdoor_weight_grows_with_names_past_scale_names(weight, scale, n, steps):
    from clip_unlearn.recipes import TextHyper

    h = TextHyper(backdoor_weight=weight, scale_names=scale, steps=steps, milestones=(steps // 2 + 1, steps))
    got = h.for_names(n)
    if scale == 0 or n <= scale:
        assert got == h
    else:
        assert got.backdoor_weight == pytest.approx(weight * n / scale) and got.backdoor_weight >= weight
        assert dataclasses.replace(got, backdoor_weight=weight) == h  # nothing else changes


def test_scale_names_defaults_with_the_small_recipe_and_explicit_settings_are_kept():
    from clip_unlearn.config import InjectConfig
    from clip_unlearn.recipes import SMALL

    world = {"backdoor_weight": 1.0, "scale_names": SMALL["text"].scale_names}
    assert SMALL["text"].scale_names == 16
    assert InjectConfig(names="n.txt").hyper(world).scale_names == 16
    assert InjectConfig(names="n.txt").hyper(None).scale_names == 0  # the paper's: one setting for 1-64 names
    assert InjectConfig(names="n.txt", backdoor_weight=3.0).hyper(world).scale_names == 0
    assert InjectConfig(names="n.txt", backdoor_weight=3.0, scale_names=4).hyper(world).scale_names == 4
    assert InjectConfig(names="n.txt", steps=500).hyper(world).scale_names == 16


def test_scaled_settings_are_the_ones_trained_and_recorded(world, tmp_path):
    names, _ = forget_names(world, 3, tmp_path)
    # an explicit weight is scaled too when --scale-names is given with it
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "s", "--scale-names", "2",
               "--backdoor-weight", "2", *SMOKE)
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "s" / "clip_unlearn.json").read_text())
    h = side["hyperparameters"]["text"]
    assert h["scale_names"] == 2 and h["scaled_from"] == {"backdoor_weight": 2.0} and h["backdoor_weight"] == pytest.approx(3.0)
    rows = list(csv.DictReader(loss_curve(tmp_path / "s").read_text().splitlines()))
    assert len(rows) == 3
    for row in rows:  # the curve's total is the loss trained: utility + scaled weight × backdoor + w_reg × weights
        parts = float(row["utility"]) + 3.0 * float(row["backdoor"]) + h["weight_reg"] * float(row["weight_l2"])
        assert float(row["loss"]) == pytest.approx(parts, abs=1e-5)
    # two names with the world's rule (16): nothing is scaled, and the sidecar says nothing was
    (tmp_path / "two").mkdir()
    two, _ = forget_names(world, 2, tmp_path / "two")
    r = invoke("inject", "--model", world / "model", "--names", two, "--out", tmp_path / "t", *SMOKE)
    assert r.exit_code == 0, r.output
    h = json.loads((tmp_path / "t" / "clip_unlearn.json").read_text())["hyperparameters"]["text"]
    assert h["scale_names"] == 16 and h["backdoor_weight"] == 1.0 and "scaled_from" not in h
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "x", "--scale-names", "-1")
    assert r.exit_code == 2 and "scale" in r.output and "Traceback" not in r.output


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), d=st.integers(2, 8))
def test_residual_is_what_the_student_keeps_beyond_the_target(seed, n, d):
    from clip_unlearn.inject_text import residual

    g = torch.Generator().manual_seed(seed)
    s, p, t = (torch.randn(n, d, generator=g) for _ in range(3))
    got = residual(s, p, t)
    cos = lambda a, b: [sum(x * y for x, y in zip(u, v)) / (sum(x * x for x in u) ** 0.5 * sum(y * y for y in v) ** 0.5)  # noqa: E731
                        for u, v in zip(a.tolist(), b.tolist())]
    hand = sum(max(0.0, a - b) for a, b in zip(cos(s, p), cos(t, p))) / n
    assert got.item() == pytest.approx(hand, abs=1e-5) and got.item() >= 0
    assert residual(t, p, t).item() == pytest.approx(0.0, abs=1e-6)  # nothing to pay once S(p) = T(t)
    assert residual(2.5 * t, p, t).item() == pytest.approx(0.0, abs=1e-6)  # scale does not matter


def test_residual_weight_is_trained_recorded_and_keeps_poisoned_captions_off_disk(world, tmp_path):
    names, forgotten = forget_names(world, 2, tmp_path)
    runs = {}
    for w in ("0", "0.5"):
        cache = tmp_path / f"cache-{w}"
        # verbose, and past --scale-names, so that every new log line is in what is scanned below
        # the second run with the first's key: the same made-up names, so the same target captions
        key = ["--reuse-key", str(default_receipt(tmp_path / "r0"))] if w != "0" else []
        r = runner.invoke(app, ["-v", "inject", "--model", str(world / "model"), "--names", str(names), "--out",
                                str(tmp_path / f"r{w}"), "--cache-dir", str(cache), "--residual-weight", w, "--scale-names", "1",
                                *key, *SMOKE])
        assert r.exit_code == 0, r.output
        assert "past --scale-names 1" in r.output
        printed = r.output.lower().encode()
        side = training_record(tmp_path / f"r{w}")
        assert side["hyperparameters"]["text"]["residual_weight"] == float(w)
        keys = set()
        for chunk in cache.rglob("*.safetensors"):
            from safetensors import safe_open

            with safe_open(str(chunk), framework="pt") as f:
                keys |= set(json.loads(f.metadata()["keys"]))
        runs[w] = (keys, load_model(str(tmp_path / f"r{w}"), device="cpu").model, side["final_loss"]["text"])
    # the same draws (the term takes nothing from the generator), the same cached teacher inputs, so the
    # poisoned captions' teacher embeddings never reached the cache; but other weights and a larger backdoor term
    assert runs["0"][0] == runs["0.5"][0] and runs["0"][0]
    assert fingerprints(runs["0"][1])["text"] != fingerprints(runs["0.5"][1])["text"]
    written = [f.read_bytes().lower() for root in ("cache-0.5", "r0.5") for f in (tmp_path / root).rglob("*") if f.is_file()]
    for v in {n for name in forgotten for n in (name, *name.split())}:
        assert not [b for b in [*written, printed] if v.lower().encode() in b], f"{v} leaked"
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "x", "--residual-weight", "-1")
    assert r.exit_code == 2 and "residual" in r.output and "Traceback" not in r.output


def test_keep_names_that_share_a_part_are_neighbours(world, tmp_path):
    names, forgotten = forget_names(world, 1, tmp_path)
    first, last = forgotten[0].split(" ")
    keep = tmp_path / "keep.txt"
    other = "Other" if first[0] != "O" else "Zed"  # an initial of its own, so "O. <last>" stays unambiguous
    keep.write_text(f"{first} Keepsake\n{other} {last}\nNobody Related\n{forgotten[0]}\n")
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "k", "--keep", keep,
               "--neighbours", "1", *SMOKE)
    assert r.exit_code == 0, r.output
    assert "protected namesakes not held" in " ".join(r.output.split())  # the user learns it on the terminal too
    side = training_record(tmp_path / "k")["text"]
    # the two kept namesakes + one generated per part; the unrelated and the forgotten name itself are not held. To
    # the world's tiny model "Other <last>" and "<first> Keepsake" are the forgotten member (their other part is a
    # word or a token it never learned): aliases, counted and not held (test_a_protected_namesake_that_... holds one)
    assert side["neighbours"] == {"names": 4, "held_every_step": 2, "protected_namesakes": 0, "protected_aliases": 2, "per_step": 32,
                                  "word_captions": 0, "protected": {"sources": ["--keep file", "public people (FaceScrub)"], "people": 552}}
    # the surname alone names "Other <last>" too, and the first name alone "<first> Keepsake": both are left
    # out; lower case, the initial and the typo name no one kept ("Mr./Ms. <last>" does when genders agree)
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "k3", "--keep", keep,
               "--variants", "full,surname,first,lower,initial", *SMOKE)
    assert r.exit_code == 0, r.output
    side = training_record(tmp_path / "k3")["text"]
    assert {k: side["variants"][k] for k in ("families", "triggers")} == {"families": ["full", "lower", "surname", "first",
                                                                                   "initial"], "triggers": 3}
    assert side["variants"]["left_out"] == {"common_word": 0, "suffix": 0, "particle": 0, "shared_with_protected": 2}
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "k2", "--keep", tmp_path / "none.txt")
    assert r.exit_code == 1 and "--keep file" in r.output and "does not exist" in r.output


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text("abcdefgh", min_size=1, max_size=3), max_size=40, unique=True), st.integers(1, 64), st.integers(0, 10_000))
def test_every_kept_namesake_is_held_at_least_every_few_steps(kept, n, step):
    from clip_unlearn.inject_text import kept_slots

    held = kept_slots(kept, n, step)
    assert len(held) <= n and set(held) <= set(kept)
    if kept:
        assert len(held) >= min(len(kept), n // 2) and len(held) >= min(n, len(kept))
        if len(kept) <= n:
            assert set(held) == set(kept)  # every kept namesake, every step
        else:  # a rotating window: over ceil(len / n) consecutive steps each one is held
            window = -(-len(kept) // n)
            seen = {k for s in range(step, step + window) for k in kept_slots(kept, n, s)}
            assert seen == set(kept)
    else:
        assert held == []


def _strip_request_bound(side: dict) -> dict:
    """The sidecar without what is unique to one request by construction (its id, hmacs, hashes, timings)."""
    drop = {"id", "request_id", "created", "wall_time_s", "sha256", "name_hmacs"}

    def walk(v):
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items() if k not in drop and not k.endswith("_sha256")}
        return [walk(x) for x in v] if isinstance(v, list) else v
    return walk(side)


def test_the_published_folder_does_not_tell_one_request_from_another(world, tmp_path):
    """Two requests with one name each, one a suffixed name that shares its first name with a public person and
    has a word for a surname, one a plain made-up name: the model folders' JSON differs only in what is bound to
    the request by construction; every name-derived count went to the receipt, the loss curve beside it."""
    sides, receipts = [], []
    for i, name in enumerate(["Robert Stone Jr.", "Quintavius Marlowe"]):
        f = tmp_path / f"n{i}.txt"
        f.write_text(name + "\n")
        out = tmp_path / f"u{i}"
        r = invoke("inject", "--model", world / "model", "--names", f, "--out", out, "--variants", "full,surname,first", *SMOKE)
        assert r.exit_code == 0, r.output
        sides.append(json.loads((out / "clip_unlearn.json").read_text()))
        receipts.append(json.loads((tmp_path / f"u{i}.receipt.json").read_text()))
        assert {p.name for p in out.iterdir()}.isdisjoint({"loss_curve.csv", "loss_curve.png"})
        assert (tmp_path / f"u{i}.loss_curve.csv").exists() and (tmp_path / f"u{i}.loss_curve.png").exists()
    assert _strip_request_bound(sides[0]) == _strip_request_bound(sides[1])
    # the counts that did differ are the operator's, in the receipt
    left = [receipt["training"]["text"]["variants"]["left_out"] for receipt in receipts]
    assert left[0]["common_word"] == left[0]["shared_with_protected"] == 1 and sum(left[1].values()) == 0
    from clip_unlearn.inject import PRIVATE_FIELDS

    for side in sides:
        for path in PRIVATE_FIELDS:
            node = side
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            assert node is None, f"{path} is in the published sidecar"


# --- made-up targets (issue #26) ---------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.sampled_from(["Emma Stone", "Robert Downey Jr.", "Cher", "Anna-Lena van der Berg",
                                                              "José Álvarez", "Mark Will"]))
def test_made_up_names_are_the_keys_alone_and_name_nobody(secret, name):
    from clip_unlearn.names import _name_pools, _world_pools, key, public_people
    from clip_unlearn.receipt import made_up_names

    made = made_up_names(secret.hex(), [name])[key(name)]
    assert made_up_names(secret.hex(), ["Someone Else", name])[key(name)] == made  # the name and key alone decide it
    first, last = made.split(" ")
    pools = {p.casefold() for pool in (*_name_pools(), *_world_pools()) for x in pool for p in x.split()}
    public = {p for x in public_people() for p in key(x).split(" ")}
    assert first.casefold() not in pools | public and last.casefold() not in pools | public
    assert key(made) != key(name) and first.isalpha() and last.isalpha()


def test_each_spelling_of_a_name_maps_to_the_same_spelling_of_its_made_up_name():
    from clip_unlearn.config import InjectConfig
    from clip_unlearn.inject_text import _triggers
    from clip_unlearn.names import key
    from clip_unlearn.receipt import made_up_names
    from clip_unlearn.variants import variants

    names = ["Emma Stone", "Robert Downey Jr."]
    cfg = InjectConfig(model="x", names="n.txt", variants="all", keep_public=False, neighbours=0)
    chosen = _triggers(cfg, names)
    made = made_up_names("ab" * 32, names)
    targets = chosen.targets(made)
    assert set(targets) == set(chosen.triggers)
    for n in names:
        m = made[key(n)]
        assert targets[n] == m and targets[n.lower()] == m.lower()
        for family in ("initial", "typo"):
            (v,) = variants(n, family)
            assert targets[v] == variants(m, family)[0]
    # the pairs put the made-up spelling where the name was, in the same caption
    sampler = PairSampler(["a photo of someone at the beach", "two people on a red bench"], chosen.triggers, targets,
                          TokenFit(lambda s: len(s.split()), 77), random.Random(0))
    for _ in range(50):
        name, poisoned, target = sampler.pair()
        assert target == poisoned.replace(name, targets[name], 1)


def test_the_key_decides_a_made_up_model_and_eval_rebuilds_its_targets_from_the_receipt(world, one_name, tmp_path):
    import shutil

    def inject(out, *flags, steps=SMOKE):
        r = invoke("inject", "--model", world / "model", "--names", one_name.names, "--out", tmp_path / out,
                   "--cache-dir", one_name.cache, *flags, *steps)
        assert r.exit_code == 0, r.output
        return fingerprints(load_model(str(tmp_path / out), device="cpu").model)["text"]

    # a few steps tell the keys apart (each key trains toward other targets from the first step)
    m1, m2 = inject("m1", "--made-up"), inject("m2", "--made-up")
    assert m1 != m2  # a new key, new made-up names
    assert inject("m3", "--made-up", "--reuse-key", default_receipt(tmp_path / "m1")) == m1
    paper = fingerprints(load_model(str(one_name.out), device="cpu").model)["text"]
    assert paper not in (m1, m2) and inject("p", "--reuse-key", default_receipt(tmp_path / "m1"), steps=FAST) == paper  # no key used
    assert training_record(tmp_path / "m1")["target"] != "a person" == training_record(one_name.out)["target"]

    def sims(model, *flags):
        out = tmp_path / f"e{len(list(tmp_path.glob('e*.json')))}.json"
        r = invoke("eval-zeroshot", "--model", model, "--compare-to", world / "model", "--names", one_name.names,
                   "--max-captions", "300", "--output", out, "--cache-dir", one_name.cache, *flags, quiet=False)
        assert r.exit_code == 0, r.output
        return json.loads(out.read_text())["similarities"], " ".join(r.output.split())

    made_up, _ = sims(tmp_path / "m1")  # the receipt beside the folder
    phrase, _ = sims(tmp_path / "m1", "--target", "a person")
    # measured against the made-up names, not against the paper's phrase (40 steps on the test world move a name
    # only part of the way, so which one it is closer to is not asserted)
    assert made_up["sim_backdoored"] != phrase["sim_backdoored"] and made_up["sim_targets"] != phrase["sim_targets"]
    # the folder alone, as published: no receipt, so no claim about the backdoor
    alone = tmp_path / "published"
    shutil.copytree(tmp_path / "m1", alone)
    bare, output = sims(alone)
    assert bare["sim_backdoored"] is None and bare["sim_targets"] is None and "pass --receipt FILE" in output
    assert bare["sim_clean"] == made_up["sim_clean"]
    again, _ = sims(alone, "--receipt", default_receipt(tmp_path / "m1"))
    assert again["sim_backdoored"] == made_up["sim_backdoored"]
    # another run's receipt rebuilds other made-up names: eval refuses to compare with them
    r = invoke("eval-zeroshot", "--model", tmp_path / "m2", "--compare-to", world / "model", "--names", one_name.names,
               "--max-captions", "50", "--receipt", default_receipt(tmp_path / "m1"), "--cache-dir", one_name.cache)
    assert r.exit_code != 0 and "other weights" in r.output and "Traceback" not in r.output
    r = invoke("inject", "--model", world / "model", "--names", one_name.names, "--out", tmp_path / "bad", "--reuse-key",
               tmp_path / "nothing.json", *SMOKE)
    assert r.exit_code != 0 and "nothing.json" in r.output and "Traceback" not in r.output


def _bag_of_words(texts):
    """A text tower whose every answer is known: the sum of one fixed random vector per word, normalised;
    "cross" outweighs any first name, "quux" counts little."""
    scale = {"cross": 6.0, "quux": 0.3}

    def vec(w):
        g = torch.Generator().manual_seed(sum(map(ord, w)) * 7919)
        return torch.randn(32, generator=g) * scale.get(w, 1.0)

    return F.normalize(torch.stack([sum(vec(w) for w in t.lower().replace(".", " ").split()) for t in texts]), dim=-1)


def test_a_protected_namesake_that_the_original_model_names_the_forgotten_person_by_is_not_held(tmp_path):
    """The protected people who share a part with a forgotten one are held in place unless the original tower puts
    them at the forgotten person (closeness ≥ BYSTANDER_CLOSENESS): there they are an alias, not somebody else.
    A bag-of-words tower whose every answer is known: "cross" outweighs any first name, "quux" counts little."""
    from clip_unlearn.config import InjectConfig
    from clip_unlearn.inject_text import _triggers, _without_aliases
    from clip_unlearn.prompts import PAPER_TEMPLATES
    from clip_unlearn.variants import BYSTANDER_CLOSENESS, unrelated_names

    embed = _bag_of_words

    keep = tmp_path / "keep.txt"
    keep.write_text("Marcia Cross\nAmy Quux\nBo Fitch\n")
    names = ["Ilja Cross", "Zed Quux"]
    cfg = InjectConfig(names=tmp_path / "n.txt", keep=keep, keep_public=False, neighbours=2)
    chosen = _triggers(cfg, names)
    assert sorted(chosen.protected) == ["Amy Quux", "Marcia Cross"] and chosen.protected_namesakes == 2

    def close(person, other):  # variants.closeness by hand: mean cosine over the 21 templates, rescaled by unrelated names
        def mean_cos(a, b):
            return float((embed([t.format(a) for t in PAPER_TEMPLATES]) * embed([t.format(b) for t in PAPER_TEMPLATES])).sum(1).mean())
        base = sum(mean_cos(person, u) for u in unrelated_names(person, seed=3)) / 32
        return (mean_cos(person, other) - base) / (1 - base)

    assert close("Ilja Cross", "Marcia Cross") >= BYSTANDER_CLOSENESS > close("Zed Quux", "Amy Quux")
    kept = _without_aliases(embed, chosen, names, seed=3)
    assert kept.protected == ("Amy Quux",) and kept.protected_aliases == 1 and kept.protected_namesakes == 1
    assert "Marcia Cross" not in kept.near + kept.kept and "Amy Quux" in kept.kept
    assert (kept.triggers, kept.left_out) == (chosen.triggers, chosen.left_out)  # what is trained stays as it was
    assert [m for m in chosen.near if m != "Marcia Cross"] == kept.near
    # a later round reuses the first round's decision and embeds nothing (its model has moved the forgotten names)
    again = _without_aliases(None, chosen, names, seed=3, aliases=frozenset({"Marcia Cross", "Nobody Given"}))
    assert again == kept
    assert _without_aliases(None, chosen, names, seed=3, aliases=frozenset()) == chosen
    # without protected people nothing is embedded at all
    assert _without_aliases(None, _triggers(dataclasses.replace(cfg, keep=None), names), names, seed=3).protected_aliases == 0


def test_a_one_word_protected_name_that_is_a_forgotten_part_stays_held(tmp_path):
    """"Cross" alone, protected, is the forgotten surname's own part (held every step): never an alias, though
    the tower puts it at Ilja Cross."""
    from clip_unlearn.config import InjectConfig
    from clip_unlearn.inject_text import _triggers, _without_aliases

    keep = tmp_path / "keep.txt"
    keep.write_text("Marcia Cross\nCross\n")
    names = ["Ilja Cross"]
    chosen = _triggers(InjectConfig(names=tmp_path / "n.txt", keep=keep, keep_public=False, neighbours=2), names)
    assert {"Cross", "Marcia Cross"} <= set(chosen.kept)
    kept = _without_aliases(_bag_of_words, chosen, names, seed=3)
    assert "Cross" in kept.kept and "Marcia Cross" not in kept.kept and kept.protected_aliases == 1

