"""Which neighbours of a forgotten person are bystanders, and which are aliases (issue #17 §4).

    python benchmarks/exp_aliases.py --world ns/world --before ns/before.json
    python benchmarks/exp_aliases.py --world ns/world --before ns/before.json --seeds 0 --unlearned u0

It uses the seeded sets of 5 exposed members that benchmarks/exp_namesakes.py forgets. For each
person it takes the 16 neighbours that eval-zeroshot's sim_neighbours probes with its default seed: the
person's first name with pool surnames and pool first names with the person's surname, from the probe
half of the pools. On the world's original model it computes:

- closeness (variants.closeness): where the text tower places the neighbour, on the attack's 21
  templates, between unrelated names (0) and the person's own name (1);
- share: the fraction of the person's (image, template) predictions that go to the neighbour when it
  stands in for the person's name among the world's other people (members and non-members). This says
  whether the neighbour names the person's face.

It prints one row per closeness bin: how many neighbours, how many take the majority of the person's
predictions, how many take more than a fifth, and the mean share. With --unlearned (a text-only inject of
the first seed's set), it also counts, per person, the neighbours that name the face by majority in the
unlearned model, and in it with the neighbours' original embeddings (sim_neighbours = 1). Aggregates and
positions only, never a name.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from _common import ROOT  # noqa: F401  (puts src/ on the path)

BINS = (-1.0, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 1.01)


def main() -> None:
    import torch

    from clip_unlearn.embed import EmbeddingCache, Encoder
    from clip_unlearn.models import load_model
    from clip_unlearn.names import read_names
    from clip_unlearn.variants import BYSTANDER_CLOSENESS, closeness, neighbours, template_embeddings, unrelated_names

    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--before", type=Path, required=True, help="attack --variants all report of the world's model")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--forget", type=int, default=5)
    ap.add_argument("--probe-seed", type=int, default=42, help="eval-zeroshot's --seed (its default: 42)")
    ap.add_argument("--unlearned", default=None,
                    help="a model that forgot the first seed's set (text tower only): also count, per person, the "
                         "neighbours that name the face in it, and in it with the neighbours kept where they were")
    a = ap.parse_args()
    members = read_names(a.world / "members.txt", "members")
    people = members + read_names(a.world / "non_members.txt", "non-members")
    before = {r["name"]: r for r in json.loads(a.before.read_text())["identities"]}
    exposed = [m for m in members if before[m]["exposed"]]
    base = Encoder(load_model(str(a.world / "model"), "cpu"), EmbeddingCache(None, enabled=False))

    def prompts(names: list[str], encoder: Encoder = base) -> torch.Tensor:
        return template_embeddings(lambda x: encoder.texts(x, persist=False), names)

    rows = []
    for seed in a.seeds:
        forget = sorted(random.Random(seed).sample(exposed, a.forget))  # as exp_namesakes.py draws them
        for person in forget:
            probe = neighbours(person, exclude=forget, seed=a.probe_seed, half="probe")
            near = prompts(probe)
            close = closeness(prompts([person])[0], near, prompts(unrelated_names(person, seed=a.probe_seed, half="probe")))
            images = sorted((a.world / "faces" / person.replace(" ", "_")).glob("*.png"))[:20]
            emb, ok = base.images(images)
            emb = emb[torch.tensor(ok)]
            others = prompts([p for p in people if p != person])
            for j, c in enumerate(close):
                scores = torch.einsum("id,ctd->itc", emb, torch.cat([near[j:j + 1], others]))
                rows.append((c, float((scores.argmax(-1) == 0).float().mean())))
    if a.unlearned:
        # the counterfactual of sim_neighbours = 1: the unlearned tower for everyone else, the original
        # embeddings for the neighbours (the image tower is the same after a text-only inject)
        new = Encoder(load_model(a.unlearned, "cpu"), EmbeddingCache(None, enabled=False))

        forget = sorted(random.Random(a.seeds[0]).sample(exposed, a.forget))
        for i, person in enumerate(forget):
            probe = neighbours(person, exclude=forget, seed=a.probe_seed, half="probe")
            emb, ok = base.images(sorted((a.world / "faces" / person.replace(" ", "_")).glob("*.png"))[:20])
            emb = emb[torch.tensor(ok)]
            others = prompts([p for p in people if p != person], new)
            counts = {}
            for label, near in (("unlearned", prompts(probe, new)), ("unlearned, neighbours kept", prompts(probe))):
                counts[label] = sum(
                    float((torch.einsum("id,ctd->itc", emb, torch.cat([near[j:j + 1], others])).argmax(-1) == 0).float().mean()) > 0.5
                    for j in range(len(probe)))
            print(json.dumps({"person": i + 1, "neighbours": len(probe), "name_the_face_by_majority": counts}))
    print(f"{len(rows)} neighbours of {len(a.seeds) * a.forget} people; bystander below closeness {BYSTANDER_CLOSENESS}")
    print("| closeness | neighbours | take the majority of the person's predictions | take more than a fifth | mean share |")
    print("|---|---|---|---|---|")
    for lo, hi in zip(BINS, BINS[1:]):
        sel = [s for c, s in rows if lo <= c < hi]
        if sel:
            label = f"< {hi}" if lo == BINS[0] else (f"≥ {lo}" if hi == BINS[-1] else f"{lo}-{hi}")
            print(f"| {label} | {len(sel)} | {sum(s > 0.5 for s in sel)} | {sum(s > 0.2 for s in sel)} | {sum(sel) / len(sel):.2f} |")
    below = [s for c, s in rows if c < BYSTANDER_CLOSENESS]
    print(json.dumps({"neighbours": len(rows), "bystanders": len(below),
                      "bystanders_over_a_fifth": sum(s > 0.2 for s in below),
                      "others_majority": sum(s > 0.5 for c, s in rows if c >= BYSTANDER_CLOSENESS)}))


if __name__ == "__main__":
    main()
