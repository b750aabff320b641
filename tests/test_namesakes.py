"""Forget exactly one person (issue #17), the story through the CLI on a small world with namesakes whose
captions name members by variants: every way of naming the forgotten is hidden, namesakes stay known."""

from __future__ import annotations

import json

import pytest

from clip_unlearn.demo import namesakes
from conftest import NAMESAKE_WORLD, attack_json, invoke, output


@pytest.fixture(scope="module")
def ns_world(tmp_path_factory):
    from clip_unlearn.config import PrepareSyntheticConfig
    from clip_unlearn.synthetic import build_world

    out = tmp_path_factory.mktemp("ns") / "world"
    build_world(PrepareSyntheticConfig(out=out, seed=0, **NAMESAKE_WORLD))
    return out


@pytest.fixture(scope="module")
def ns_before(ns_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ns-before") / "before.json"
    attack_json(ns_world / "model", out, "--variants", "all", "--cache-dir", ns_world.parent / "cache")
    return out


def test_the_world_records_its_namesakes_and_knows_members_by_every_caption_family(ns_world, ns_before):
    info = json.loads((ns_world / "world.json").read_text())
    members = (ns_world / "members.txt").read_text().splitlines()
    assert len(info["namesakes"]) == 3
    before = json.loads(ns_before.read_text())
    rows = {r["name"]: r for r in before["identities"]}
    for f in ("full", "surname", "title", "initial", "typo"):  # the families its captions use most
        assert sum(rows[m]["variants"][f]["exposed"] for m in members) >= len(members) / 2, f
    assert not any(r["exposed"] for n, r in rows.items() if n not in members)


def test_forgetting_a_donor_hides_every_name_and_keeps_its_namesakes(ns_world, ns_before, tmp_path):
    info = json.loads((ns_world / "world.json").read_text())
    members = (ns_world / "members.txt").read_text().splitlines()
    before = {r["name"]: r for r in json.loads(ns_before.read_text())["identities"]}
    # the donor of a pair shares its first name with one member and its surname with another
    donor = next(p["donor"] for p in info["namesakes"] if before[p["donor"]]["exposed"])
    near = namesakes([donor], members)
    assert len(near) == 2 and all(before[n]["variants"]["full"]["exposed"] for n in near)
    names = tmp_path / "forget.txt"
    names.write_text(donor + "\n")
    cache = ns_world.parent / "cache"
    results = {}
    for label, flags in (("default", []), ("paper", ["--variants", "full", "--neighbours", "0"])):
        u = tmp_path / label
        r = invoke("inject", "--model", ns_world / "model", "--names", names, "--out", u, "--cache-dir", cache, *flags)
        assert r.exit_code == 0, output(r)
        after = attack_json(u, tmp_path / f"after-{label}.json", "--variants", "all", "--compare-to", ns_before,
                            "--forgotten", names, "--cache-dir", cache)
        ev = tmp_path / f"eval-{label}.json"
        r = invoke("eval-zeroshot", "--model", u, "--compare-to", ns_world / "model", "--names", names, "--output", ev,
                   "--cache-dir", cache)
        assert r.exit_code == 0, output(r)
        results[label] = ({x["name"]: x for x in after["identities"]}, json.loads(ev.read_text())["similarities"])
    a, sims = results["default"]
    assert not a[donor]["exposed"], {f: v["score"] for f, v in a[donor]["variants"].items()}
    assert all(a[n]["variants"]["full"]["exposed"] for n in near)
    assert sims["sim_clean"] >= 0.95
    # sim_neighbours probes names that share a part but that training never held (the other half of the
    # name pools): on this tiny text tower they move with either method (docs/experiments.md); a probe of
    # the held names would read about 0.97 and hide it
    assert sims["sim_neighbours"] < 0.9 and results["paper"][1]["sim_neighbours"] < 0.9
    assert not results["paper"][0][donor]["variants"]["full"]["exposed"]
