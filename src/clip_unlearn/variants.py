"""Ways of naming a person: the variant families of ``attack --variants`` and ``inject --variants``.

A web caption rarely spells a person's full name the way a candidate list does. Each family turns a
name into the strings a caption would use for that person; the attack then runs the paper's IDIA with
every candidate so transformed, on the same images. A family may give one string or, for ``title``
when the gender is unknown, two. What each family does, on the names it is hardest for (genders known; this
table is checked against the code by tests/test_variants.py):

| family  | Emma Stone | Sarah Jessica Parker  | Vincent van Gogh | Jean-Paul Sartre | Madonna     | Zoë Saldaña  |
|---------|------------|-----------------------|------------------|------------------|-------------|--------------|
| full    | Emma Stone | Sarah Jessica Parker  | Vincent van Gogh | Jean-Paul Sartre | Madonna     | Zoë Saldaña  |
| lower   | emma stone | sarah jessica parker  | vincent van gogh | jean-paul sartre | madonna     | zoë saldaña  |
| surname | Stone      | Parker                | van Gogh         | Sartre           | Madonna     | Saldaña      |
| first   | Emma       | Sarah                 | Vincent          | Jean-Paul        | Madonna     | Zoë          |
| title   | Ms. Stone  | Ms. Parker            | Mr. van Gogh     | Mr. Sartre       | Ms. Madonna | Ms. Saldaña  |
| initial | E. Stone   | S. J. Parker          | V. van Gogh      | J.-P. Sartre     | Madonna     | Z. Saldaña   |
| typo    | Emm Stone  | Sarrah Jessica Parker | Vincnt van Gogh  | Jean-Pul Sartre  | Madoonna    | Zooë Saldaña |

- The surname is the last word with the lower-case particles before it ("van", "de", "von der", …);
  a hyphenated surname ("Zeta-Jones") stays whole. A one-word name is its own surname, first name and
  initial form.
- ``title`` is "Mr." or "Ms." with the surname where the gender is known (FaceScrub's actors/actresses,
  a first name in only one of the candidate pools' sex lists, the synthetic world's record), else both
  strings, and the candidate matches through whichever is nearer.
- ``lower`` is Unicode lower case ("Zoë Saldaña" → "zoë saldaña"); letters keep their accents in every
  family.
- ``typo`` is one edit (swap of two neighbouring letters, a dropped letter, a doubled letter), chosen by a
  hash of the name, so it is the same in every run and on every machine; an edit that would spell
  another candidate's name, or the name itself, is skipped for the next one. The first letter of a word is
  never edited.

Two candidates may share a string under a family (two people surnamed "Stone"): the attack merges them
into one candidate for that family and reports the merge; a vote for the merged candidate counts for
each person in it, so a model that answers "Stone" to Emma Stone's face exposes her under ``surname``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from clip_unlearn.errors import ConfigError
from clip_unlearn.names import is_common_word, is_suffix, key, normalise
from clip_unlearn.prompts import PAPER_TEMPLATES

FAMILIES = ("full", "lower", "surname", "first", "title", "initial", "typo")
PARTICLES = frozenset({"van", "von", "der", "den", "de", "del", "della", "di", "da", "du", "dos", "das", "la", "le",
                       "ter", "ten", "bin", "ibn", "al", "el", "st.", "zu", "af", "y"})
_TITLES = {"male": ("Mr.",), "female": ("Ms.",), None: ("Mr.", "Ms.")}


def parse_families(spec: str, flag: str = "--variants") -> tuple[str, ...]:
    """``"full,surname"`` or ``"all"`` → the families in FAMILIES order; a clear error for anything else."""
    parts = [p.strip().lower() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"{flag} is empty; give families from {', '.join(FAMILIES)} (comma-separated) or all")
    if "all" in parts:
        return FAMILIES
    unknown = [p for p in parts if p not in FAMILIES]
    if unknown:
        raise ConfigError(f"{flag}: unknown famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                          f"choose from {', '.join(FAMILIES)} or all")
    return tuple(f for f in FAMILIES if f in parts)


def name_parts(name: str) -> tuple[list[str], str, str]:
    """(given names, surname, suffix): the surname is the last word before a generational suffix ("Jr.",
    "III") with the particles in front of it ("van", "de la"); the suffix is "" when there is none."""
    words = normalise(name).split(" ")
    suffix = ""
    if len(words) > 2 and is_suffix(words[-1]):
        suffix = words.pop()
        words[-1] = words[-1].rstrip(",")
    if len(words) == 1:
        return [], words[0], suffix
    start = len(words) - 1
    while start > 1 and words[start - 1].casefold() in PARTICLES:
        start -= 1
    return words[:start], " ".join(words[start:]), suffix


def split_name(name: str) -> tuple[list[str], str]:
    """(given names, surname): ``name_parts`` without the suffix."""
    given, surname, _ = name_parts(name)
    return given, surname


def _initial(given: str) -> str:
    return "-".join(part[:1] + "." for part in given.split("-") if part)


def typo_edits(name: str) -> Iterable[str]:
    """Single edits inside words (never the first letter), in an order fixed by a hash of the name."""
    letters = [i for i, ch in enumerate(name) if ch.isalpha() and i > 0 and name[i - 1].isalpha()]
    edits = []
    for i in letters:
        if i + 1 < len(name) and name[i + 1].isalpha() and name[i] != name[i + 1]:
            edits.append(name[:i] + name[i + 1] + name[i] + name[i + 2:])  # swap with the next letter
        edits.append(name[:i] + name[i + 1:])  # drop
        edits.append(name[:i] + name[i] + name[i:])  # double
    digest = lambda e: hashlib.sha256(f"clip-unlearn typo|{key(name)}|{e}".encode()).digest()  # noqa: E731
    return sorted(dict.fromkeys(edits), key=digest)


def variants(name: str, family: str, gender: Optional[str] = None, avoid: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The strings ``family`` makes of ``name`` (one, or two for ``title`` without a gender).

    ``avoid`` holds keys (names.key) that a typo must not spell: the other candidates' names.
    """
    name = normalise(name)
    given, surname, suffix = name_parts(name)
    if family == "full":
        return (name,)
    if family == "lower":
        return (name.lower(),)
    if family == "surname":
        return (surname,)
    if family == "first":
        return (given[0] if given else surname,)
    if family == "title":
        return tuple(f"{t} {surname}" for t in _TITLES[gender if gender in ("male", "female") else None])
    if family == "initial":
        return (" ".join([*(_initial(g) for g in given), surname, *([suffix] if suffix else [])]),)
    if family == "typo":
        body = " ".join([*given, surname])  # the suffix is never edited: "Jr" for "Jr." would name nobody new
        tail = name[len(body):] if suffix and name.startswith(body) else ""
        for edit in (e + tail for e in typo_edits(body if tail else name)):
            if key(edit) != key(name) and key(edit) not in avoid:
                return (edit,)
        return (name,)  # a name too short for any edit (one letter per word) stays as it is
    raise ConfigError(f"unknown variant family {family!r}; choose from {', '.join(FAMILIES)}")


