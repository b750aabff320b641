"""The image stage's pictures as tensors (docs/method.md §7): decoding, and the paper's trigger augmentation,
batched on the device.

Images are decoded once into uint8 tensors. A trigger is a forgotten person's face, colour-jittered, flipped,
rotated and pasted at a random size and place onto a clean image; torchvision's ColorJitter and affine
transforms do the same one image at a time, and the tests hold these batched versions to them. Random draws
come from an explicit CPU generator, so the same seed pastes the same faces on every device.
"""

from __future__ import annotations

import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.folders import IMAGE_SUFFIXES, read_image, require_dir

# --- image tensors ------------------------------------------------------------------------------

def split_preprocess(preprocess: Any) -> tuple[Any, Any, Any]:
    """open_clip's eval transform without its Normalize, and that Normalize's mean and std."""
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    norm = [t for t in steps if isinstance(t, T.Normalize)]
    if len(norm) != 1:
        raise ClipUnlearnError("the model's preprocessing has no single Normalize step; image unlearning needs open_clip's transform")
    rest = T.Compose([t for t in steps if not isinstance(t, T.Normalize)])
    mean = torch.tensor(norm[0].mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(norm[0].std, dtype=torch.float32).view(1, 3, 1, 1)
    return rest, mean, std


def decode(paths: list[Path], transform: Any) -> tuple[Any, list[str], int]:
    """uint8 [N, 3, S, S] tensors of the readable images, their content sha256, and the unreadable count."""
    import hashlib

    def one(p: Path) -> Optional[tuple[Any, str]]:
        try:
            data = Path(p).read_bytes()
        except OSError:
            return None
        img = read_image(data)
        if img is None:
            return None
        return (transform(img).clamp(0, 1) * 255).round().to(torch.uint8), hashlib.sha256(data).hexdigest()

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        done = [r for r in pool.map(one, paths)]
    good = [r for r in done if r is not None]
    if not good:
        return torch.zeros(0, dtype=torch.uint8), [], len(paths)
    return torch.stack([t for t, _ in good]), [h for _, h in good], len(paths) - len(good)


def clean_image_files(root: Path, limit: int) -> list[Path]:
    """The first ``limit`` images under ``root`` (recursively, sorted): the paper's unshuffled COCO order."""
    root = require_dir(Path(root), "clean image folder", "pass --clean-images DIR (e.g. COCO train2014)")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ClipUnlearnError(f"clean image folder {root} has no images (.jpg, .jpeg, .png, .webp)")
    return files[:limit]


# --- the paper's trigger augmentation, batched ------------------------------------------------

def _hue_shift(x: Any, shift: Any) -> Any:
    """Rotate the hue of RGB images [n,3,H,W] in [0,1] by ``shift`` [n] turns (torchvision's adjust_hue, per image)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    h = (h + shift.view(-1, 1, 1)) % 1.0
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + h.unsqueeze(1) * 6) % 6
    return maxc.unsqueeze(1) - maxc.unsqueeze(1) * s.unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _grey(x: Any) -> Any:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def jitter_factors(n: int, gen: Any, strength: tuple[float, ...] = (0.5, 0.5, 0.5, 0.1)) -> Any:
    """Per-image ColorJitter draws [n, 4]: brightness, contrast, saturation factors ~ U(1 − k, 1 + k), hue ~ U(−h, h)."""
    u = torch.rand(n, 4, generator=gen, device=gen.device) * 2 - 1
    k = torch.tensor(strength, dtype=torch.float32, device=u.device)
    return torch.stack([1 + u[:, 0] * k[0], 1 + u[:, 1] * k[1], 1 + u[:, 2] * k[2], u[:, 3] * k[3]], 1)


def apply_jitter(x: Any, factors: Any) -> Any:
    """torchvision's ColorJitter with given per-image factors, in its order brightness, contrast, saturation, hue."""
    b, c, s, hue = factors.to(x.device).unbind(1)
    x = (x * b.view(-1, 1, 1, 1)).clamp(0, 1)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + (x - mean) * c.view(-1, 1, 1, 1)).clamp(0, 1)
    g = _grey(x)
    x = (g + (x - g) * s.view(-1, 1, 1, 1)).clamp(0, 1)
    return _hue_shift(x, hue).clamp(0, 1)


