"""The audit: who can tell from an unlearned model whom it forgot (statistics by hand, the gate, no names out)."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_unlearn.attack import PAPER_TEMPLATES
from clip_unlearn.audit import _untrained_strings, _variant_strings, auc, chance_band, ranks, text_audit
from clip_unlearn.prompts import PERSON_PHRASES
from clip_unlearn.variants import variants
from conftest import FAST, forget_names, invoke, output


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=8), st.lists(st.integers(0, 6), min_size=1, max_size=12))
def test_auc_is_the_rank_sum_statistic(a, b):
    # Mann–Whitney U from mid-ranks of the pooled sample, an independent route to the same number
    pool = sorted([*a, *b])
    mid = {v: (pool.index(v) + 1 + len(pool) - pool[::-1].index(v)) / 2 for v in pool}
    u = sum(mid[x] for x in a) - len(a) * (len(a) + 1) / 2
    assert auc(a, b) == pytest.approx(u / (len(a) * len(b)))
    assert auc([-x for x in a], [-x for x in b]) == pytest.approx(1 - auc(a, b))
    r = ranks(a, b, higher=True)
    assert all(x == 1 + sum(y > s for y in [*a, *b]) for x, s in zip(r, a))


def test_chance_band_is_two_standard_deviations_of_the_null_auc():
    rng = random.Random(0)
    draws = [auc([rng.random() for _ in range(5)], [rng.random() for _ in range(40)]) for _ in range(3000)]
    lo, hi = chance_band(5, 40)
    inside = sum(lo <= d <= hi for d in draws) / len(draws)
    assert 0.93 <= inside <= 0.98 and hi - 0.5 == pytest.approx(0.5 - lo)
    assert chance_band(1, 2) == (0.0, 1.0)  # too few names to tell anything: the band is everything


class _Words:
    """A text tower whose every answer is known: a text embeds as the normalised sum of fixed random word
    vectors; words in ``erased`` contribute nothing (as if their captions were mapped onto the rest)."""

    def __init__(self, erased=(), dim=32):
        self.erased, self.dim, self.calls = {w.lower() for w in erased}, dim, []

    def vec(self, w):
        g = torch.Generator().manual_seed(sum(ord(c) * 31 ** i for i, c in enumerate(w)) % 2 ** 31)
        return torch.randn(self.dim, generator=g)

    def texts(self, prompts, persist=True):
        self.calls.append((list(prompts), persist))
        rows = [sum((self.vec(w) for w in p.lower().split() if w not in self.erased), torch.zeros(self.dim)) for p in prompts]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def test_text_statistics_match_a_hand_computation_on_a_word_vector_tower():
    forgotten = ["Zed Quux", "Ada Blip"]
    reference = ["Mira Tolk", "Olaf Snee", "Pia Worrel", "Ugo Frand"]
    names = [*forgotten, *reference]
    # the forgotten names' words are erased: their captions are exactly the captions with "a person" minus
    # the phrase, so they sit where the target is no closer than where a never-seen name sits
    tower = _Words(erased={w for n in forgotten for w in n.split()})
    stats, emb, _ = text_audit(tower, names, 2, "a person", PAPER_TEMPLATES)
    by, calls = {s.name: s for s in stats}, list(tower.calls)

    def fill(n):
        return tower.texts([t.format(n) for t in PAPER_TEMPLATES])

    def cos(a, b):
        return float((a * b).sum(-1).mean())

    target = fill("a person")
    for i, n in enumerate(names):
        got = (by["target"].forgotten + by["target"].reference)[i]
        assert got == pytest.approx(cos(fill(n), target), abs=1e-5)
        person = sum(cos(fill(n), fill(p)) for p in PERSON_PHRASES) / len(PERSON_PHRASES)
        assert (by["person"].forgotten + by["person"].reference)[i] == pytest.approx(person, abs=1e-5)
        res = torch.nn.functional.normalize(fill(n) - target, dim=-1)
        pairs = [float(res[a] @ res[b]) for a in range(21) for b in range(21) if a != b]
        assert (by["coherence"].forgotten + by["coherence"].reference)[i] == pytest.approx(sum(pairs) / len(pairs), abs=1e-5)
        means = {m: torch.nn.functional.normalize(fill(m).mean(0), dim=0) for m in names}
        nearest = max(float(means[n] @ means[m]) for m in names if m != n)
        assert (by["nearest"].forgotten + by["nearest"].reference)[i] == pytest.approx(nearest, abs=1e-5)
    v = min(len(s) for s in _variant_strings(names))
    for i, (n, spellings) in enumerate(zip(names, _variant_strings(names))):
        agree = sum(cos(fill(n), fill(s)) for s in spellings[:v]) / v
        assert (by["variants"].forgotten + by["variants"].reference)[i] == pytest.approx(agree, abs=1e-5)
    # the typos no trigger trains: one-letter edits of the name, never the trained one, four each
    untrained = _untrained_strings(names)
    for i, (n, typos) in enumerate(zip(names, untrained)):
        assert len(typos) == 4 and variants(n, "typo", avoid=frozenset(m.lower() for m in names))[0] not in typos
        assert all(len(t) in (len(n) - 1, len(n), len(n) + 1) and t.lower() != n.lower() for t in typos)
        agree = sum(cos(fill(n), fill(t)) for t in typos) / 4
        assert (by["spellings"].forgotten + by["spellings"].reference)[i] == pytest.approx(agree, abs=1e-5)
    # erased names are the closest to the target: the statistic tells them apart, and says so
    summary = by["target"].summary(["#1 of --names", "#2 of --names"])
    assert summary["auc"] == 1.0 and summary["top_k"] == {"k": 2, "forgotten": 2}
    assert sorted(r["rank"] for r in summary["ranks"]) in ([1, 1], [1, 2])
    # no caption with a forgotten name or spelling of it was allowed near the disk
    assert any(not persist for _, persist in calls)
    for prompts, persist in calls:
        if persist:
            assert not any(w.lower() in p.lower().split() for p in prompts for n in forgotten for w in n.split())


def test_a_base_holder_sees_what_moved():
    forgotten, reference = ["Zed Quux"], ["Mira Tolk", "Olaf Snee", "Pia Worrel"]
    stats, _, _ = text_audit(_Words(erased={"zed", "quux"}), [*forgotten, *reference], 1, "a person", PAPER_TEMPLATES,
                          base=_Words())
    by = {s.name: s for s in stats}
    assert by["movement"].attacker == "base" and by["movement"].reference == pytest.approx([0, 0, 0], abs=1e-6)
    assert by["movement"].forgotten[0] > 0.1 and by["target_gain"].summary(["#1"])["auc"] == 1.0


@pytest.fixture(scope="module")
def forgot_two(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    names, forgotten = forget_names(world, 2, tmp)
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp / "u", *FAST)
    assert r.exit_code == 0, r.output
    (tmp / "reference.txt").write_text((world / "non_members.txt").read_text())  # never trained on
    return tmp, names, forgotten


def test_audit_cli_reports_by_line_gates_and_writes_no_name(world, forgot_two, tmp_path):
    tmp, names, forgotten = forgot_two
    cache = tmp_path / "cache"
    common = ["audit", "--model", tmp / "u", "--names", names, "--reference", tmp / "reference.txt",
              "--base", world / "model", "--data", world / "faces", "--cache-dir", cache]
    r = invoke(*common, "--output", tmp_path / "a.json", quiet=False)
    assert r.exit_code == 0, output(r)
    result = json.loads((tmp_path / "a.json").read_text())
    stats = {(s["attacker"], s["statistic"]): s for s in result["statistics"]}
    assert {s for _, s in stats} == {"target", "person", "coherence", "variants", "nearest", "spellings", "faces", "movement",
                                     "target_gain", "face_center", "face_tightness", "face_movement"}
    # a text-only model's image tower is its base's: its faces moved nowhere
    assert all(x["score"] == pytest.approx(0, abs=1e-6) for x in stats["base", "face_movement"]["ranks"])
    # with --base every model-only statistic also reads the base: the image tower's are the base's own here
    assert all("auc_base" in s for (a, _), s in stats.items() if a == "model")
    for s in ("face_center", "face_tightness"):
        assert stats["model", s]["auc_base"] == pytest.approx(stats["model", s]["auc"], abs=1e-4)
    assert "AUC in the base" in output(r)
    assert all(s["forgotten"] == 2 for s in stats.values())
    assert stats["model", "faces"]["reference"] >= 2  # the world's never-seen people have faces
    for s in stats.values():
        assert sorted(x["label"] for x in s["ranks"]) == ["#1 of --names", "#2 of --names"]
        assert s["disclosure"] == pytest.approx(max(s["auc"], 1 - s["auc"]))
    assert "who can tell" in output(r) and "most telling statistic" in output(r)
    # the gate: just above the worst model-only statistic passes, at it fails with 3
    worst = max(s["disclosure"] for (a, _), s in stats.items() if a == "model")
    if worst < 1.0:
        ok = invoke(*common, "--fail-on-disclosed", str(min(1.0, worst + 1e-3)))
        assert ok.exit_code == 0, output(ok)
    bad = invoke(*common, "--fail-on-disclosed", str(max(0.5001, worst - 1e-6)), "--output", tmp_path / "a.csv", quiet=False)
    assert bad.exit_code == 3 and "disclosure gate failed" in output(bad), output(bad)
    assert (tmp_path / "a.csv").read_text().startswith("attacker,statistic,auc,disclosure")
    written = [f.read_bytes().lower() for f in [*cache.rglob("*"), tmp_path / "a.json", tmp_path / "a.csv"] if f.is_file()]
    printed = (output(r) + output(bad)).lower().encode()
    for v in {p for n in forgotten for p in (n, *n.split())}:
        assert not [b for b in [*written, printed] if v.lower().encode() in b], f"{v} leaked"


def test_audit_generates_a_reference_and_refuses_bad_input(world, forgot_two, tmp_path):
    tmp, names, _ = forgot_two
    r = invoke("audit", "--model", tmp / "u", "--names", names, "--num-reference", "30", "--output", tmp_path / "g.json")
    assert r.exit_code == 0, output(r)
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["reference_source"] == "generated" and result["config"]["reference_names"] == 30
    faces = next(s for s in result["statistics"] if s["statistic"] == "faces")
    assert faces["auc"] is None and "--data" in faces["note"]
    r = invoke("audit", "--model", tmp / "u")
    assert r.exit_code == 2 and "--names" in output(r) and "Traceback" not in output(r)
    one = tmp_path / "one.txt"
    one.write_text("Lonely Name\n")
    r = invoke("audit", "--model", tmp / "u", "--names", names, "--reference", one)
    assert r.exit_code == 1 and "fewer than 2 names" in output(r) and "Traceback" not in output(r)
    r = invoke("audit", "--model", tmp / "u", "--names", names, "--fail-on-disclosed", "0.4")
    assert r.exit_code == 2 and "--fail-on-disclosed" in output(r)


def test_image_statistics_against_a_hand_computation():
    from clip_unlearn.audit import image_statistics

    # person 0 collapsed onto one point; persons 1 and 2 spread around their means
    e = {0: torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]),
         1: F.normalize(torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]), dim=1),
         2: F.normalize(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]), dim=1)}
    got = image_statistics(e)
    centres = {i: F.normalize(v.mean(0), dim=0) for i, v in e.items()}
    average = F.normalize(sum(centres.values()) / 3, dim=0)
    for i in e:
        assert got["face_center"][i] == pytest.approx(float(centres[i] @ average), abs=1e-6)
        by_hand = sum(float(F.cosine_similarity(row, e[i].mean(0), dim=0)) for row in e[i]) / len(e[i])
        assert got["face_tightness"][i] == pytest.approx(by_hand, abs=1e-6)
    assert got["face_tightness"][0] == pytest.approx(1.0) and got["face_tightness"][1] < 0.9
    assert image_statistics({}) == {"face_center": {}, "face_tightness": {}}


def test_audit_tells_the_image_stage_from_its_base(world, tmp_path):
    """On a model whose image tower was unlearned, the base reads the faces before (auc_base) and face_movement
    finds the forgotten people's faces moved most: the base's encoder is a different one from the model's."""
    names, _ = forget_names(world, 2, tmp_path)
    r = invoke("inject", "--encoder", "image", "--model", world / "model", "--names", names, "--out", tmp_path / "u", *FAST)
    assert r.exit_code == 0, output(r)
    r = invoke("audit", "--model", tmp_path / "u", "--names", names, "--reference", world / "non_members.txt",
               "--base", world / "model", "--data", world / "faces", "--output", tmp_path / "a.json",
               "--cache-dir", tmp_path / "cache")
    assert r.exit_code == 0, output(r)
    stats = {s["statistic"]: s for s in json.loads((tmp_path / "a.json").read_text())["statistics"]}
    moved = stats["face_movement"]
    assert min(x["score"] for x in moved["ranks"]) > max(moved["reference_scores"]) > 0
    assert stats["face_tightness"]["auc_base"] != stats["face_tightness"]["auc"]
    assert stats["target"]["auc_base"] == pytest.approx(stats["target"]["auc"], abs=1e-4)  # the text tower is the base's
