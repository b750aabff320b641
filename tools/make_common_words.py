"""Regenerate src/clip_unlearn/data/common_words.txt: the common English words a name part may collide with.

    apt-get install wamerican && python tools/make_common_words.py

A word is common here when it is a lower-case entry of the SCOWL "american-english" list (Debian's
wamerican: dictionary words are lower case, proper nouns capitalised, so "stone" is in and "Emma" is
not) and CLIP's byte-pair vocabulary holds it as one whole-word token ("stone</w>"): the BPE was
learned from web text, so a word it keeps whole is frequent there. inject never uses such a word alone
as a trigger (variants.trigger_verdict), and eval-zeroshot's sim_words measures the captions that use
a forgotten name's parts as these words.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import open_clip

DICTIONARY = Path("/usr/share/dict/american-english")
OUT = Path(__file__).resolve().parents[1] / "src" / "clip_unlearn" / "data" / "common_words.txt"


def main() -> None:
    if not DICTIONARY.is_file():
        sys.exit(f"{DICTIONARY} is missing: apt-get install wamerican")
    merges = gzip.open(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8").split("\n")
    whole = {"".join(m.split()) for m in merges[1:49152 - 256 - 2 + 1] if m}  # the merges open_clip's tokenizer uses
    words = sorted({w.strip() for w in DICTIONARY.read_text(encoding="utf-8", errors="ignore").splitlines()
                    if w.strip().isascii() and w.strip().isalpha() and w.strip().islower() and len(w.strip()) >= 2
                    and w.strip() + "</w>" in whole})
    header = ("# Common English words: lower-case entries of SCOWL's american-english list (Debian wamerican) that\n"
              "# CLIP's BPE keeps as one whole-word token; made by tools/make_common_words.py.\n"
              "#\n"
              "# SCOWL: Copyright 2000-2011 by Kevin Atkinson. Permission to use, copy, modify, distribute and sell these\n"
              "# word lists, the associated scripts, the output created from the scripts, and its documentation for any\n"
              "# purpose is hereby granted without fee, provided that the above copyright notice appears in all copies and\n"
              "# that both that copyright notice and this permission notice appear in supporting documentation. Kevin\n"
              "# Atkinson makes no representations about the suitability of this array for any purpose. It is provided\n"
              "# \"as is\" without express or implied warranty.\n")
    OUT.write_text(header + "\n".join(words) + "\n", encoding="utf-8")
    print(f"{len(words)} words -> {OUT}")


if __name__ == "__main__":
    main()
