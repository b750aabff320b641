"""What is left of forgotten names after unlearning, on the attack's prompts (issue #18 §2 diagnosis).

    python benchmarks/exp_leftover.py --base w200/model --model scale/u-100-0 --names scale/forget-100-0.txt

For each forgotten name and each of the attack's 21 templates: the cosine between the unlearned text
tower's embedding of the prompt and the base tower's embedding of the same prompt with the target
("a person"), which is 1 when the name is fully collapsed; and the cosine between what is left (the
unlearned embedding minus its mean over the names, per template) and the base embedding of the prompt
centred the same way, which says whether the leftover points along the name's original meaning (what
the attack reads). Prints aggregates only, never a name.
"""

from __future__ import annotations

import argparse
import json

from _common import ROOT  # noqa: F401  (puts src/ on the path)


def main() -> None:
    import torch

    from clip_unlearn.attack import PAPER_TEMPLATES
    from clip_unlearn.embed import EmbeddingCache, Encoder
    from clip_unlearn.models import load_model
    from clip_unlearn.names import read_names

    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the model before unlearning")
    ap.add_argument("--model", required=True, help="the unlearned model")
    ap.add_argument("--names", required=True, help="the names file it forgot")
    ap.add_argument("--target", default="a person")
    a = ap.parse_args()
    names = read_names(a.names, "names file")
    no_cache = EmbeddingCache(None, enabled=False)
    base = Encoder(load_model(a.base, "cpu"), no_cache)
    new = Encoder(load_model(a.model, "cpu"), no_cache)
    prompts = [t.format(n) for n in names for t in PAPER_TEMPLATES]
    shape = (len(names), len(PAPER_TEMPLATES), -1)
    target = base.texts([t.format(a.target) for t in PAPER_TEMPLATES])
    after = new.texts(prompts, persist=False).view(shape)
    before = base.texts(prompts, persist=False).view(shape)
    to_target = (after * target[None]).sum(-1)  # [names, templates], both normalised
    leftover = torch.nn.functional.cosine_similarity(after - after.mean(0, keepdim=True),
                                                     before - before.mean(0, keepdim=True), dim=-1)
    print(json.dumps({
        "names": len(names),
        "cos_to_target_mean": round(float(to_target.mean()), 4),
        "cos_to_target_per_template": [round(float(x), 3) for x in to_target.mean(0)],
        "cos_to_target_worst_name": round(float(to_target.mean(1).min()), 4),
        "leftover_along_original_mean": round(float(leftover.mean()), 4),
    }, indent=1))


if __name__ == "__main__":
    main()
