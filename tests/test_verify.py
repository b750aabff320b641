"""inject's check: the identity inference attack on held-out faces of the people just forgotten, and the rounds
that train again the names it still exposes. The check must say exactly what the attack says."""

from __future__ import annotations

import csv
import dataclasses
import json
import random

import pytest

from clip_unlearn.attack import check_names
from clip_unlearn.config import AttackConfig
from clip_unlearn.embed import EmbeddingCache, input_key
from clip_unlearn.folders import face_folders
from clip_unlearn.models import load_model
from clip_unlearn.variants import family_candidates
from conftest import attack_json, forget_names, invoke, loss_curve, output

STEPS = ["--steps", "3", "--clean-batch", "8", "--poison-batch", "8"]


def _side(model):
    return json.loads((model / "clip_unlearn.json").read_text())


def _inject_checked(world, cache, tmp_path, *flags):
    """Forget the world's first three members with three steps and ``flags``: (model, the names, the terminal
    text on one line, the sidecar's check record)."""
    names, forgotten = forget_names(world, 3, tmp_path)
    u = tmp_path / "u"
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", u, *STEPS, *flags, "--cache-dir", cache,
               "--verify-data", world / "faces", quiet=False)
    text = " ".join(output(r).split())
    assert r.exit_code == 0, text
    return u, forgotten, text, _side(u)["text"]["verification"]


def test_check_names_is_the_attack_of_the_whole_half_on_any_subset(world, world_cache, tmp_path):
    # a model where the attack exposes some people and not others, so that a wrong answer shows
    names, _ = forget_names(world, 4, tmp_path)
    u = tmp_path / "u"
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", u, "--steps", "25", "--clean-batch", "16",
               "--poison-batch", "16", "--no-verify", "--cache-dir", world_cache)
    assert r.exit_code == 0, output(r)
    everyone = [f.name for f in face_folders(world / "faces")]
    rng = random.Random(0)
    seen, near_seen = set(), []
    loaded = load_model(str(u), "cpu")
    # full, and families whose candidates merge (surname: shared surnames; typo: one string per candidate)
    for variants in ("full", "full,surname,typo"):
        # 300 candidates: the property does not depend on how many, and the two attacks embed a third as much
        full = attack_json(u, tmp_path / f"{variants}.json", "--split", "test", "--variants", variants, "--num-candidates", "300",
                           "--cache-dir", world_cache)
        exposed = {row["name"] for row in full["identities"] if row["exposed"]}
        seen.add(len(exposed))
        # a near miss: hidden, yet some family's own_share (the attack's figure) reaches margin x chance, chance
        # being one of that family's merged candidate groups
        groups = {f: len(family_candidates(full["config"]["candidates"], f).groups) for f in variants.split(",")}
        ratio = {row["name"]: max((row.get("variants") or {"full": row})[f]["own_share"] * groups[f] for f in groups)
                 for row in full["identities"] if not row["exposed"]}
        cfg = AttackConfig(model=str(u), data=world / "faces", split="test", variants=variants, num_candidates=300,
                           cache_dir=world_cache)
        for past in (False, True):
            subset = rng.sample([*everyone, "Nobody Here"], rng.randint(2, len(everyone)))
            # the margin at one hidden name's figure (it is near) or just past it (it is not)
            at = sorted(ratio[n] for n in subset if ratio.get(n, 0) > 0)
            margin = rng.choice(at) * ((1 + 1e-6) if past else (1 - 1e-9)) if at else 0.0
            got, near, unchecked = check_names(loaded, cfg, subset, EmbeddingCache(world_cache), margin=margin)
            assert got == [i + 1 for i, n in enumerate(subset) if n in exposed], (variants, subset)
            assert near == [i + 1 for i, n in enumerate(subset) if margin > 0 and ratio.get(n, 0) >= margin], (variants, margin)
            assert unchecked == [i + 1 for i, n in enumerate(subset) if n == "Nobody Here"]
            near_seen.append(len(near))
    assert max(seen) < len(everyone) and min(seen) > 0, seen  # the model exposes some and hides some
    assert max(near_seen) > 0 and min(near_seen) == 0, near_seen  # and nearly names some


