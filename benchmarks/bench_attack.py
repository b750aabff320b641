"""Attack speed: cold (empty cache) vs warm (everything cached), and truncated vs 77-position text encoding.

    python benchmarks/bench_attack.py --model world      # the synthetic world (built if missing)
    python benchmarks/bench_attack.py --model vit-b-32   # random ViT-B-32, 100 identities x 20 images
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import append, face_folders, median, random_vit_b32, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["world", "vit-b-32"], default="world")
    ap.add_argument("--world", type=Path, default=Path("synthetic-world"), help="world folder (built if missing)")
    ap.add_argument("--identities", type=int, default=100)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clip-unlearn-bench")
    args = ap.parse_args()

    import torch

    from clip_unlearn.attack import PAPER_TEMPLATES, run_attack
    from clip_unlearn.config import AttackConfig, PrepareSyntheticConfig
    from clip_unlearn.embed import encode_text
    from clip_unlearn.models import load_model
    from clip_unlearn.names import random_full_names

    args.work.mkdir(parents=True, exist_ok=True)
    if args.model == "world":
        if not (args.world / "world.json").exists():
            from clip_unlearn.synthetic import build_world
            build_world(PrepareSyntheticConfig(out=args.world))
        model, data = args.world / "model", args.world / "faces"
        images = min(args.images, 30)
    else:
        model = random_vit_b32(args.work)
        data = face_folders(args.work, args.identities, args.images)
        images = args.images

    def attack(cache: Path) -> dict:
        cfg = AttackConfig(model=str(model), data=data, cache_dir=cache, num_candidates=args.candidates,
                           images_per_identity=images, min_images=images, device="cpu")
        return run_attack(cfg).summary

    cold, warm = [], []
    for r in range(args.repeats):
        cache = args.work / f"cache-{r}"
        shutil.rmtree(cache, ignore_errors=True)
        cold.append(timed(lambda c=cache: attack(c)))
        warm.append(timed(lambda c=cache: attack(c)))
        shutil.rmtree(cache, ignore_errors=True)
    summary = attack(args.work / "cache-x")
    shutil.rmtree(args.work / "cache-x", ignore_errors=True)

    # Text encoding alone: our truncated forward vs open_clip's fixed-context encode_text.
    loaded = load_model(str(model), device="cpu")
    names = random_full_names(100, __import__("random").Random(0))
    prompts = [t.format(n) for t in PAPER_TEMPLATES for n in names]
    tokens = loaded.tokenizer(prompts)
    fast, naive = [], []
    with torch.inference_mode():
        for _ in range(args.repeats):
            fast.append(timed(lambda: [encode_text(loaded.model, tokens[i:i + 256]) for i in range(0, len(tokens), 256)]))
            naive.append(timed(lambda: [loaded.model.encode_text(tokens[i:i + 256], normalize=True) for i in range(0, len(tokens), 256)]))
    rows = [
        ("identities × images, candidates × templates", f"{summary['identities']} × {images}, {summary['candidates']} × {summary['templates']}"),
        ("cold attack (empty cache), median s", f"{median(cold):.2f}"),
        ("warm attack (all cached), median s", f"{median(warm):.2f}"),
        ("cold / warm", f"{median(cold) / median(warm):.1f}×"),
        (f"text encoding, {len(prompts)} prompts: truncated, prompts/s", f"{len(prompts) / median(fast):.0f}"),
        (f"text encoding, {len(prompts)} prompts: fixed {loaded.context_length} positions, prompts/s", f"{len(prompts) / median(naive):.0f}"),
        ("truncated / fixed", f"{median(naive) / median(fast):.2f}×"),
    ]
    append(f"attack — {args.model}", rows, note=f"median of {args.repeats} runs; warm = same model and data again")


if __name__ == "__main__":
    main()