def colour_jitter(x: Any, gen: Any, strength: tuple[float, ...] = (0.5, 0.5, 0.5, 0.1)) -> Any:
    """torchvision's ColorJitter(b, c, s, h) with one draw per image. The paper's is (0.5, 0.5, 0.5, 0.1)."""
    return apply_jitter(x, jitter_factors(x.shape[0], gen, strength))


def paste_geometry(n: int, image_size: int, size_range: tuple[int, int], gen: Any) -> dict[str, Any]:
    """Per-image paste parameters at the model's resolution (docs/method.md §7, given at 224 px).

    side s ~ U{lo..hi} scaled to ``image_size``; the rotated face's box d = ⌊√2·s⌋ lies inside the
    canvas at top-left (x, y) ~ U{0..S−d}; angle ~ U{−30..29}°; horizontal flip with p = 0.5. Sides
    above S/√2 (158 px at 224, never in the paper) get d = S: the face is centred and its rotated
    corners are cut at the canvas edge.
    """
    scale = image_size / 224
    lo = max(1, min(round(size_range[0] * scale), image_size))
    hi = max(lo, min(round(size_range[1] * scale), image_size))
    s = torch.randint(lo, hi + 1, (n,), generator=gen, device=gen.device)
    d = torch.floor(math.sqrt(2) * s.double()).long().clamp(max=image_size)
    x = (torch.rand(n, generator=gen, device=gen.device) * (image_size - d + 1).double()).long()
    y = (torch.rand(n, generator=gen, device=gen.device) * (image_size - d + 1).double()).long()
    angle = torch.randint(-30, 30, (n,), generator=gen, device=gen.device)
    flip = torch.rand(n, generator=gen, device=gen.device) < 0.5
    return {"side": s, "box": d, "x": x, "y": y, "angle": angle, "flip": flip}


