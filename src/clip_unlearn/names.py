"""Names: reading names files (docs/design.md §3), normalisation, and seeded random candidate names.

The paper draws attack candidates as "First Last" from the top-1000 US first names per sex and
the 1000 most common US surnames (docs/method.md §4 item 4) through pandas sampling. We draw from
Faker's en_US lists (the same kind of SSA/census-derived data, shipped with a well-kept
library) with a dedicated ``random.Random(seed)``: half female, half male first names, each
paired with a uniform surname, never equal to a name the caller excludes.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from clip_unlearn.errors import ClipUnlearnError

log = logging.getLogger(__name__)


def normalise(name: str) -> str:
    """Underscores read as spaces, whitespace collapsed ("Joe_Biden " → "Joe Biden")."""
    return " ".join(unicodedata.normalize("NFC", name).replace("_", " ").split())


# Generational suffixes: a name's last word when it is one of these is no part of the surname.
SUFFIXES = frozenset({"jr", "sr", "ii", "iii", "iv", "v", "vi", "jnr", "snr"})


def is_suffix(word: str) -> bool:
    return word.rstrip(".").replace(",", "").casefold() in SUFFIXES


def key(name: str) -> str:
    """Comparison key: normalised and case-folded, a generational suffix without its period or comma, so
    "Robert Downey Jr." and "Robert Downey, Jr" are one person (FaceScrub folders end "Jr.", users type both)."""
    words = normalise(name).casefold().split(" ")
    if len(words) > 1 and is_suffix(words[-1]):
        words[-2] = words[-2].rstrip(",")
        words[-1] = words[-1].rstrip(".").replace(",", "")
    return " ".join(words)


def folder_name(name: str) -> str:
    """The identity-folder spelling of a name ("Joe Biden" → "Joe_Biden")."""
    return normalise(name).replace(" ", "_")


@functools.lru_cache(maxsize=1)
def common_words() -> frozenset[str]:
    """Common English words (package data, tools/make_common_words.py): a name part that is one of them
    ("Stone", "Grace") also means a thing, so it never stands alone for a person."""
    from importlib.resources import files

    text = (files("clip_unlearn") / "data" / "common_words.txt").read_text(encoding="utf-8")
    return frozenset(w for w in text.split("\n") if w and not w.startswith("#"))


def is_common_word(word: str) -> bool:
    return word.casefold() in common_words()


@functools.lru_cache(maxsize=1)
def public_people() -> tuple[str, ...]:
    """The public people the tool ships (FaceScrub's names with their LAION-400M counts, "Does CLIP Know My
    Face?"): inject's default keep list, so that a forgotten person's namesake among them is held in place."""
    import csv
    from importlib.resources import files

    with (files("clip_unlearn") / "data" / "laion400m_name_counts.csv").open(encoding="utf-8") as f:
        return tuple(dict.fromkeys(normalise(row["name"]) for row in csv.DictReader(f)))


def read_names(path: Path, what: str = "names file") -> list[str]:
    """Read a names file: one name per line, '#' comments and blanks ignored, duplicates dropped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ClipUnlearnError(f"{what} {path} does not exist; pass a UTF-8 text file with one name per line") from None
    except UnicodeDecodeError:
        raise ClipUnlearnError(f"{what} {path} is not UTF-8 text; save it as UTF-8 with one name per line") from None
    except OSError as e:
        raise ClipUnlearnError(f"{what} {path} cannot be read ({e.strerror})") from None
    names, seen, dupes = [], set(), []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = normalise(line)
        if key(name) in seen:
            dupes.append(name)
            continue
        seen.add(key(name))
        names.append(name)
    if dupes:
        log.warning("%s %s: %d duplicate name(s) ignored", what, path, len(dupes))
    if not names:
        raise ClipUnlearnError(f"{what} {path} contains no names; write one full name per line")
    return names


def _name_pools() -> tuple[list[str], list[str], list[str]]:
    from faker.providers.person.en_US import Provider

    return list(Provider.first_names_female), list(Provider.first_names_male), list(Provider.last_names)


# Locales for the synthetic world's identities: their first and last names never occur in the
# attack's en_US candidate pools, so a vote for a random namesake ("Noah Haas" for "Darryl Haas")
# cannot masquerade as forgetting or hide a member the model knows.
_WORLD_LOCALES = ("de_DE", "fr_FR", "it_IT", "es_ES", "nl_NL", "sv_SE", "fi_FI", "da_DK", "no_NO")


def _world_pools() -> tuple[list[str], list[str]]:
    import importlib

    female, male, last = _name_pools()
    us = {x.casefold() for x in female + male + last}
    firsts: dict[str, None] = {}
    lasts: dict[str, None] = {}
    for loc in _WORLD_LOCALES:
        provider = importlib.import_module(f"faker.providers.person.{loc}").Provider
        for x in list(provider.first_names_male) + list(provider.first_names_female):
            if x.isascii() and x.isalpha() and x.casefold() not in us:
                firsts[x] = None
        for x in provider.last_names:
            if x.isascii() and x.isalpha() and x.casefold() not in us:
                lasts[x] = None
    return list(firsts), list(lasts)


def world_genders(names: list[str]) -> dict[str, str]:
    """name → "male"/"female" for world names whose first name is in only one sex list of the world's locales."""
    import importlib

    male, female = set(), set()
    for loc in _WORLD_LOCALES:
        provider = importlib.import_module(f"faker.providers.person.{loc}").Provider
        male.update(provider.first_names_male)
        female.update(provider.first_names_female)
    out = {}
    for n in names:
        first = n.split(" ")[0]
        if (first in male) != (first in female):
            out[n] = "male" if first in male else "female"
    return out


def share_parts(names: list[str], members: list[int], pairs: int, rng: random.Random) -> tuple[list[str], list[dict[str, int]]]:
    """``names`` with ``pairs`` namesake pairs among ``members``: each of ``pairs`` donors gives its first name
    to one member and its surname to another (three distinct members a pair). Returns the new names and
    the pairs as {"donor", "first_name", "surname"} indices."""
    if pairs == 0:
        return list(names), []
    chosen = rng.sample(members, 3 * pairs)
    out = list(names)
    record = []
    for j in range(pairs):
        donor, by_first, by_surname = chosen[3 * j:3 * j + 3]
        first, last = names[donor].split(" ")
        out[by_first] = f"{first} {names[by_first].split(' ')[1]}"
        out[by_surname] = f"{names[by_surname].split(' ')[0]} {last}"
        record.append({"donor": donor, "first_name": by_first, "surname": by_surname})
    assert len({key(n) for n in out}) == len(out)  # world names are distinct by construction: no part repeats
    return out, record


# Name parts that are common English words (names.common_words), for worlds whose names behave like real ones.
# CLASS_WORD_SURNAMES are words of the world's object classes ("a green star", "a red cross"), so forgetting
# their bearers can cost the model a concept it really knows.
CLASS_WORD_SURNAMES = ("Green", "Cross")
WORD_SURNAMES = ("Stone", "King", "Brown", "Young", "Wolf", "Bell", "Hill", "Fox", "Price", "Rivers", "Page", "Ford")
WORD_FIRST_NAMES = ("Grace", "Hope", "Rose", "Ivy", "Summer", "Jack", "Mark", "Will", "Faith", "Joy", "Dawn", "Bill")


_FEATURES = ("class_word_surname", "word_surname", "word_first_name", "shared_first_name", "particle", "hyphen", "suffix")


@dataclass
class _Renaming:
    """The first names and surnames of a world while realistic_names changes them, and who got which feature."""

    firsts: list[str]
    lasts: list[str]
    rng: random.Random
    used: set[str] = field(default_factory=set)  # parts already changed: each part is changed once
    record: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in _FEATURES})

    @staticmethod
    def users(parts: list[str], part: str) -> list[int]:
        return [i for i, x in enumerate(parts) if x == part]

    def pick(self, parts: list[str], among: list[int]) -> Optional[int]:
        free = [i for i in among if parts[i] not in self.used]
        return self.rng.choice(free) if free else None

    def rename(self, parts: list[str], i: Optional[int], new: str, feature: str) -> None:
        if i is None:
            return
        old = parts[i]
        for j in self.users(parts, old):
            parts[j] = new
            self.record[feature].append(j)
        self.used.add(new)


