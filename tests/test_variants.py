"""Variant families (clip_unlearn.variants) and the attack under them (attack --variants)."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_unlearn import variants as V
from clip_unlearn.attack import _score, predict_one
from clip_unlearn.errors import ConfigError
from clip_unlearn.folders import IdentityFolder
from clip_unlearn.names import key
from conftest import attack_json, invoke, output

DOC_GENDERS = {"Emma Stone": "female", "Sarah Jessica Parker": "female", "Vincent van Gogh": "male",
               "Jean-Paul Sartre": "male", "Madonna": "female", "Zoë Saldaña": "female"}


def test_the_documented_table_is_what_the_code_does():
    lines = [ln for ln in V.__doc__.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "family" and header[1:] == list(DOC_GENDERS)
    seen = []
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        family, shown = cells[0], cells[1:]
        seen.append(family)
        for name, want in zip(header[1:], shown):
            assert " / ".join(V.variants(name, family, DOC_GENDERS[name])) == want, (family, name)
    assert seen == list(V.FAMILIES)


def test_parse_families():
    assert V.parse_families("full") == ("full",)
    assert V.parse_families("typo, Surname,full") == ("full", "surname", "typo")  # FAMILIES order, any case
    assert V.parse_families("all") == V.FAMILIES
    for bad, words in (("nick", "unknown family nick"), ("", "is empty"), ("full,x,y", "unknown families x, y")):
        with pytest.raises(ConfigError, match=words):
            V.parse_families(bad)


def test_title_without_a_gender_gives_both_and_pools_know_common_first_names():
    assert V.variants("Alex Stone", "title") == ("Mr. Stone", "Ms. Stone")
    genders = V.pool_genders(["Emma Stone", "John Smith", "Xq Zz"])
    assert genders == {"emma stone": "female", "john smith": "male"}


def test_particles_hyphens_and_three_word_names():
    assert V.split_name("Ludwig Mies van der Rohe") == (["Ludwig", "Mies"], "van der Rohe")
    assert V.split_name("Catherine Zeta-Jones") == (["Catherine"], "Zeta-Jones")
    assert V.split_name("Van Morrison") == (["Van"], "Morrison")  # a particle that is the first word is a first name
    assert V.variants("Ludwig Mies van der Rohe", "initial") == ("L. M. van der Rohe",)


_names = st.lists(st.text(alphabet="abcdefgzöñéABCZ-", min_size=1, max_size=9).filter(lambda w: w.strip("-")), min_size=1,
                  max_size=3).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_names, min_size=1, max_size=12, unique_by=key), st.sampled_from(V.FAMILIES))
def test_family_candidates_partition_and_typos_spell_no_candidate(candidates, family):
    fc = V.family_candidates(candidates, family)
    # every candidate in exactly one group; groups are exactly the classes of "shares a string"
    assert sorted(c for g in fc.groups for c in g) == list(range(len(candidates)))
    spelled = [V.variants(c, family, None, frozenset(map(key, candidates))) for c in candidates]
    for s, g in zip(fc.strings, fc.group_of):
        makers = {c for c, strings in enumerate(spelled) if any((x if family == "lower" else key(x)) ==
                                                                   (s if family == "lower" else key(s)) for x in strings)}
        assert makers and makers <= set(fc.groups[g])
    for strings in spelled:
        for x in strings:
            assert x in fc.strings or any(key(x) == key(s) for s in fc.strings)
    if family == "typo":
        others = {key(c) for c in candidates}
        for c, (t,) in zip(candidates, spelled):
            assert key(t) not in others - {key(c)}
            assert t != c or not any(ch.isalpha() and i and c[i - 1].isalpha() for i, ch in enumerate(c))
    if family in ("full", "lower"):
        assert not fc.collisions


def test_typo_is_the_same_everywhere():
    assert V.variants("Alessio Blanes", "typo") == V.variants("Alessio Blanes", "typo")
    assert V.variants("Alessio Blanes", "typo") != ("Alessio Blanes",)


def _naive_scores(images, text, fc, owners, true_groups, n_ids):
    """For every template and image: the group of the nearest string (a merged group is as near as its
    nearest member string); per identity the unique plurality; the score counts templates it wins."""
    scores = [0] * n_ids
    for t in range(text.shape[0]):
        for i in range(n_ids):
            counts: dict[int, int] = {}
            for m in range(images.shape[0]):
                if owners[m] != i:
                    continue
                sims = [float(images[m] @ text[t, s]) for s in range(text.shape[1])]
                best = {}
                for s, g in enumerate(fc.group_of):
                    best[g] = max(best.get(g, -1e9), sims[s])
                winner = max(best, key=lambda g: best[g])
                counts[winner] = counts.get(winner, 0) + 1
            top = max(counts.values())
            tops = [g for g, n in counts.items() if n == top]
            scores[i] += len(tops) == 1 and tops[0] == true_groups[i]
    return scores


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(("surname", "title", "first", "full")), st.integers(1, 64))
def test_family_scorer_equals_a_brute_force_scorer(seed, family, max_scores):
    rng = random.Random(seed)
    firsts, lasts = ["Ann", "Bo", "Cy", "Di"], ["Stone", "Lee", "Park"]
    candidates = list(dict.fromkeys(f"{rng.choice(firsts)} {rng.choice(lasts)}" for _ in range(8)))
    fc = V.family_candidates(candidates, family)
    attacked = rng.sample(candidates, min(3, len(candidates)))
    kept = [(IdentityFolder(n, ()), [f"{n}-{j}" for j in range(rng.randint(1, 4))]) for n in attacked]
    owners = [i for i, (_, paths) in enumerate(kept) for _ in paths]
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(len(owners), 6, generator=g)
    text = torch.randn(3, len(fc.strings), 6, generator=g)
    # the attack's streamed scorer: one template at a time, images in chunks as small as one image
    preds = torch.stack([predict_one(images, text[t], max_scores=max_scores) for t in range(text.shape[0])])
    rows = _score(kept, preds, candidates, fc, threshold=1)
    index = {key(c): i for i, c in enumerate(candidates)}
    true_groups = [fc.group_of_candidate[index[key(f.name)]] for f, _ in kept]
    assert [r["score"] for r in rows] == _naive_scores(images, text, fc, owners, true_groups, len(kept))


# --- through the CLI on the small world -------------------------------------------------------------

def test_attack_by_family_table_json_csv_and_compare(world, world_cache, tmp_path):
    before = attack_json(world / "model", tmp_path / "b.json", "--variants", "full,surname,typo", "--num-candidates", "200",
                         "--cache-dir", world_cache)
    fams = before["config"]["variants_applied"]
    assert fams == ["full", "surname", "typo"]
    s = before["summary"]["families"]
    assert set(s) == set(fams) and s["full"]["prompts"] == 21 * 200
    for r in before["identities"]:
        assert set(r["variants"]) == set(fams)
        assert r["exposed"] == any(v["exposed"] for v in r["variants"].values())
        assert r["score"] == max(v["score"] for v in r["variants"].values())
    # the full family alone gives the paper's attack, figure for figure
    full = attack_json(world / "model", tmp_path / "f.json", "--num-candidates", "200", "--cache-dir", world_cache)
    by = {r["name"]: r for r in before["identities"]}
    for r in full["identities"]:
        assert (r["score"], r["exposed"]) == (by[r["name"]]["variants"]["full"]["score"], by[r["name"]]["variants"]["full"]["exposed"])
    # CSV: per-family columns
    r = invoke("attack", "--model", world / "model", "--variants", "full,surname,typo", "--num-candidates", "200",
               "--cache-dir", world_cache, "--output", tmp_path / "b.csv", quiet=False)
    assert r.exit_code == 0, output(r)
    assert "surname" in output(r) and "exposed by family" in " ".join(output(r).split())
    header = next(csv.reader((tmp_path / "b.csv").open()))
    assert header[-6:] == ["full_score", "full_exposed", "surname_score", "surname_exposed", "typo_score", "typo_exposed"]
    # --compare-to: categories per family; a run with other families is refused
    after = attack_json(world / "model", tmp_path / "a.json", "--variants", "full,surname,typo", "--num-candidates", "200",
                        "--cache-dir", world_cache, "--compare-to", tmp_path / "b.json")
    assert set(after["compare"]["families"]) == set(fams)
    assert after["compare"]["families"]["typo"]["categories"]["wrongfully_unlearned"] == []
    r = invoke("attack", "--model", world / "model", "--num-candidates", "200", "--cache-dir", world_cache,
               "--compare-to", tmp_path / "b.json")
    assert r.exit_code == 1 and "--variants" in output(r) and "Traceback" not in output(r)


def test_surname_collisions_are_merged_and_reported(world, world_cache, tmp_path):
    members = (world / "members.txt").read_text().splitlines()
    target = members[0]
    surname = V.split_name(target)[1]
    cands = tmp_path / "cands.txt"
    cands.write_text("\n".join([*members, f"Zebulon {surname}", "Ann Other", "Bob Other"]) + "\n")
    ids = tmp_path / "ids.txt"
    ids.write_text(target + "\n")
    res = attack_json(world / "model", tmp_path / "r.json", "--variants", "full,surname", "--candidates", cands,
                      "--identities", ids, "--cache-dir", world_cache)
    row = res["identities"][0]
    assert row["variants"]["surname"]["merged_with"] == [f"Zebulon {surname}"]
    assert row["variants"]["full"]["merged_with"] == []
    assert res["summary"]["families"]["surname"]["merged_candidates"] == 4  # the two Others and the two of target's surname


def test_bad_variants_flag_is_a_usage_error(world, tmp_path):
    r = invoke("attack", "--model", world / "model", "--variants", "full,nickname")
    assert r.exit_code == 2 and "unknown family nickname" in output(r) and "Traceback" not in output(r)


def test_the_gate_fails_on_exposure_under_any_family(world, world_cache, tmp_path):
    res = json.loads(json.dumps(attack_json(world / "model", tmp_path / "r.json", "--variants", "full,lower",
                                            "--num-candidates", "200", "--cache-dir", world_cache)))
    exposed = [r["name"] for r in res["identities"] if r["exposed"]]
    gate = tmp_path / "gate.txt"
    gate.write_text(exposed[0] + "\n")
    r = invoke("attack", "--model", world / "model", "--variants", "full,lower", "--num-candidates", "200",
               "--cache-dir", world_cache, "--fail-on-exposed", gate)
    assert r.exit_code == 3 and exposed[0] not in output(r)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["Emma Stone", "Alessio Blanes", "Jean-Luc de la Croix", "Zoë Ångström", "Madonna"]),
       st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 300))
def test_the_probe_never_measures_a_neighbour_that_inject_holds(name, train_seed, probe_seed, per_part):
    held = set(V.neighbours(name, per_part=per_part, seed=train_seed))
    probed = V.neighbours(name, per_part=min(per_part, 8), seed=probe_seed, half="probe")
    assert probed and not held & set(probed)
    # every generated name still shares the first name or the surname
    given, surname = V.split_name(name)
    for n in [*held, *probed]:
        g, s = V.split_name(n)
        assert key(s) == key(surname) or (given and g and key(g[0]) == key(given[0]))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 6), st.integers(0, 10_000), st.integers(0, 400))
def test_strangers_share_no_part_with_a_forgotten_name_and_the_two_halves_never_meet(names_seed, k, seed, n):
    from clip_unlearn.names import random_full_names

    # pool names (their parts are the pools' own, so the exclusion has something to exclude) and hard ones
    names = random_full_names(k, random.Random(names_seed)) + ["Emma Stone", "Jean-Luc de la Croix", "Madonna"][: names_seed % 4]
    held = V.strangers(names, n, seed=seed, half="train")
    probed = V.strangers(names, n, seed=seed)
    assert probed == V.strangers(names, n, seed=seed, half="probe")  # the same run, the same names
    assert len(held) == len(set(held)) == n and len(probed) == len(set(probed)) == n
    parts = {key(p) for x in names for g, s in [V.split_name(x)] for p in (s, *g)}
    for x in held + probed:
        g, s = V.split_name(x)
        assert len(g) == 1 and not {key(s), key(g[0])} & parts, x
    # eval-zeroshot's probe half shares no part with the half inject draws its neighbours from
    assert not {p for x in held for p in x.split()} & {p for x in probed for p in x.split()}


def _bag_of_words(dim: int = 64, seed: int = 0):
    """A text 'tower' that embeds a text as the normalised sum of fixed random vectors of its words: two
    names that share a word are close, two that share none are not. It is no model of CLIP; it gives
    closeness inputs whose answer is known."""
    table: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(seed)

    def embed(texts: list[str]) -> torch.Tensor:
        rows = []
        for t in texts:
            v = torch.zeros(dim)
            for w in t.lower().split():
                if w not in table:
                    table[w] = torch.randn(dim, generator=g)
                v += table[w]
            rows.append(v / v.norm())
        return torch.stack(rows)
    return embed


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["Emma Stone", "Alessio Blanes", "Jean-Luc de la Croix", "Zoë Ångström"]), st.integers(0, 10_000))
def test_unrelated_names_share_no_part_and_are_seeded(name, seed):
    names = V.unrelated_names(name, seed=seed)
    assert len(names) == 32 and names == V.unrelated_names(name, seed=seed)
    given_, surname = V.split_name(name)
    for n in names:
        g, s = V.split_name(n)
        assert key(s) != key(surname) and key(g[0]) != key(given_[0])
    assert not set(names) & set(V.unrelated_names(name, seed=seed, half="probe"))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000))
def test_closeness_is_one_for_the_name_and_zero_on_average_for_the_unrelated(seed):
    embed = _bag_of_words(seed=seed)
    name = "Alessio Blanes"
    unrelated = V.template_embeddings(embed, V.unrelated_names(name, seed=seed))
    own = V.template_embeddings(embed, [name])
    assert own.shape[:2] == (1, 21)
    assert V.closeness(own[0], own, unrelated) == [pytest.approx(1.0, abs=1e-5)]
    assert sum(V.closeness(own[0], unrelated, unrelated)) == pytest.approx(0.0, abs=1e-4)
    # a name that shares a word is closer than one that shares none; a hand computation of the scale
    shares, apart = V.closeness(own[0], V.template_embeddings(embed, ["Marco Blanes", "Marco Rossi"]), unrelated)
    assert shares > apart
    from clip_unlearn.attack import PAPER_TEMPLATES
    fill = lambda n: embed([t.format(n) for t in PAPER_TEMPLATES])  # noqa: E731
    c = float((fill("Marco Blanes") * fill(name)).sum(1).mean())
    names = V.unrelated_names(name, seed=seed)
    b = sum(float((fill(u) * fill(name)).sum(1).mean()) for u in names) / len(names)
    assert shares == pytest.approx((c - b) / (1 - b), abs=1e-5)
    assert V.closeness(own[0], own[:0], unrelated) == []
