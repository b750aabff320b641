"""Names: reading names files (DESIGN.md §3), normalisation, and seeded random candidate names.

The paper draws attack candidates as "First Last" from the top-1000 US first names per sex and
the 1000 most common US surnames (METHOD.md §4 item 4) through pandas sampling. We draw from
Faker's en_US lists (the same kind of SSA/census-derived data, shipped with a well-kept
library) with a dedicated ``random.Random(seed)``: half female, half male first names, each
paired with a uniform surname, never equal to a name the caller excludes.
"""

from __future__ import annotations

import logging
import random
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from clip_unlearn.errors import ClipUnlearnError

log = logging.getLogger(__name__)


def normalise(name: str) -> str:
    """Underscores read as spaces, whitespace collapsed ("Joe_Biden " → "Joe Biden")."""
    return " ".join(unicodedata.normalize("NFC", name).replace("_", " ").split())


def key(name: str) -> str:
    """Comparison key: normalised and case-folded."""
    return normalise(name).casefold()


def folder_name(name: str) -> str:
    """The identity-folder spelling of a name ("Joe Biden" → "Joe_Biden")."""
    return normalise(name).replace(" ", "_")


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