# Why a variant is no trigger (inject --variants): it would name more than the person.
LEFT_OUT = ("common_word", "suffix", "particle", "shared_with_protected")


def left_out_reason(variant: str, family: str) -> Optional[str]:
    """Why ``variant`` (made by ``family``) may not stand for its person alone, or None if it may.

    A surname or first name that is a single common English word ("Stone", "Grace": it also means a
    thing, and CLIP's tokenizer lower-cases, so "Stone" is "stone"), a generational suffix, or particles
    alone ("van") name far more than one person. Multi-word variants (title, initial, typo, the full name)
    always name the person. Sharing with a protected person is decided by the caller, who knows them."""
    if family not in ("surname", "first"):
        return None
    words = normalise(variant).split(" ")
    if all(w.casefold() in PARTICLES for w in words):
        return "particle"
    if len(words) == 1 and is_suffix(words[0]):
        return "suffix"
    if len(words) == 1 and is_common_word(words[0].strip(".,")):
        return "common_word"
    return None


def shares_part(a: str, b: str) -> bool:
    """Whether two names share a first name or a surname (by names.key)."""
    (ga, sa), (gb, sb) = split_name(a), split_name(b)
    return key(sa) == key(sb) or bool(ga and gb and key(ga[0]) == key(gb[0]))


