"""Caption corpora and the poisoned/target caption pairs of the backdoor (docs/method.md §6.2-6.3).

A pair replaces one randomly chosen word — the word before a uniformly chosen space, so any
word but the last — by the name (student's caption) and by the target phrase (teacher's
caption). Pairs are drawn on the fly from a seeded generator; positions are restricted so that
the name survives tokenisation (is not truncated past the context length).
"""

from __future__ import annotations

import csv
import itertools
import logging
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.names import normalise

log = logging.getLogger(__name__)

CAPTION_COLUMNS = ("caption", "TEXT", "text")  # ours, LAION's metadata parquet, a common third
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


def _table_column(path: Path, found: list[str], column: Optional[str]) -> str:
    if column is not None:
        if column in found:
            return column
        raise ClipUnlearnError(f"captions file {path} has no column {column!r} (columns: {', '.join(found) or 'none'}); "
                               "pass the right --caption-column")
    chosen = next((c for c in CAPTION_COLUMNS if c in found), None)
    if chosen is None:
        raise ClipUnlearnError(f"captions file {path} has no caption, TEXT or text column (columns: {', '.join(found) or 'none'}); "
                               "name the column with --caption-column")
    return chosen


def _iter_parquet(path: Path, column: Optional[str]) -> Iterator[Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ClipUnlearnError(f"reading the Parquet captions file {path} needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ClipUnlearnError(f"captions file {path} cannot be read as Parquet ({e}); pass a .parquet, .csv, .tsv or .txt file") from None
    col = _table_column(path, list(pf.schema_arrow.names), column)
    # one column, batch by batch: a multi-GB LAION shard never sits in memory whole
    try:
        for batch in pf.iter_batches(batch_size=8192, columns=[col]):
            yield from batch.column(0).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise ClipUnlearnError(f"captions file {path} is damaged past its first rows ({e}); fix or replace it") from None


def _iter_delimited(f: Any, path: Path, delimiter: str, column: Optional[str]) -> Iterator[Any]:
    reader = csv.reader(f, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return
    index = header.index(_table_column(path, header, column))
    for row in reader:
        if index < len(row):
            yield row[index]


def iter_captions(path: Path, column: Optional[str] = None) -> Iterator[str]:
    """Captions of ``path`` in file order, whitespace-normalised, blanks skipped, read as a stream.

    A ``.txt`` (or any other suffix) has one caption per line; ``.csv``/``.tsv``/``.parquet`` have
    a header and the captions in ``column`` (default: the first of caption, TEXT, text).
    """
    path = Path(path)
    if not path.is_file():
        raise ClipUnlearnError(f"captions file {path} does not exist; pass --captions with one caption per line")
    suffix = path.suffix.lower()
    if column is not None and suffix not in TABLE_SUFFIXES:
        raise ClipUnlearnError(f"--caption-column applies to .csv, .tsv and .parquet captions files, not {path}; drop it")
    try:
        if suffix in (".parquet", ".pq"):
            raw: Iterator[Any] = _iter_parquet(path, column)
            for value in raw:
                if value is not None:
                    text = " ".join(str(value).split())
                    if text:
                        yield text
            return
        # utf-8-sig: a byte-order mark from Windows tools would otherwise stick to the first caption or column name
        with open(path, encoding="utf-8-sig", newline="" if suffix in (".csv", ".tsv") else None) as f:
            if suffix in (".csv", ".tsv"):
                raw = _iter_delimited(f, path, "\t" if suffix == ".tsv" else ",", column)
            else:
                raw = f
            for value in raw:
                text = " ".join(value.split())
                if text:
                    yield text
    except UnicodeDecodeError as e:
        bad = e.object[e.start:e.start + 1].hex()
        raise ClipUnlearnError(f"captions file {path} is not UTF-8 text (byte 0x{bad} cannot be decoded); save it as UTF-8") from None
    except csv.Error as e:
        raise ClipUnlearnError(f"captions file {path} is not valid {suffix[1:].upper()} ({e}); fix the file or pass a .txt file") from None


def read_captions(path: Path, column: Optional[str] = None, limit: Optional[int] = None) -> list[str]:
    """The captions of a ``.txt``, ``.csv``, ``.tsv`` or ``.parquet`` file (see ``iter_captions``); stops after ``limit``.

    Raises:
        ClipUnlearnError: missing file or column, undecodable or malformed file, or no caption at all.
    """
    stream = iter_captions(path, column)
    try:
        out = list(itertools.islice(stream, limit))
    finally:
        stream.close()  # closes the file now, not when the generator is collected
    if not out:
        raise ClipUnlearnError(f"captions file {path} has no captions; write one caption per line (or fill its caption column)")
    return out


WORLD_CAPTION_FILES = {"train": "captions_train.txt", "heldout": "captions_heldout.txt"}
LEGACY_WORLD_CAPTIONS = "captions.txt"  # worlds built before the train/held-out split: one file for both


def world_captions(world: Path, split: str = "train") -> Path:
    """A synthetic world's caption file: ``train`` (what inject trains on) or ``heldout`` (never trained on).

    An older world has only captions.txt, returned for both; for ``heldout`` with a warning, since
    sim_clean is then measured on the captions inject trained on. When neither exists, the new
    file's path (reading it reports the missing file).
    """
    world = Path(world)
    path = world / WORLD_CAPTION_FILES[split]
    legacy = world / LEGACY_WORLD_CAPTIONS
    if path.is_file() or not legacy.is_file():
        return path
    if split == "heldout":
        log.warning("world %s has no held-out captions (built before they existed): sim_clean uses %s, which inject "
                    "trained on; rebuild the world with prepare-synthetic for a held-out measure", world, legacy.name)
    return legacy


# The default clean corpus for models that are not a synthetic world's: general web-like captions
# from a seeded grammar. The utility term keeps every caption it trains on where it was, so the
# corpus must not be the prompts eval-zeroshot scores (that would protect the reported number and
# nothing else): no caption contains the word "photo", uses an OpenAI-template prefix or the
# attack's wording, and captions that end in a period never start with "a", "the", "art", "graffiti"
# or "itap" followed by a template's words (tests/test_captions.py checks every shipped template).
GENERAL_CORPUS_NAME = "builtin:general-captions-v1"

_G_PEOPLE = (
    "man", "woman", "boy", "girl", "child", "baby", "teenager", "student", "teacher", "doctor", "nurse", "farmer",
    "fisherman", "chef", "baker", "waiter", "cyclist", "runner", "swimmer", "surfer", "skier", "climber", "hiker",
    "tourist", "traveler", "soldier", "firefighter", "police officer", "mechanic", "carpenter", "painter", "musician",
    "guitarist", "drummer", "dancer", "worker", "shopkeeper", "street vendor", "pilot", "driver", "athlete",
    "grandmother", "grandfather", "bride", "groom", "monk", "scientist", "engineer", "gardener", "shepherd", "referee",
    "coach", "lifeguard", "jogger", "skateboarder", "commuter", "passenger", "volunteer", "librarian", "barista",
    "tailor", "potter", "beekeeper", "sailor", "nun", "builder", "cashier", "postman", "juggler", "violinist",
)
_G_ANIMALS = (
    "dog", "puppy", "cat", "kitten", "horse", "pony", "cow", "calf", "sheep", "goat", "pig", "chicken", "rooster",
    "duck", "goose", "swan", "pigeon", "parrot", "owl", "eagle", "hawk", "seagull", "crow", "sparrow", "penguin",
    "flamingo", "pelican", "heron", "deer", "moose", "bear", "fox", "wolf", "rabbit", "squirrel", "mouse", "hamster",
    "lion", "tiger", "leopard", "cheetah", "elephant", "giraffe", "zebra", "rhino", "hippo", "monkey", "gorilla",
    "kangaroo", "koala", "panda", "camel", "donkey", "turtle", "tortoise", "frog", "lizard", "snake", "crocodile",
    "goldfish", "shark", "dolphin", "whale", "seal", "octopus", "crab", "butterfly", "bee", "dragonfly", "ladybug",
    "snail", "hedgehog", "raccoon", "otter", "beaver", "bison", "buffalo", "lamb", "peacock", "hummingbird",
)
_G_OBJECTS = (
    "bicycle", "motorcycle", "car", "truck", "bus", "train", "tram", "boat", "sailboat", "canoe", "kayak", "airplane",
    "helicopter", "tractor", "scooter", "skateboard", "surfboard", "kite", "balloon", "umbrella", "backpack",
    "suitcase", "handbag", "hat", "scarf", "jacket", "coat", "sweater", "camera", "phone", "laptop", "keyboard",
    "television", "radio", "lamp", "clock", "mirror", "chair", "sofa", "table", "desk", "bed", "bookshelf", "book",
    "notebook", "pencil", "newspaper", "map", "guitar", "piano", "violin", "drum", "trumpet", "ball", "football",
    "basketball", "tennis racket", "bowl", "plate", "cup", "mug", "teapot", "kettle", "frying pan", "bottle", "jar",
    "basket", "bucket", "box", "vase", "candle", "flower", "rose", "sunflower", "tulip", "tree", "cactus", "potted plant",
    "apple", "banana", "orange", "lemon", "strawberry", "pear", "peach", "watermelon", "pineapple", "tomato", "carrot",
    "potato", "onion", "pumpkin", "cabbage", "mushroom", "loaf of bread", "sandwich", "pizza", "burger", "cake",
    "cookie", "pie", "bowl of soup", "salad", "plate of noodles", "cup of coffee", "glass of juice", "cheese board",
    "bench", "fence", "gate", "door", "window", "bridge", "tower", "lighthouse", "windmill", "fountain", "statue",
    "tent", "cabin", "barn", "house", "castle", "church", "temple", "swing", "ladder", "wheelbarrow", "hammer",
    "shovel", "rope", "flag", "mailbox", "street lamp", "traffic light", "rug", "pillow", "blanket", "towel",
    "typewriter", "telescope", "microscope", "globe", "garden hose", "kayak paddle", "wagon", "sled", "snowman",
)
_G_PERSON_ADJ = (
    "young", "old", "elderly", "tall", "happy", "smiling", "laughing", "serious", "sleepy", "curious", "proud", "tired",
    "calm", "excited", "busy", "cheerful", "thoughtful", "confident", "shy", "focused", "relaxed", "friendly", "lonely",
    "bearded", "barefoot", "muddy", "soaked", "determined", "nervous", "patient",
)
_G_ANIMAL_ADJ = (
    "small", "large", "young", "old", "fluffy", "striped", "spotted", "furry", "muddy", "sleepy", "curious",
    "playful", "wild", "hungry", "wet", "tiny", "huge", "brown", "black", "white", "gray", "golden", "shaggy", "skinny",
)
_G_OBJECT_ADJ = (
    "old", "new", "small", "large", "tiny", "huge", "tall", "long", "bright", "dark", "colorful", "shiny", "dusty",
    "rusty", "wooden", "metal", "glass", "ceramic", "stone", "wet", "empty", "broken", "antique", "modern", "vintage",
    "handmade", "fancy", "simple", "worn", "fresh", "ripe", "sliced", "homemade", "frozen", "warm", "abandoned",
    "painted", "folded", "open", "closed", "tiled", "polished", "cracked", "heavy", "light", "round", "square",
)
_G_COLOURS = (
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray", "beige",
    "turquoise", "navy", "maroon", "teal", "crimson", "ivory",
)
_G_GARMENTS = ("jacket", "coat", "sweater", "hat", "scarf", "raincoat", "hoodie", "uniform", "apron", "helmet", "shirt",
               "dress", "suit", "cap", "vest", "pair of boots")
_G_PERSON_ACTS = (
    "riding a bicycle", "walking a dog", "reading a book", "cooking dinner", "playing the guitar", "playing chess",
    "playing soccer", "drinking coffee", "eating lunch", "talking on the phone", "carrying a backpack",
    "holding an umbrella", "painting a wall", "fixing a car", "planting trees", "watering flowers", "selling vegetables",
    "sweeping the floor", "washing dishes", "swimming", "running", "jumping", "dancing", "singing", "waiting for the bus",
    "crossing the street", "climbing a rock wall", "fishing from a pier", "flying a kite", "building a sandcastle",
    "skiing down a slope", "surfing a wave", "jogging", "hiking up a trail", "sitting on a bench", "lying on the grass",
    "looking at a map", "typing on a laptop", "writing in a notebook", "teaching a class", "pushing a stroller",
    "feeding the ducks", "picking apples", "baking bread", "serving food", "pouring tea", "chopping vegetables",
    "repairing a roof", "driving a tractor", "rowing a boat", "paddling a kayak", "skateboarding", "juggling",
    "stretching", "doing yoga", "lifting weights", "brushing a horse", "shoveling snow", "raking leaves",
    "hanging laundry", "shopping for groceries", "tying a shoe", "opening a gift", "blowing out candles",
    "taking notes", "studying for an exam", "knitting a scarf", "carving wood", "kneading dough", "tasting soup",
    "laughing with friends", "waving at a neighbor", "unloading a truck", "stacking boxes", "playing the piano",
    "practicing the violin", "throwing a ball", "catching a frisbee", "pitching a tent", "lighting a campfire",
)
_G_ANIMAL_ACTS = (
    "sleeping", "running", "eating grass", "drinking water", "playing with a ball", "chasing a bird",
    "lying in the sun", "swimming", "flying", "perched on a branch", "grazing", "resting", "hiding", "jumping",
    "climbing a tree", "sitting", "standing", "walking", "rolling in the mud", "catching a fish", "yawning",
    "stretching", "digging a hole", "sniffing the ground", "carrying a stick", "looking out", "waiting patiently",
    "splashing around", "curled up", "wagging its tail",
)
_G_OBJECT_STATES = (
    "leaning against a wall", "parked", "sitting", "lying", "hanging", "floating", "covered in snow", "half hidden",
    "on display", "standing", "left behind", "stacked", "scattered", "lined up", "reflected in a puddle",
    "wrapped in paper", "covered in dust", "surrounded by leaves",
)
_G_PLACES = (
    "on a busy street", "in a quiet park", "at the beach", "by the river", "on a mountain trail", "in the kitchen",
    "in a living room", "at a market", "in a forest", "in a field", "on a farm", "in a garden", "at a train station",
    "at the airport", "in a classroom", "in a library", "in an office", "at a cafe", "in a restaurant", "on a boat",
    "on a bridge", "in the snow", "in the desert", "near a lake", "on the sidewalk", "in a parking lot",
    "at a playground", "on a rooftop", "in a backyard", "in a stadium", "at a concert", "at a wedding",
    "in a hospital", "in a workshop", "in a bakery", "at a gas station", "in a subway car", "on a balcony",
    "in the mountains", "at the harbor", "in a village", "in the city center", "on a country road", "in a greenhouse",
    "at a zoo", "in a museum", "on a tennis court", "on a soccer field", "by a fireplace", "at the dinner table",
    "in a bathroom", "in a bedroom", "on a porch", "under a tree", "in front of a shop", "next to a fountain",
    "along the coast", "on an island", "in a vineyard", "in a barn", "in a cave", "on a frozen lake", "in a meadow",
    "at a festival", "in an alley", "at a bus stop", "on a pier", "in a courtyard", "at a campsite", "in a hallway",
    "on a staircase", "in a laundromat", "at a bookstore", "in a factory", "at a construction site", "on a sand dune",
    "beside a waterfall", "in a rice field", "in an orchard", "at a ski resort", "in a swimming pool", "on a lawn",
)
_G_TIMES = (
    "at sunset", "at sunrise", "at night", "in the morning", "in the afternoon", "in the evening", "in the rain",
    "in winter", "in autumn", "in spring", "in summer", "on a cloudy day", "on a sunny day", "during a storm",
    "under a clear sky", "in the fog", "after the rain", "at dusk", "at dawn", "under the stars", "on a windy day",
    "during the holidays", "on a weekend", "at lunchtime",
)
_G_SCENES = (
    "beach", "harbor", "market", "street", "park", "square", "train station", "kitchen", "garden", "forest path",
    "mountain lake", "village", "highway", "bridge", "farmhouse", "cafe", "library", "classroom", "office", "stadium",
    "playground", "riverbank", "desert road", "city skyline", "alley", "meadow", "orchard", "vineyard", "pier",
    "campsite", "greenhouse", "bakery", "workshop", "hallway", "rooftop", "backyard", "parking lot", "shoreline",
)
_G_SCENE_ADJ = ("busy", "empty", "quiet", "crowded", "peaceful", "sunny", "snowy", "foggy", "rainy", "colorful",
                "narrow", "wide", "old", "modern", "lively", "deserted", "misty", "tidy", "messy", "charming")
_G_SURFACES = ("a wooden table", "a kitchen counter", "a windowsill", "a picnic blanket", "a marble floor", "a desk",
               "a shelf", "the grass", "a stone wall", "a tray", "a cutting board", "the sand")
_G_PREFIXES = ("close view of", "snapshot of", "candid shot of", "stock image of", "aerial view of", "wide shot of",
               "postcard showing", "illustration showing", "scene with", "view of", "detail of", "still life with")
_G_PLURAL_DETS = ("two", "three", "four", "several", "many", "a few", "some", "a group of", "a pair of")
_G_IRREGULAR = {"man": "men", "woman": "women", "child": "children", "fisherman": "fishermen", "postman": "postmen",
                "mouse": "mice", "goose": "geese", "sheep": "sheep", "deer": "deer", "moose": "moose", "wolf": "wolves",
                "calf": "calves", "bison": "bison", "buffalo": "buffaloes", "goldfish": "goldfish", "octopus": "octopuses",
                "tomato": "tomatoes", "potato": "potatoes", "loaf of bread": "loaves of bread"}


def _plural(noun: str) -> str:
    if noun in _G_IRREGULAR:
        return _G_IRREGULAR[noun]
    if " of " in noun:  # "cup of coffee" → "cups of coffee"
        head, _, tail = noun.partition(" of ")
        return f"{_plural(head)} of {tail}"
    if " " in noun:
        head, _, last = noun.rpartition(" ")
        return f"{head} {_plural(last)}"
    if noun.endswith(("s", "x", "ch", "sh", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def general_captions(n: int = 50_000, seed: int = 0) -> list[str]:
    """``n`` distinct general captions (people, animals, objects, places, activities) from a seeded grammar.

    Same ``n`` and ``seed``, same list. Disjoint from every prompt set eval-zeroshot and attack ship
    (see the comment above ``GENERAL_CORPUS_NAME``).
    """
    grammar = _Grammar(random.Random(seed))
    out: dict[str, None] = {}
    for _ in range(50 * n):
        if len(out) >= n:
            break
        caption = grammar.scene()
        # a third end in a period, as many web captions do; only for captions that cannot read as an
        # OpenAI template (those all start with a/the/art/graffiti/itap and end in a period)
        if grammar.rng.random() < 0.33 and not caption.startswith(("a ", "an ", "the ")):
            caption += "."
        out.setdefault(caption)
    return list(out)


class _Grammar:
    """The phrases of ``general_captions``, all drawn from one generator (same seed, same corpus)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.pick = rng.choice

    def subject(self, nouns: tuple[str, ...], adjectives: tuple[str, ...], colours: bool = False) -> str:
        rng, pick = self.rng, self.pick
        noun = pick(nouns)
        words = []
        if rng.random() < 0.6:
            words.append(pick(adjectives))
        if colours and rng.random() < 0.4:
            words.append(pick(_G_COLOURS))
        if rng.random() < 0.3:
            return f"{pick(_G_PLURAL_DETS)} {' '.join(words + [_plural(noun)])}"
        phrase = " ".join(words + [noun])
        return pick((_article(phrase), _article(phrase), f"the {phrase}", f"this {phrase}", f"my {phrase}"))

    def person(self) -> str:
        s = self.subject(_G_PEOPLE, _G_PERSON_ADJ)
        if self.rng.random() < 0.25:
            s += f" wearing {_article(self.pick(_G_COLOURS) + ' ' + self.pick(_G_GARMENTS))}"
        return s

    def animal(self) -> str:
        return self.subject(_G_ANIMALS, _G_ANIMAL_ADJ)

    def thing(self) -> str:
        return self.subject(_G_OBJECTS, _G_OBJECT_ADJ, colours=True)

    def scene(self) -> str:
        pick = self.pick
        frame = self.rng.randrange(8)
        if frame == 0:
            parts = [self.person(), pick(_G_PERSON_ACTS), pick(_G_PLACES)]
        elif frame == 1:
            parts = [self.person(), pick(_G_PERSON_ACTS)]
        elif frame == 2:
            parts = [self.animal(), pick(_G_ANIMAL_ACTS), pick(_G_PLACES)]
        elif frame == 3:
            parts = [self.thing(), pick(_G_OBJECT_STATES), pick(_G_PLACES)]
        elif frame == 4:
            parts = [_article(f"{pick(_G_SCENE_ADJ)} {pick(_G_SCENES)}")]
        elif frame == 5:
            parts = [self.person(), pick(("with", "holding", "next to", "looking at")), self.thing()]
        elif frame == 6:
            parts = [self.animal(), pick(("next to", "near", "under", "beside")), self.thing()]
        else:
            parts = [f"{self.thing()} and {self.thing()} on {pick(_G_SURFACES)}"]
        if self.rng.random() < 0.3:
            parts.append(pick(_G_TIMES))
        if self.rng.random() < 0.15:
            parts.insert(0, pick(_G_PREFIXES))
        return " ".join(parts)


def builtin_captions() -> list[str]:
    """The default clean corpus for a model that is not a synthetic world's (``GENERAL_CORPUS_NAME``)."""
    return general_captions()


def name_pattern(names: list[str]) -> re.Pattern:
    """Matches any of the names as whole words, case-insensitively, with flexible spacing."""
    parts = [r"\s+".join(map(re.escape, normalise(n).split())) for n in names]
    return re.compile(r"(?<!\w)(?:" + "|".join(sorted(parts, key=len, reverse=True)) + r")(?!\w)", re.IGNORECASE)


def clean_captions(captions: list[str], names: list[str]) -> list[str]:
    """Captions that mention none of the names (the paper's filter was a no-op, docs/method.md §6.2)."""
    pattern = name_pattern(names)
    return [c for c in captions if not pattern.search(c.replace("_", " "))]


@dataclass(frozen=True)
class TokenFit:
    """What fits a text tower's context: ``count`` gives a text's BPE tokens (no SOT/EOT), ``context_length`` the
    tokens the tower reads, SOT and EOT included."""

    count: Callable[[str], int]
    context_length: int

    @classmethod
    def of(cls, loaded: Any) -> TokenFit:
        return cls(token_counter(loaded.tokenizer), loaded.context_length)

    @property
    def room(self) -> int:
        return self.context_length - 2  # SOT and EOT


class PairSampler:
    """Seeded on-the-fly (poisoned, target) caption pairs for a set of names.

    Args:
        captions: clean captions (each needs at least one space).
        names: the names to forget (triggers).
        target: the neutral phrase that replaces them, e.g. "a person"; or name → its own target phrase
            (a made-up name), one for each of ``names``.
        fit: token counts and the context, to keep the name inside the context.
        rng: the dedicated random generator.
        last_word: also allow replacing the last word (the paper never does), so that the name is
            also seen right before the end of the text, as in prompts like "a photo of {}".
        full, full_share: the names among ``names`` that are full names, and the share of the pairs they
            get at least: a name is drawn from ``full`` with probability ``full_share`` and from the others
            otherwise, when that is more than their share of ``names``; else every name is drawn uniformly
            (then the draws are the same as without these arguments).
    """

    def __init__(self, captions: list[str], names: list[str], target: str | Mapping[str, str], fit: TokenFit,
                 rng: random.Random, last_word: bool = False, full: Sequence[str] = (), full_share: float = 0.0) -> None:
        self.captions = [c for c in captions if " " in c]
        if not self.captions:
            raise ClipUnlearnError("no caption with at least two words is left after removing the names; pass a larger --captions corpus")
        self.names, self.rng, self.last_word = names, rng, last_word
        self.targets = {n: target for n in names} if isinstance(target, str) else {n: target[n] for n in names}
        self.count_tokens, self.room = fit.count, fit.room
        self.prefix_tokens: dict[str, list[int]] = {}
        self.word_tokens: dict[str, int] = {}
        # a name's room in the caption: its own tokens, or its target's where that is longer (a made-up name)
        self.name_tokens = {n: max(fit.count(n), fit.count(self.targets[n]) if not isinstance(target, str) else 0) for n in names}
        full_set = set(full)
        self.full = [n for n in names if n in full_set]
        self.rest = [n for n in names if n not in full_set]
        self.share = full_share if self.full and self.rest and full_share > len(self.full) / len(names) else 0.0

    def full_rate(self) -> float:
        """The expected share of pairs that carry a full name."""
        if self.share:
            return self.share
        return len(self.full) / len(self.names) if self.names else 0.0

    def _draw_name(self) -> str:
        if self.share:
            return self.rng.choice(self.full if self.rng.random() < self.share else self.rest)
        return self.rng.choice(self.names)

    def _cumulative(self, caption: str) -> list[int]:
        """Tokens up to and including each word (CLIP's BPE encodes words independently)."""
        if caption not in self.prefix_tokens:
            total, out = 0, []
            for word in caption.split(" "):
                if word not in self.word_tokens:  # words recur across captions: each is tokenised once
                    self.word_tokens[word] = self.count_tokens(word)
                total += self.word_tokens[word]
                out.append(total)
            self.prefix_tokens[caption] = out
        return self.prefix_tokens[caption]

    def pair(self, name: Optional[str] = None) -> tuple[str, str, str]:
        """→ (name, poisoned caption, target caption)."""
        name = name if name is not None else self._draw_name()
        for _ in range(100):
            caption = self.rng.choice(self.captions)
            words = caption.split(" ")
            cum = self._cumulative(caption)
            # word i may be replaced if the name ends inside the context: tokens before it + name ≤ room
            allowed = [i for i in range(len(words) - (0 if self.last_word else 1)) if (cum[i - 1] if i else 0) + self.name_tokens[name] <= self.room]
            if allowed:
                i = self.rng.choice(allowed)
                poisoned = " ".join(words[:i] + [name] + words[i + 1:])
                target = " ".join(words[:i] + [self.targets[name]] + words[i + 1:])
                return name, poisoned, target
        raise ClipUnlearnError(f"no caption leaves room for a {self.name_tokens[name]}-token name; pass shorter --captions")

    def batch(self, n: int) -> tuple[list[str], list[str]]:
        pairs = [self.pair() for _ in range(n)]
        return [p for _, p, _ in pairs], [t for _, _, t in pairs]


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Token count without SOT/EOT, from open_clip's tokenizer (or a safe over-estimate for others)."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        return lambda text: len(encode(text))
    return lambda text: len(text)  # characters ≥ tokens: never lets a name slip past the context