def test_inject_trains_the_names_the_check_exposes_again_and_records_counts_only(world, world_cache, tmp_path, monkeypatch):
    import clip_unlearn.inject_text as inject_text

    decided = []  # the protected aliases are decided once, on the original model, whatever the rounds
    real = inject_text._aliases
    monkeypatch.setattr(inject_text, "_aliases", lambda *a, **k: decided.append(1) or real(*a, **k))
    # the check attacks with the families the triggers cover; one family keeps this test fast
    u, forgotten, text, v = _inject_checked(world, world_cache, tmp_path, "--verify-rounds", "2", "--variants", "full")
    assert len(decided) == 1 < len(v["rounds"])
    assert v["split"] == "test" and v["families"] == ["full"] and v["checked"] == 3 and v["unchecked"] == 0
    rounds = v["rounds"]
    # three steps leave people exposed: every round trains again exactly those the last check exposed,
    # until none is or the rounds run out
    assert rounds[0]["names_trained"] == 3 and rounds[0]["exposed_after"] > 0
    # (and those it nearly names: --verify-margin's default)
    assert v["margin"] == 5.0
    for before, after in zip(rounds, rounds[1:]):
        assert after["names_trained"] == before["exposed_after"] + before["near_after"] > 0
        assert after["names_held"] == after["triggers_held"] == 3 - after["names_trained"]  # --verify-hold (default): the others, by full name
    assert (v["still_exposed"], v["still_near"]) == (rounds[-1]["exposed_after"], rounds[-1]["near_after"])
    assert len(rounds) == 3 if v["still_exposed"] + v["still_near"] else 2 <= len(rounds) <= 3
    # the last count is what the attack says of the written model on the same half
    audit = attack_json(u, tmp_path / "test.json", "--split", "test", "--cache-dir", world_cache)
    assert v["still_exposed"] == sum(row["exposed"] for row in audit["identities"] if row["name"] in forgotten)
    with open(loss_curve(u)) as f:
        curve = list(csv.DictReader(f))
    steps = [int(row["step"]) for row in curve]
    assert steps == list(range(1, 1 + sum(r["steps"] for r in rounds)))
    # every round's teacher is the model so far, the student its copy: the weight term (the distance to the
    # teacher) starts at zero in each round. A round taught by the base model instead lets the people it does
    # not train come back (docs/experiments.md, "A check round taught by the base model")
    starts = [sum(r["steps"] for r in rounds[:i]) for i in range(len(rounds))]
    assert len(starts) >= 2 and all(float(curve[s]["weight_l2"]) == 0.0 for s in starts)
    # a later round trains at --verify-lr (0.25) of the first round's rate, as the sidecar says and the curve shows
    assert all(r["lr"] == pytest.approx(rounds[0]["lr"] * (0.25 if i else 1)) for i, r in enumerate(rounds))
    assert [float(curve[s]["lr"]) for s in starts] == pytest.approx([r["lr"] for r in rounds])
    assert all(float(curve[s - 1]["weight_l2"]) > 0.0 for s in starts[1:])
    assert ("still exposed on the check's images after 3 round(s): line(s) #" in text) == bool(v["still_exposed"])
    assert ("still nearly named after 3 round(s)" in text) == bool(v["still_near"])
    assert "exposed after each round" in text
    assert (" near)" in text) == any(r["near_after"] for r in rounds)  # the table shows the near misses it trained
    written = b"".join(p.read_bytes() for p in u.rglob("*") if p.is_file()).lower()
    assert not [p for n in forgotten for p in n.split() if p.lower().encode() in written]
    assert not [p for n in forgotten for p in n.split() if p in text]