def pool_genders(names: Iterable[str]) -> dict[str, str]:
    """names.key → "male"/"female" for names whose first name is in only one of the candidate pools' sex lists."""
    from clip_unlearn.names import _name_pools

    female, male, _ = _name_pools()
    f, m = {x.casefold() for x in female}, {x.casefold() for x in male}
    out = {}
    for n in names:
        given, _ = split_name(n)
        first = given[0].casefold() if given else ""
        if (first in f) != (first in m):
            out[key(n)] = "female" if first in f else "male"
    return out


@dataclass(frozen=True)
class FamilyCandidates:
    """The candidates of one family: the distinct strings to prompt, the merged groups they point to.

    ``strings[s]`` belongs to group ``group_of[s]``; ``groups[g]`` lists candidate indices; ``group_of_candidate[c]``
    is candidate ``c``'s group. Groups of more than one candidate are the family's collisions.
    """

    family: str
    strings: tuple[str, ...]
    group_of: tuple[int, ...]
    groups: tuple[tuple[int, ...], ...]
    group_of_candidate: tuple[int, ...]

    @property
    def collisions(self) -> list[tuple[int, ...]]:
        return [g for g in self.groups if len(g) > 1]


def family_candidates(candidates: Sequence[str], family: str, genders: Mapping[str, str] = {}) -> FamilyCandidates:
    """Transform every candidate by ``family`` and merge those that share a string (by names.key)."""
    avoid = frozenset(key(c) for c in candidates)
    per_candidate = [variants(c, family, genders.get(key(c)), avoid) for c in candidates]
    # union-find over candidates that share a string (title without gender gives two per candidate)
    parent = list(range(len(candidates)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    spelled: dict[str, str] = {}
    for c, strings in enumerate(per_candidate):
        for s in strings:
            k = key(s) if family != "lower" else s  # lower is compared as written: its point is the case
            if k in owner:
                a, b = root(owner[k]), root(c)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                owner[k] = c
                spelled[k] = s
    roots = sorted({root(c) for c in range(len(candidates))})
    index = {r: g for g, r in enumerate(roots)}
    group_of_candidate = tuple(index[root(c)] for c in range(len(candidates)))
    groups = tuple(tuple(c for c in range(len(candidates)) if group_of_candidate[c] == g) for g in range(len(roots)))
    strings = tuple(spelled[k] for k in owner)
    group_of = tuple(group_of_candidate[owner[k]] for k in owner)
    return FamilyCandidates(family, strings, group_of, groups, group_of_candidate)


def _pool_half(parts: Sequence[str], half: str) -> list[str]:
    """One of two fixed, disjoint halves of a name pool (by a hash of each part, the same in every run)."""
    import hashlib

    if half not in ("train", "probe"):
        raise ValueError(f"half must be train or probe, not {half!r}")
    parity = 0 if half == "train" else 1
    return [x for x in parts if hashlib.sha256(x.casefold().encode()).digest()[0] % 2 == parity]


def neighbours(name: str, keep: Sequence[str] = (), per_part: int = 8, exclude: Iterable[str] = (), seed: int = 0,
               half: str = "train") -> list[str]:
    """Other people's names that share a part with ``name``: the ``keep`` names with its first name or its
    surname, then ``per_part`` made of its first name and pool surnames and ``per_part`` of pool first
    names and its surname (seeded by ``seed`` and the name, so the same in every run). None equals
    ``name`` or a name in ``exclude`` (the other forgotten names).

    The pool parts come from one of two disjoint halves of the pools: inject holds ``train`` neighbours,
    eval-zeroshot's sim_neighbours probes ``probe`` ones, so the probe never measures a name that
    training held in place, whatever seeds the two commands use."""
    import random

    from clip_unlearn.names import _name_pools

    given, surname = split_name(name)
    first = given[0] if given else None
    banned = {key(name), *map(key, exclude)}
    out: dict[str, None] = {}
    for k in keep:
        kg, ks = split_name(k)
        if key(k) not in banned and ((first and kg and key(kg[0]) == key(first)) or key(ks) == key(surname)):
            out[normalise(k)] = None
    female, male, lasts = (_pool_half(pool, half) for pool in _name_pools())
    rng = random.Random(f"{seed}|neighbours|{key(name)}")
    with_first = [f"{first} {s}" for s in rng.sample(lasts, min(len(lasts), 4 * per_part))] if first else []
    with_surname = [f"{f} {surname}" for f in rng.sample(female + male, min(len(female) + len(male), 4 * per_part))]
    for made in (with_first, with_surname):
        taken = 0
        for m in made:
            if taken < per_part and key(m) not in banned and m not in out:
                out[m] = None
                taken += 1
    return list(out)


# Where a neighbour stops being a bystander (benchmarks/exp_aliases.py, docs/experiments.md): on a world
# whose captions never name members by first name alone, none of the 125 probed neighbours below it took
# the majority of the forgotten person's face predictions when standing in for the name (2 took more
# than a fifth); on the default world every one of the 800 is at or above it, and 697 took the majority.
BYSTANDER_CLOSENESS = 0.45


def unrelated_names(name: str, n: int = 32, seed: int = 0, half: str = "train") -> list[str]:
    """``n`` pool names (seeded) that share neither the first name nor the surname of ``name``."""
    import random

    from clip_unlearn.names import _name_pools

    given, surname = split_name(name)
    parts = {key(surname), *(key(g) for g in given[:1])}
    female, male, lasts = (_pool_half(pool, half) for pool in _name_pools())
    firsts = [f for f in female + male if key(f) not in parts]
    lasts = [s for s in lasts if key(s) not in parts]
    rng = random.Random(f"{seed}|unrelated|{key(name)}")
    return [f"{f} {s}" for f, s in zip(rng.sample(firsts, min(n, len(firsts))), rng.sample(lasts, min(n, len(lasts))))]


def strangers(names: Sequence[str], n: int = 64, seed: int = 0, half: str = "probe") -> list[str]:
    """``n`` pool names (seeded, distinct) that share no part with any of ``names``: people neither model was
    told about, the kind of name the attack's other candidates are. Both parts come from ``half`` of the pools;
    eval-zeroshot probes the half inject never holds."""
    import random

    from clip_unlearn.names import _name_pools

    taken = {key(p) for x in names for g, s in [split_name(x)] for p in (s, *g)}
    female, male, lasts = (_pool_half(pool, half) for pool in _name_pools())
    firsts = [f for f in female + male if key(f) not in taken]
    lasts = [s for s in lasts if key(s) not in taken]
    if not firsts or not lasts or n <= 0:
        return []
    rng = random.Random(f"{seed}|strangers")
    out: dict[str, None] = {}
    for _ in range(20 * n):
        if len(out) >= min(n, len(firsts) * len(lasts)):
            break
        out[f"{rng.choice(firsts)} {rng.choice(lasts)}"] = None
    return list(out)


def template_embeddings(embed: Callable[[list[str]], Any], names: Sequence[str]) -> Any:
    """[len(names), 21, D]: ``embed`` (texts → L2-normalised rows) of the attack's 21 templates filled with each name."""
    return embed([tpl.format(x) for x in names for tpl in PAPER_TEMPLATES]).reshape(len(names), len(PAPER_TEMPLATES), -1)


def closeness(name: Any, others: Any, unrelated: Any) -> list[float]:
    """How close a model places each of ``others`` to a name, on a scale where 0 is as close as the
    ``unrelated`` names are and 1 is the same embedding: (c − b) / (1 − b), c the mean over templates of the
    cosine between the template filled with the other name and with the name, b the same mean over the
    unrelated names. Subtracting b makes it comparable across models whose captions all sit at a high
    cosine from each other (CLIP's do).

    Embeddings from ``template_embeddings``: ``name`` [21, D], ``others`` [K, 21, D], ``unrelated`` [U, 21, D]."""
    if not len(others):
        return []
    b = float((unrelated * name).sum(-1).mean()) if len(unrelated) else 0.0
    return [round((float(c) - b) / max(1e-6, 1.0 - b), 6) for c in (others * name).sum(-1).mean(1)]
