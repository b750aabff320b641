"""How close an `inject --made-up` model lands on its targets (docs/experiments.md, "Forget without telling").

    python benchmarks/exp_reach.py --run ut/seed-0-mu --base ut/plain

``--run`` is a run folder of exp_untold.py (forget.txt, the model u/ and its receipt u.receipt.json). Per
forgotten name (by line, never by name), the mean over the 21 attack templates of the cosine between:
the unlearned model's caption with the name and the base model's caption with its made-up name (``reach``,
1 = on target), and the unlearned model's caption with the made-up name and the base model's (``made_up_moved``:
how far training moved the made-up name itself).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import ROOT  # noqa: F401  (puts the checkout's src/ first on the path)

from clip_unlearn.embed import encode_text
from clip_unlearn.models import load_model
from clip_unlearn.names import key
from clip_unlearn.prompts import PAPER_TEMPLATES
from clip_unlearn.receipt import made_up_names, read_receipt


def captions(loaded, names: list[str]):
    """[len(names), templates, D], L2-normalised."""
    import torch

    with torch.no_grad():
        tokens = loaded.tokenizer([t.format(n) for n in names for t in PAPER_TEMPLATES])
        return encode_text(loaded.model, tokens).reshape(len(names), len(PAPER_TEMPLATES), -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a run folder of exp_untold.py (forget.txt, u/, u.receipt.json)")
    ap.add_argument("--base", type=Path, required=True, help="the base model folder the run unlearned")
    a = ap.parse_args()
    names = (a.run / "forget.txt").read_text().splitlines()
    made_up = made_up_names(read_receipt(a.run / "u.receipt.json")["key"], names)
    targets = [made_up[key(n)] for n in names]
    base, unlearned = load_model(str(a.base), "cpu"), load_model(str(a.run / "u"), "cpu")
    reach = (captions(unlearned, names) * captions(base, targets)).sum(-1).mean(1)
    moved = (captions(unlearned, targets) * captions(base, targets)).sum(-1).mean(1)
    for line, (r, m) in enumerate(zip(reach.tolist(), moved.tolist()), 1):
        print(json.dumps({"line": line, "reach": round(r, 3), "made_up_moved": round(m, 3)}))


if __name__ == "__main__":
    main()
