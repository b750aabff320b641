"""Forget exactly one person (issue #17), the story through the CLI on the demo's world (namesake pairs, and
captions that name members by variants, as every world of the default kind): every way of naming the forgotten
is hidden, namesakes stay known. The demo's "before" attack (the plain base model, every family, the train
half of the faces) is the baseline: it is the attack a user runs first."""

from __future__ import annotations

import json

import pytest

from clip_unlearn.demo import namesakes
from conftest import attack_json, invoke, output


@pytest.fixture(scope="module")
def ns_world(demo_run):
    out, result = demo_run
    assert result.exit_code == 0, output(result)
    return out / "world"


@pytest.fixture(scope="module")
def ns_before(demo_run):
    return demo_run[0] / "attack_before.json"


def test_the_world_records_its_namesakes_and_knows_members_by_every_caption_family(ns_world, ns_before):
    info = json.loads((ns_world / "world.json").read_text())
    members = (ns_world / "members.txt").read_text().splitlines()
    assert len(info["namesakes"]) == len(members) // 4  # the default: a pair per four members
    before = json.loads(ns_before.read_text())
    rows = {r["name"]: r for r in before["identities"]}
    for f in ("full", "surname", "title", "initial", "typo"):  # the families its captions use most
        assert sum(rows[m]["variants"][f]["exposed"] for m in members) >= len(members) / 2, f
    assert not any(r["exposed"] for n, r in rows.items() if n not in members)


# opt-in (`pytest -m slow`, about 2 minutes): the default demo test holds the namesakes of its five forgotten
# people exposed by full name; this is the same with one person forgotten alone
@pytest.mark.slow
def test_forgetting_a_donor_hides_it_and_keeps_its_namesakes(ns_world, ns_before, tmp_path):
    """As a user runs it: the defaults, with the faces a user with photos has for the check and captions of the
    model's own domain; the base is the plain open_clip folder the demo made. The donor is hidden
    under every default way of naming; the ways that name by one part (surname, first name, title) would also
    name the two namesakes, so the defaults leave them to the namesakes (docs/experiments.md)."""
    from clip_unlearn.config import DEFAULT_TRIGGERS

    info = json.loads((ns_world / "world.json").read_text())
    members = (ns_world / "members.txt").read_text().splitlines()
    baseline = json.loads(ns_before.read_text())
    before = {r["name"]: r for r in baseline["identities"]}
    seed = baseline["config"]["seed"]  # the demo's: the same candidates and images, so the runs compare
    # the donor of a pair shares its first name with one member and its surname with another
    donor = next(p["donor"] for p in info["namesakes"] if before[p["donor"]]["exposed"])
    near = namesakes([donor], members)
    assert len(near) == 2 and all(before[n]["variants"]["full"]["exposed"] for n in near)
    names = tmp_path / "forget.txt"
    names.write_text(donor + "\n")
    cache = tmp_path / "cache"
    u = tmp_path / "u"
    r = invoke("inject", "--model", ns_world.parent / "plain-model", "--names", names, "--out", u, "--cache-dir", cache,
               "--verify-data", ns_world / "faces", "--captions", ns_world / "captions_train.txt")
    assert r.exit_code == 0, output(r)
    after = attack_json(u, tmp_path / "after.json", "--split", "train", "--variants", "all", "--compare-to", ns_before,
                        "--forgotten", names, "--data", ns_world / "faces", "--seed", str(seed), "--cache-dir", cache)
    ev = tmp_path / "eval.json"
    bystanders = tmp_path / "bystanders.txt"
    bystanders.write_text("".join(n + "\n" for n in near))
    r = invoke("eval-zeroshot", "--model", u, "--compare-to", ns_world.parent / "plain-model", "--names", names, "--bystanders", bystanders,
               "--data", ns_world / "objects", "--captions", ns_world / "captions_heldout.txt", "--output", ev, "--cache-dir", cache)
    assert r.exit_code == 0, output(r)
    a = {x["name"]: x for x in after["identities"]}
    sims = json.loads(ev.read_text())["similarities"]
    assert not any(a[donor]["variants"][f]["exposed"] for f in DEFAULT_TRIGGERS.split(",")), {
        f: v["score"] for f, v in a[donor]["variants"].items()}
    assert all(a[n]["variants"]["full"]["exposed"] for n in near)
    assert sims["sim_clean"] >= 0.95
    # the two namesakes are measured by name (--bystanders), beside the probed names the model tells apart
    assert sims["bystanders"] >= 2 and sims["sim_bystanders"] is not None