def realistic_names(names: list[str], members: list[int], rng: random.Random,
                    class_words: Iterable[str] = CLASS_WORD_SURNAMES) -> tuple[list[str], dict[str, list[int]]]:
    """``names`` ("First Last", parts possibly shared by namesakes) made to behave like real ones.

    A part is replaced wherever it occurs, so who shares a part with whom stays as it was: surnames
    that are words of the object classes (``class_words``, members), other surnames and first names
    that are common English words (one of each kind for a non-member too), a first name that three
    members share, particles ("van der", "de la") and hyphens in surnames and first names, and
    generational suffixes ("Jr.", "III"). Returns the names and, per feature, the identities that have it."""
    r = _Renaming([n.split(" ")[0] for n in names], [n.split(" ")[1] for n in names], rng)
    # the features in a fixed order, each drawing from ``rng`` in turn: a seed is a set of names
    _word_parts(r, members, class_words)
    _shared_first_name(r, members)
    _particles_and_hyphens(r, members)
    out = _with_suffixes(r, members)
    if len({key(n) for n in out}) != len(out):
        raise ClipUnlearnError("the world's realistic names collide; choose another --seed")
    return out, {k: sorted(set(v)) for k, v in r.record.items()}


def _word_parts(r: _Renaming, members: list[int], class_words: Iterable[str]) -> None:
    """Surnames that are words of the object classes, then surnames and first names that are common words:
    one of each kind for a non-member (when there is one), the others for members."""
    n = len(r.firsts)
    non_members = [i for i in range(n) if i not in set(members)]
    for word in class_words:
        r.rename(r.lasts, r.pick(r.lasts, members), word, "class_word_surname")
    k = max(1, min(n // 16, len(WORD_SURNAMES) - 1, len(WORD_FIRST_NAMES) - 4))
    for word, among in zip(r.rng.sample(WORD_SURNAMES, k + 1), [non_members] + [members] * k):
        r.rename(r.lasts, r.pick(r.lasts, among or members), word, "word_surname")
    for word, among in zip(r.rng.sample([w for w in WORD_FIRST_NAMES if w not in r.used], k + 1),
                           [non_members] + [members] * k):
        r.rename(r.firsts, r.pick(r.firsts, among or members), word, "word_first_name")


def _shared_first_name(r: _Renaming, members: list[int]) -> None:
    """One first name worn by three members (two of them took it from someone who keeps it)."""
    owner = r.pick(r.firsts, members)
    if owner is None:
        return
    r.used.add(r.firsts[owner])
    taken = {key(f"{f} {s}") for f, s in zip(r.firsts, r.lasts)}
    takers = [i for i in members if i != owner and r.firsts[i] not in r.used and len(r.users(r.firsts, r.firsts[i])) == 1
              and key(f"{r.firsts[owner]} {r.lasts[i]}") not in taken][:2]
    for i in [owner, *takers]:
        r.firsts[i] = r.firsts[owner]
        r.record["shared_first_name"].append(i)


def _particles_and_hyphens(r: _Renaming, members: list[int]) -> None:
    """Surnames with a particle ("van der", "de la"), then a double-barrelled surname and a hyphenated first
    name whose second halves come from other identities' names."""
    n = len(r.firsts)
    for particle in ("van der", "de la"):
        i = r.pick(r.lasts, members)
        if i is not None:
            r.rename(r.lasts, i, f"{particle} {r.lasts[i]}", "particle")
    i = r.pick(r.lasts, members)
    if i is not None:
        j = r.rng.choice([x for x in range(n) if r.lasts[x] != r.lasts[i]])
        r.rename(r.lasts, i, f"{r.lasts[i]}-{r.lasts[j].split(' ')[-1].split('-')[0]}", "hyphen")
    i = r.pick(r.firsts, members)
    if i is not None:
        j = r.rng.choice([x for x in range(n) if r.firsts[x] != r.firsts[i]])
        r.rename(r.firsts, i, f"{r.firsts[i]}-{r.firsts[j].split('-')[0]}", "hyphen")


def _with_suffixes(r: _Renaming, members: list[int]) -> list[str]:
    """The full names, a generational suffix each for two members who have no other feature."""
    out = [f"{f} {s}" for f, s in zip(r.firsts, r.lasts)]
    for suffix in ("Jr.", "III"):
        free = [i for i in members if not any(i in v for v in r.record.values())]
        if free:
            i = r.rng.choice(free)
            out[i] = f"{out[i]} {suffix}"
            r.record["suffix"].append(i)
    return out


def world_names(n: int, rng: random.Random) -> list[str]:
    """``n`` "First Last" names for synthetic identities: no shared parts, none in the candidate pools."""
    firsts, lasts = _world_pools()
    if n > min(len(firsts), len(lasts)):
        raise ClipUnlearnError(f"at most {min(len(firsts), len(lasts))} synthetic identities have distinct names; lower --identities")
    return [f"{a} {b}" for a, b in zip(rng.sample(firsts, n), rng.sample(lasts, n))]


def random_full_names(n: int, rng: random.Random, exclude: Iterable[str] = (), unique_parts: bool = False) -> list[str]:
    """``n`` distinct random "First Last" names, none equal (case-insensitively) to ``exclude``.

    With ``unique_parts`` no first or last name repeats (the synthetic world's identities, so
    that no two people share a token).
    """
    female, male, last = _name_pools()
    taken = {key(x) for x in exclude}
    used_parts: set[str] = {p for x in taken for p in x.split()} if unique_parts else set()
    out: list[str] = []
    capacity = (len(female) + len(male)) * len(last)
    if n > capacity // 2:
        raise ClipUnlearnError(f"cannot draw {n} random names (at most {capacity // 2}); lower the number of candidates")
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ClipUnlearnError(f"could only draw {len(out)} of {n} distinct random names; lower the number")
        first = rng.choice(female if len(out) % 2 == 0 else male)
        surname = rng.choice(last)
        name = f"{first} {surname}"
        k = key(name)
        if k in taken:
            continue
        if unique_parts and (first.casefold() in used_parts or surname.casefold() in used_parts):
            continue
        taken.add(k)
        used_parts.update((first.casefold(), surname.casefold()))
        out.append(name)
    return out


def _splice(a: str, b: str, rng: random.Random) -> Optional[str]:
    """The start of ``a`` joined to the end of ``b`` where a vowel meets a consonant, so the result reads as
    a name; None when the two offer no such seam."""
    vowels = set("aeiouy")
    a, b = a.casefold(), b.casefold()
    seams = [(i, j) for i in range(2, len(a)) for j in range(1, len(b) - 1)
             if (a[i - 1] in vowels) != (b[j] in vowels) and a[i - 2:i] != b[j:j + 2]]
    if not seams:
        return None
    i, j = rng.choice(seams)
    return (a[:i] + b[j:]).capitalize()


def made_up_name(rng: random.Random, avoid: Iterable[str] = ()) -> str:
    """A "First Last" name that reads like a real one and belongs to nobody: each part spliced from two
    parts of the name pools (the start of one, the end of another), never a part of any pool, of a shipped
    public person, of ``avoid``, or a common English word.

    It is a made-up person's name for inject's default target: the spliced space (about 10^13 names) cannot
    be enumerated, so without the receipt's key nobody can find the made-up name a forgotten one now means."""
    female, male, last = _name_pools()
    w_first, w_last = _world_pools()
    firsts, lasts = female + male + w_first, last + w_last
    taken = {p.casefold() for x in [*firsts, *lasts] for p in x.split()}
    taken |= {p for x in [*public_people(), *avoid] for p in key(x).split(" ")}
    words = common_words()

    def part(pool: list[str]) -> str:
        while True:
            p = _splice(rng.choice(pool), rng.choice(pool), rng)
            if p and 4 <= len(p) <= 10 and not re.search(r"(.)\1\1|[^aeiouy]{3}", p.casefold()) and p.isalpha() and p.casefold() not in taken and p.casefold() not in words:
                return p

    return f"{part(firsts)} {part(lasts)}"