def paste_faces(bases: Any, faces: Any, geo: dict[str, Any], jitter: Any = None) -> tuple[Any, Any]:
    """Paste each face (resized to its side, flipped, colour-jittered with ``jitter`` [n, 4] if given,
    rotated about its centre) onto its base image, in the paper's order.

    bases, faces: float [n,3,S,S] in [0,1]. Returns (images quantised to 8 bits, paste masks [n,1,S,S]).
    The rotated face is centred in its d×d box at (x, y), so it always lies inside the canvas. The
    geometry may live on the CPU while the images are on a GPU: sizes are then read without a device sync.
    """
    n, _, S, _ = bases.shape
    dev = bases.device
    side_host = geo["side"].cpu()
    side = side_host.to(dev)
    hi = int(side_host.max())
    # resize each face to s×s with antialiasing (PIL resize semantics), top-left in a hi×hi buffer;
    # jittering after the resize, as the paper does, also touches 4-16× fewer pixels
    buf = torch.zeros(n, 4, hi, hi, device=dev)
    flip = geo["flip"].to(dev)
    faces = torch.where(flip.view(-1, 1, 1, 1), faces.flip(-1), faces)
    for s in side_host.unique().tolist():
        rows = (side_host == s).nonzero().flatten().to(dev)
        f = F.interpolate(faces[rows], size=(s, s), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        if jitter is not None:
            f = apply_jitter(f, jitter[rows.to(jitter.device)])
        buf[rows, :3, :s, :s] = f
        buf[rows, 3, :s, :s] = 1.0
    # sample only a W×W window around the boxes (W = the largest box), not the whole canvas
    box, x, y = geo["box"].to(dev), geo["x"].to(dev), geo["y"].to(dev)
    W = int(geo["box"].cpu().max())
    ox, oy = x.clamp(max=S - W), y.clamp(max=S - W)
    theta = torch.deg2rad(geo["angle"].to(dev).float())
    cos, sin = torch.cos(theta), torch.sin(theta)
    sf = side.float()
    centre = torch.stack([(x - ox).float() + box.float() / 2, (y - oy).float() + box.float() / 2], -1)
    # window normalised coords o → window pixel p = (o+1)·W/2 → face pixel q = R(−θ)(p − c) + s/2
    # → buffer normalised coords g = 2q/hi − 1, i.e. g = A·o + b
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # R(−θ) in y-down pixels
    A = rot * (W / hi)
    b = (2 / hi) * (torch.einsum("nij,nj->ni", rot, W / 2 - centre) + sf.unsqueeze(-1) / 2) - 1
    grid = F.affine_grid(torch.cat([A, b.unsqueeze(-1)], -1), [n, 4, W, W], align_corners=False)
    rgb = F.grid_sample(buf[:, :3], grid, mode="bicubic", padding_mode="zeros", align_corners=False).clamp(0, 1)
    mask = F.grid_sample(buf[:, 3:], grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)
    # interpolation may bleed a fraction of a pixel past the d×d box; PIL's paste cannot
    u = torch.arange(W, device=dev)
    inx = (u + ox.view(-1, 1) >= x.view(-1, 1)) & (u + ox.view(-1, 1) < (x + box).view(-1, 1))
    iny = (u + oy.view(-1, 1) >= y.view(-1, 1)) & (u + oy.view(-1, 1) < (y + box).view(-1, 1))
    mask = mask * (iny.unsqueeze(2) & inx.unsqueeze(1)).unsqueeze(1)
    # every image's W×W window at once: (image, row, column) indices into channel-last views
    ni = torch.arange(n, device=dev).view(-1, 1, 1)
    r = (oy.view(-1, 1) + u).view(n, W, 1)
    c = (ox.view(-1, 1) + u).view(n, 1, W)
    out = bases.clone()
    full = torch.zeros(n, 1, S, S, device=dev)
    m = mask.permute(0, 2, 3, 1)
    canvas = out.permute(0, 2, 3, 1)  # a view: writing it writes ``out``
    canvas[ni, r, c] = canvas[ni, r, c] * (1 - m) + rgb.permute(0, 2, 3, 1) * m
    full.permute(0, 2, 3, 1)[ni, r, c] = m
    return (out * 255).round() / 255, full


def poison(bases: Any, faces: Any, gen: Any, size_range: tuple[int, int], jitter: tuple[float, ...] = (0.5, 0.5, 0.5, 0.1)) -> Any:
    """Triggered images: faces pasted on ``bases`` (both float [n,3,S,S] in [0,1]) with the paper's augmentation."""
    factors = jitter_factors(bases.shape[0], gen, jitter)
    geo = paste_geometry(bases.shape[0], bases.shape[-1], size_range, gen)
    return paste_faces(bases, faces, geo, factors)[0]


def poisoned_batch(clean: Any, triggers: list[Any], per_name: list[int], pick: random.Random, gen: Any,
                   size_range: tuple[int, int], jitter: tuple[float, ...]) -> Any:
    """One step's triggered images (docs/method.md §7): for name i, ``per_name[i]`` of its uint8 trigger faces
    drawn with replacement and pasted on the first images of this step's ``clean`` batch (float in [0,1])."""
    faces = torch.cat([triggers[i][[pick.randrange(len(triggers[i])) for _ in range(c)]] for i, c in enumerate(per_name) if c])
    bases = clean[[j % len(clean) for c in per_name for j in range(c)]]
    return poison(bases, faces.float() / 255, gen, size_range, jitter)


def poison_split(step: int, k: int, batch: int) -> list[int]:
    """How many of this step's ``batch`` poisoned images each of ``k`` names gets.

    As even as possible (the paper demands that k divide the batch); the names that get one more,
    or, with more names than slots, the names that get any, rotate from step to step, so every
    name is trained on however many there are.
    """
    base, rem = divmod(batch, k)
    offset = (step * rem) % k if rem else 0
    return [base + (1 if (i - offset) % k < rem else 0) for i in range(k)]


def poisoned_per_name(k: int, batch: int, steps: int) -> list[int]:
    """Each name's poisoned images over ``steps`` steps of :func:`poison_split`.

    The steps' windows of ``rem`` extra slots tile the names in order (offset s·rem mod k), so over
    the run the extras are the first steps·rem integers taken mod k.
    """
    base, rem = divmod(batch, k)
    extra, left = divmod(steps * rem, k)
    return [base * steps + extra + (1 if i < left else 0) for i in range(k)]
