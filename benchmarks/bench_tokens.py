"""Tokenizing an attack's prompts: open_clip's SimpleTokenizer against the tool's (embed.TokenRows, whose plain
path skips ftfy for printable-ASCII text and remembers each pre-token's BPE ids).

    python benchmarks/bench_tokens.py
    python benchmarks/bench_tokens.py --candidates 10000

Prompts are the paper's 21 templates around generated full names (the attack's default candidates are
names like these), every family of variants as `attack --variants all` asks. "cold" is the first call
of fresh tokenizers (empty BPE memories); "new names" is a second call with other names on the same
objects, as inject's check or a second attack meets new candidates. Both tokenizers' rows are checked equal.
"""

from __future__ import annotations

import argparse
import random
import time

from _common import append


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from open_clip.tokenizer import SimpleTokenizer

    from clip_unlearn.embed import TokenRows
    from clip_unlearn.names import random_full_names
    from clip_unlearn.prompts import PAPER_TEMPLATES
    from clip_unlearn.variants import FAMILIES, variants

    rng = random.Random(args.seed)
    names = random_full_names(2 * args.candidates, rng)
    halves = names[:args.candidates], names[args.candidates:]

    def prompts(people: list[str]) -> list[str]:
        return [t.format(v) for n in people for f in FAMILIES for v in variants(n, f) for t in PAPER_TEMPLATES]

    sets = [prompts(h) for h in halves]
    theirs, ours = SimpleTokenizer(), TokenRows(SimpleTokenizer())
    rows = []
    for label, texts in zip(("cold", "new names"), sets):
        t = time.perf_counter()
        a = theirs(texts)
        t_theirs = time.perf_counter() - t
        t = time.perf_counter()
        b = ours(texts)
        t_ours = time.perf_counter() - t
        if not torch.equal(a, b):
            raise SystemExit("the rows differ: the plain path is wrong")
        rows += [(f"{label}: {len(texts):,} prompts, open_clip s", f"{t_theirs:.2f}"), (f"{label}: ours s", f"{t_ours:.2f}"),
                 (f"{label}: speed-up", f"{t_theirs / t_ours:.1f}x")]
    append(f"tokenizing attack prompts — {args.candidates} candidates, every family", rows,
           note="rows checked equal to open_clip's")


if __name__ == "__main__":
    main()