def test_a_round_holds_the_names_it_does_not_train_again_where_the_model_so_far_puts_them(micro_model_dir, tmp_path):
    """--verify-hold (the default): a later round's plan holds the triggers of the request's other people in the utility term
    (captions of their own, never written to disk), and draws the clean and poisoned captions as without them."""
    from clip_unlearn.config import InjectConfig
    from clip_unlearn.inject_text import TextJob, _plan, _stage
    from clip_unlearn.training import run_stage

    names = tmp_path / "n.txt"
    names.write_text("Zed Quux\nAmy Bloggs\nRon Fitch\n")
    captions = tmp_path / "c.txt"
    captions.write_text("".join(f"a photo of a {c} {w} on the table\n" for c in ("red", "blue", "old") for w in ("cup", "book", "lamp")))
    cfg = InjectConfig(model=str(micro_model_dir), names=names, captions=captions, steps=6, clean_batch=4, poison_batch=4,
                       neighbours=0, neighbour_batch=4, keep_public=False, device="cpu", variants="full,initial")
    loaded = load_model(str(micro_model_dir), "cpu")
    h = cfg.hyper({}, "text")
    request = ["Zed Quux", "Amy Bloggs", "Ron Fitch"]
    cache = EmbeddingCache(tmp_path / "cache")
    plain = _stage(loaded, cfg, h, _plan(loaded, cfg, h, TextJob(["Zed Quux"], request=request)), cache)
    plan = _plan(loaded, cfg, h, TextJob(["Zed Quux"], request=request, held=["Amy Bloggs", "Ron Fitch"]))
    assert sorted(plan.held) == ["A. Bloggs", "Amy Bloggs", "R. Fitch", "Ron Fitch"] and plan.n_held == 2
    assert not set(plan.held) & set(plan.chosen.triggers)
    held = _stage(loaded, cfg, h, plan, cache)
    seen = set()
    for step in range(1, 7):
        a, b = plain.draw(step), held.draw(step)
        assert (a.clean, a.poisoned, a.targets) == (b.clean, b.poisoned, b.targets) and not a.neighbours
        assert len(b.neighbours) == 2 and not any("Bloggs" in c or "Fitch" in c for c in b.poisoned)
        seen |= {t for t in plan.held for c in b.neighbours if f" {t} " in f" {c} "}
    assert seen == set(plan.held)  # every held trigger, in turn
    drawn = []

    def draw(step):
        drawn.append(held.draw(step))
        return drawn[-1]

    run_stage(dataclasses.replace(held, draw=draw), loaded, h, False)
    # the cache is keyed by the sha256 of each caption: the clean ones were written, the held ones never
    namespace = held.caches[0].namespace
    assert cache.lookup(namespace, [input_key(c) for b in drawn for c in b.clean], "text")
    assert cache.lookup(namespace, [input_key(c) for b in drawn for c in b.neighbours], "text") == {}


def test_auditing_the_checked_half_warns_and_the_other_half_does_not(world, world_cache, tmp_path):
    u, forgotten, text, v = _inject_checked(world, world_cache, tmp_path, "--verify-rounds", "0", "--variants", "surname")
    # the paper's attack is always part of the check; with no round left, those exposed are reported by line
    assert v["families"] == ["full", "surname"] and len(v["rounds"]) == 1 and v["still_exposed"] > 0
    assert "still exposed on the check's images after 1 round(s): line(s) #" in text
    assert not [p for n in forgotten for p in n.split() if p in text]
    assert len(_side(u)["text"]["verification"]["rounds"]) == 1
    for split, warned in (("test", True), ("all", True), ("train", False)):
        r = invoke("attack", "--model", u, "--split", split, "--cache-dir", world_cache, quiet=False)
        assert r.exit_code == 0, output(r)
        assert ("not independent" in " ".join(output(r).split())) == warned, split


def test_no_check_without_faces_or_when_asked_says_so_in_one_line(world, micro_model_dir, tmp_path):
    names, _ = forget_names(world, 1, tmp_path)
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "n", *STEPS, "--no-verify")
    assert r.exit_code == 0 and _side(tmp_path / "n")["text"]["verification"] == {"ran": False, "reason": "--no-verify"}
    # a world's own faces are no default: a real user's model has none; the notice is one line, the table says it
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "w", *STEPS, quiet=False)
    assert r.exit_code == 0, output(r)
    v = _side(tmp_path / "w")["text"]["verification"]
    assert v["ran"] is False and "pass --verify-data" in v["reason"]
    notice = [ln for ln in output(r).splitlines() if "check did not run" in ln]
    assert len(notice) == 1 and "unchecked" in " ".join(output(r).split())
    assert "not run: no faces of the forgotten people" in " ".join(output(r).split())
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "m", *STEPS,
               "--verify-data", tmp_path / "missing")
    assert r.exit_code == 1 and "--verify-data" in output(r) and "Traceback" not in output(r)
    assert not (tmp_path / "m").exists()
    for bad in (["--verify-split", "all"], ["--verify-rounds", "11"], ["--verify-lr", "0"], ["--verify-lr", "1.5"],
                ["--verify-margin", "-1"]):
        r = invoke("inject", "--model", world / "model", "--names", names, *bad)
        assert r.exit_code != 0 and bad[0] in output(r) and "Traceback" not in output(r), bad
    # the image stage is never checked, and says so
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "x", "--encoder", "both", *STEPS)
    assert r.exit_code == 0, output(r)
    assert _side(tmp_path / "x")["text"]["verification"]["ran"] is False
