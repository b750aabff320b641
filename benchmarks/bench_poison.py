"""Building the image stage's poisoned batches (inject --encoder image): ours vs the paper's loop.

    python benchmarks/bench_poison.py                    # 224 px (ViT-B-32's input), 128 triggers a step
    python benchmarks/bench_poison.py --size 32          # the synthetic world's tiny model

Ours decodes the trigger faces and the clean images once into uint8 tensors (timed separately, a
one-off per run) and then builds each step's batch with one batched ``poison`` call on the device.
The naive baseline is the paper's per-image pipeline (docs/method.md §7): every step reads each drawn
face and each clean base image from disk through the eval transform, then, per image in PIL,
resizes the face to its side, flips it, colour-jitters it (torchvision's ColorJitter on PIL),
rotates it and an opaque mask with ``expand=True`` (bicubic), pastes it with that mask at the
drawn top-left corner and converts the result to a tensor. Both use the paper's settings: sides
56-112 px at 224 scale, jitter 0.5/0.5/0.5/0.1, rotation -30..29 degrees, flip p 0.5. The images
are synthetic faces and objects written as PNGs of 224 px, like decoded COCO/FaceScrub files.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from pathlib import Path

from _common import append, face_folders, median

PAPER_SIDES = (56, 112)
PAPER_JITTER = (0.5, 0.5, 0.5, 0.1)


def clean_folder(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """``count`` synthetic object PNGs of ``size`` px (the clean images)."""
    from clip_unlearn.drawing import COLOURS, SHAPES, draw_object

    out = folder / f"clean-{count}-{size}"
    if out.is_dir():
        return out
    out.mkdir(parents=True)
    rng = random.Random(seed)
    for j in range(count):
        draw_object(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng).resize((size, size)).save(out / f"{j:05d}.png")
    return out


def eval_transform(size: int):
    """open_clip's eval transform without Normalize: bicubic resize of the short side, centre crop, to tensor."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor()])


def naive_poison(face_paths: list[Path], base_paths: list[Path], size: int, rng: random.Random, sides=PAPER_SIDES,
                 jitter=PAPER_JITTER):
    """The paper's poisoned batch: per image in PIL, from files (docs/method.md §7). Returns [n, 3, size, size]."""
    import torch
    from PIL import Image, ImageOps
    from torchvision import transforms as T
    from torchvision.transforms import functional as TF

    to_pil = eval_transform(size)
    colour = T.ColorJitter(*jitter)
    scale = size / 224
    out = []
    for fp, bp in zip(face_paths, base_paths):
        face = TF.to_pil_image(to_pil(Image.open(fp).convert("RGB")))
        base = TF.to_pil_image(to_pil(Image.open(bp).convert("RGB")))
        s = max(1, round(rng.randint(*sides) * scale))
        d = min(size, math.floor(math.sqrt(2) * s))
        x, y = rng.randint(0, size - d), rng.randint(0, size - d)
        face = face.resize((s, s))
        if rng.random() < 0.5:
            face = ImageOps.mirror(face)
        face = colour(face)
        angle = rng.randint(-30, 29)
        mask = Image.new("L", (s, s), 255).rotate(angle, Image.BICUBIC, expand=True)
        face = face.rotate(angle, Image.BICUBIC, expand=True)
        base.paste(face, (x, y), mask)
        out.append(TF.to_tensor(base))
    return torch.stack(out)


def ours_setup(face_paths: list[Path], clean_paths: list[Path], size: int):
    """Decode every face and clean image once (what the image stage does before its first step)."""
    from clip_unlearn.augment import decode

    transform = eval_transform(size)
    faces, _, _ = decode(face_paths, transform)
    clean, _, _ = decode(clean_paths, transform)
    return faces, clean


def ours_poison(faces, clean, n: int, step: int, gen, pick: random.Random, device: str, sides=PAPER_SIDES, jitter=PAPER_JITTER):
    """One step's poisoned batch as the image stage builds it: the stage's own poisoned_batch, one name."""
    from clip_unlearn.augment import poisoned_batch

    idx = [(step * n + j) % len(clean) for j in range(n)]
    bases = clean[idx].to(device).float() / 255
    return poisoned_batch(bases, [faces.to(device)], [n], pick, gen, sides, jitter)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224, help="model input size in px (default: 224, ViT-B-32's; the world's is 32)")
    ap.add_argument("--batch", type=int, default=128, help="poisoned images per step (default: 128, the paper's)")
    ap.add_argument("--steps", type=int, default=5, help="steps timed per run (default: 5)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each variant; medians are reported (default: 3)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] for ours; the naive pipeline is PIL on the CPU (default: cpu)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clip-unlearn-bench",
                    help="scratch folder for the generated images (default: $TMPDIR/clip-unlearn-bench)")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    faces_root = face_folders(args.work, 5, 40)
    face_paths = sorted(faces_root.rglob("*.png"))
    clean_paths = sorted(clean_folder(args.work, args.batch * args.steps, 224).glob("*.png"))
    rng = random.Random(0)

    def naive_run() -> float:
        t = time.perf_counter()
        for step in range(args.steps):
            bases = clean_paths[step * args.batch:(step + 1) * args.batch]
            naive_poison([rng.choice(face_paths) for _ in bases], bases, args.size, rng)
        return (time.perf_counter() - t) / args.steps

    def ours_run() -> tuple[float, float]:
        t = time.perf_counter()
        faces, clean = ours_setup(face_paths, clean_paths, args.size)
        setup = time.perf_counter() - t
        gen = torch.Generator(device=args.device if args.device.startswith("cuda") else "cpu").manual_seed(0)
        pick = random.Random(0)
        ours_poison(faces, clean, args.batch, 0, gen, pick, args.device)  # warm-up (kernel selection)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for step in range(args.steps):
            ours_poison(faces, clean, args.batch, step, gen, pick, args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / args.steps, setup

    naive_poison(face_paths[:2], clean_paths[:2], args.size, random.Random(1))  # warm-up (lazy imports)
    naive = [naive_run() for _ in range(args.repeats)]
    ours = [ours_run() for _ in range(args.repeats)]
    step_ours, setup_ours, step_naive = median([o[0] for o in ours]), median([o[1] for o in ours]), median(naive)
    rows = [
        ("images per step, input size", f"{args.batch}, {args.size} px"),
        ("seconds per step (median), ours: batched paste on the device", f"{step_ours:.3f}"),
        ("seconds per step (median), naive: per image in PIL, from files", f"{step_naive:.3f}"),
        ("naive / ours per step", f"{step_naive / step_ours:.1f}×"),
        (f"ours, one-off decode of {len(face_paths)} faces + {len(clean_paths)} clean images, s", f"{setup_ours:.2f}"),
    ]
    append(f"inject (image encoder): building poisoned batches — {args.size} px", rows,
           note=f"median of {args.repeats} runs of {args.steps} steps; device for ours: {args.device}")


if __name__ == "__main__":
    main()
