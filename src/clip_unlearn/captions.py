"""Caption corpora and the poisoned/target caption pairs of the backdoor (METHOD.md §6.2-6.3).

A pair replaces one randomly chosen word — the word before a uniformly chosen space, so any
word but the last — by the name (student's caption) and by the target phrase (teacher's
caption). Pairs are drawn on the fly from a seeded generator; positions are restricted so that
the name survives tokenisation (is not truncated past the context length).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.names import normalise


def read_captions(path: Path) -> list[str]:
    """A text file (one caption per line) or a CSV/Parquet file with a ``caption`` or ``TEXT`` column."""
    path = Path(path)
    if not path.is_file():
        raise ClipUnlearnError(f"captions file {path} does not exist; pass --captions with one caption per line")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet", ".pq"):
        import pandas as pd

        try:
            frame = pd.read_parquet(path) if suffix != ".csv" else pd.read_csv(path)
        except Exception as e:
            raise ClipUnlearnError(f"captions file {path} cannot be read as {suffix[1:]} ({e})") from None
        column = next((c for c in ("caption", "TEXT", "text") if c in frame.columns), None)
        if column is None:
            raise ClipUnlearnError(f"captions file {path} has no 'caption' or 'TEXT' column (columns: {', '.join(map(str, frame.columns))})")
        captions = [str(c) for c in frame[column].dropna()]
    else:
        try:
            captions = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ClipUnlearnError(f"captions file {path} is not UTF-8 text") from None
    captions = [" ".join(c.split()) for c in captions]
    return [c for c in captions if c]


def builtin_captions() -> list[str]:
    """The default corpus: open_clip's ImageNet class names in the OpenAI ImageNet templates (80,000 captions)."""
    from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    return [t(c) for c in IMAGENET_CLASSNAMES for t in OPENAI_IMAGENET_TEMPLATES]


def name_pattern(names: list[str]) -> re.Pattern:
    """Matches any of the names as whole words, case-insensitively, with flexible spacing."""
    parts = [r"\s+".join(map(re.escape, normalise(n).split())) for n in names]
    return re.compile(r"(?<!\w)(?:" + "|".join(sorted(parts, key=len, reverse=True)) + r")(?!\w)", re.IGNORECASE)


def clean_captions(captions: list[str], names: list[str]) -> list[str]:
    """Captions that mention none of the names (the paper's filter was a no-op, METHOD.md §6.2)."""
    pattern = name_pattern(names)
    return [c for c in captions if not pattern.search(c.replace("_", " "))]


class PairSampler:
    """Seeded on-the-fly (poisoned, target) caption pairs for a set of names.

    Args:
        captions: clean captions (each needs at least one space).
        names: the names to forget (triggers).
        target: the neutral phrase that replaces them, e.g. "a person".
        count_tokens: text → number of BPE tokens (no SOT/EOT), to keep the name inside the context.
        context_length: the text tower's context length.
        rng: the dedicated random generator.
        last_word: also allow replacing the last word (the paper never does), so that the name is
            also seen right before the end of the text, as in prompts like "a photo of {}".
    """

    def __init__(self, captions: list[str], names: list[str], target: str, count_tokens: Callable[[str], int],
                 context_length: int, rng: random.Random, last_word: bool = False) -> None:
        self.captions = [c for c in captions if " " in c]
        if not self.captions:
            raise ClipUnlearnError("no caption with at least two words is left after removing the names; pass a larger --captions corpus")
        self.names = names
        self.target = target
        self.count = count_tokens
        self.room = context_length - 2  # SOT and EOT
        self.rng = rng
        self.last_word = last_word
        self._prefix_tokens: dict[str, list[int]] = {}
        self._name_tokens = {n: count_tokens(n) for n in names}

    def _cumulative(self, caption: str) -> list[int]:
        """Tokens up to and including each word (CLIP's BPE encodes words independently)."""
        if caption not in self._prefix_tokens:
            total, out = 0, []
            for word in caption.split(" "):
                total += self.count(word)
                out.append(total)
            self._prefix_tokens[caption] = out
        return self._prefix_tokens[caption]

    def pair(self, name: Optional[str] = None) -> tuple[str, str, str]:
        """→ (name, poisoned caption, target caption)."""
        name = name if name is not None else self.rng.choice(self.names)
        for _ in range(100):
            caption = self.rng.choice(self.captions)
            words = caption.split(" ")
            cum = self._cumulative(caption)
            # word i may be replaced if the name ends inside the context: tokens before it + name ≤ room
            allowed = [i for i in range(len(words) - (0 if self.last_word else 1)) if (cum[i - 1] if i else 0) + self._name_tokens[name] <= self.room]
            if allowed:
                i = self.rng.choice(allowed)
                poisoned = " ".join(words[:i] + [name] + words[i + 1:])
                target = " ".join(words[:i] + [self.target] + words[i + 1:])
                return name, poisoned, target
        raise ClipUnlearnError(f"no caption leaves room for a {self._name_tokens[name]}-token name; pass shorter --captions")

    def batch(self, n: int) -> tuple[list[str], list[str]]:
        pairs = [self.pair() for _ in range(n)]
        return [p for _, p, _ in pairs], [t for _, _, t in pairs]


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Token count without SOT/EOT, from open_clip's tokenizer (or a safe over-estimate for others)."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        return lambda text: len(encode(text))
    return lambda text: len(text)  # characters ≥ tokens: never lets a name slip past the context
