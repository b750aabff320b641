"""Procedural faces and objects for the synthetic world (drawn with PIL, ~1 ms an image).

An identity is a combination of eight discrete attributes; any two identities differ in at
least three, so the tiny CLIP has something stable to learn per person, while every image
varies in pose, scale, lighting and noise (docs/design.md §7).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

SKIN = [(255, 224, 196), (241, 194, 150), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 56, 30)]
HAIR = [(20, 20, 20), (95, 60, 30), (200, 160, 80), (170, 50, 20), (200, 200, 200), (60, 90, 200)]
EYES = [(60, 110, 200), (90, 60, 30), (60, 150, 70), (120, 120, 120)]
HAIR_STYLES = ["bald", "short", "long", "mohawk", "bun", "curly"]
GLASSES = ["none", "round", "square"]
BEARDS = ["none", "moustache", "full"]
FACE_SHAPES = [0.78, 0.9, 1.02]  # width / height
SHIRTS = [(200, 40, 40), (40, 160, 60), (40, 70, 200), (230, 200, 40), (140, 60, 170), (240, 240, 240)]
_CHOICES = [len(SKIN), len(HAIR), len(EYES), len(HAIR_STYLES), len(GLASSES), len(BEARDS), len(FACE_SHAPES), len(SHIRTS)]

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220),
    "yellow": (235, 210, 30), "purple": (140, 40, 180), "orange": (245, 130, 20),
}
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]

RENDER = 128  # drawn at 2x, then downsampled: cheap anti-aliasing
SIZE = 64


@dataclass(frozen=True)
class Identity:
    """Attribute indices of one synthetic person."""

    skin: int
    hair: int
    eyes: int
    hair_style: int
    glasses: int
    beard: int
    face_shape: int
    shirt: int

    def describe(self) -> dict[str, str]:
        return {
            "hair_style": HAIR_STYLES[self.hair_style], "glasses": GLASSES[self.glasses],
            "beard": BEARDS[self.beard], **{k: str(v) for k, v in asdict(self).items()
                                             if k not in ("hair_style", "glasses", "beard")},
        }


def random_identity(rng: random.Random) -> Identity:
    """Any attribute combination: a stranger for clean images (may resemble anyone, like real passers-by)."""
    return Identity(*[rng.randrange(k) for k in _CHOICES])


def sample_identities(n: int, rng: random.Random, min_diff: int = 3) -> list[Identity]:
    """``n`` attribute combinations, pairwise different in at least ``min_diff`` attributes."""
    chosen: list[tuple[int, ...]] = []
    for _ in range(n * 5000):
        if len(chosen) == n:
            break
        cand = tuple(rng.randrange(k) for k in _CHOICES)
        if all(sum(a != b for a, b in zip(cand, c)) >= min_diff for c in chosen):
            chosen.append(cand)
    if len(chosen) < n:
        if min_diff <= 1:
            raise ValueError(f"cannot draw {n} distinct identities from the attribute space")
        # Beyond the attribute space's comfortable capacity: relax rather than loop forever.
        return sample_identities(n, rng, min_diff - 1)
    return [Identity(*c) for c in chosen]


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def _finish(img: Image.Image, rng: random.Random, angle: float) -> Image.Image:
    """Rotation, light and sensor noise shared by faces and objects."""
    img = img.rotate(angle, resample=Image.BICUBIC, fillcolor=img.getpixel((0, 0)))
    img = img.resize((SIZE, SIZE), Image.LANCZOS)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.25))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.2))
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 6.0, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def draw_face(who: Identity, rng: random.Random) -> Image.Image:
    """One photo of ``who``: same person, different pose, framing, light and noise every time."""
    bg = tuple(rng.randint(40, 230) for _ in range(3))
    img = Image.new("RGB", (RENDER, RENDER), bg)
    d = ImageDraw.Draw(img)
    s = RENDER * rng.uniform(0.85, 1.1)
    cx = RENDER / 2 + rng.uniform(-0.08, 0.08) * RENDER
    cy = RENDER / 2 + rng.uniform(-0.08, 0.08) * RENDER
    skin = _jitter(SKIN[who.skin], rng, 12)
    hair = _jitter(HAIR[who.hair], rng, 15)
    shirt = _jitter(SHIRTS[who.shirt], rng, 15)
    fh = 0.46 * s
    fw = fh * FACE_SHAPES[who.face_shape]
    top, bottom = cy - fh / 2 - 0.05 * s, cy + fh / 2 - 0.05 * s
    left, right = cx - fw / 2, cx + fw / 2
    style = HAIR_STYLES[who.hair_style]

    d.ellipse([cx - 0.42 * s, bottom + 0.02 * s, cx + 0.42 * s, bottom + 0.6 * s], fill=shirt)
    if style == "long":
        d.rectangle([left - 0.06 * s, cy - 0.1 * s, right + 0.06 * s, bottom + 0.12 * s], fill=hair)
    d.rectangle([cx - 0.08 * s, bottom - 0.05 * s, cx + 0.08 * s, bottom + 0.08 * s], fill=skin)
    d.ellipse([left, top, right, bottom], fill=skin)
    if style in ("short", "long"):
        d.chord([left - 0.02 * s, top - 0.04 * s, right + 0.02 * s, top + 0.3 * s], 180, 360, fill=hair)
    elif style == "mohawk":
        d.rectangle([cx - 0.05 * s, top - 0.1 * s, cx + 0.05 * s, top + 0.08 * s], fill=hair)
    elif style == "bun":
        d.chord([left, top - 0.02 * s, right, top + 0.22 * s], 180, 360, fill=hair)
        d.ellipse([cx - 0.09 * s, top - 0.17 * s, cx + 0.09 * s, top + 0.01 * s], fill=hair)
    elif style == "curly":
        for i in range(7):
            a = math.pi * (1 + i / 6)
            px, py = cx + 0.5 * fw * math.cos(a), top + 0.12 * s + 0.16 * s * math.sin(a)
            d.ellipse([px - 0.07 * s, py - 0.07 * s, px + 0.07 * s, py + 0.07 * s], fill=hair)

    eye_y = cy - 0.08 * s
    eye_col = EYES[who.eyes]
    for ex in (cx - fw * 0.22, cx + fw * 0.22):
        d.ellipse([ex - 0.05 * s, eye_y - 0.03 * s, ex + 0.05 * s, eye_y + 0.03 * s], fill=(250, 250, 250))
        d.ellipse([ex - 0.025 * s, eye_y - 0.025 * s, ex + 0.025 * s, eye_y + 0.025 * s], fill=eye_col)
        d.line([ex - 0.06 * s, eye_y - 0.07 * s, ex + 0.06 * s, eye_y - 0.06 * s], fill=hair, width=max(1, int(0.02 * s)))
        glasses = GLASSES[who.glasses]
        box = [ex - 0.08 * s, eye_y - 0.06 * s, ex + 0.08 * s, eye_y + 0.06 * s]
        if glasses == "round":
            d.ellipse(box, outline=(15, 15, 15), width=max(1, int(0.018 * s)))
        elif glasses == "square":
            d.rectangle(box, outline=(15, 15, 15), width=max(1, int(0.018 * s)))
    d.line([cx, eye_y + 0.03 * s, cx - 0.02 * s, cy + 0.05 * s], fill=_jitter(skin, rng, 0), width=max(1, int(0.015 * s)))
    beard = BEARDS[who.beard]
    mouth_y = cy + 0.11 * s
    if beard == "full":
        d.chord([left + 0.02 * s, cy - 0.02 * s, right - 0.02 * s, bottom + 0.03 * s], 0, 180, fill=hair)
    if beard in ("moustache", "full"):
        d.rectangle([cx - 0.09 * s, mouth_y - 0.045 * s, cx + 0.09 * s, mouth_y - 0.015 * s], fill=hair)
    d.line([cx - 0.07 * s, mouth_y, cx + 0.07 * s, mouth_y], fill=(150, 40, 40), width=max(1, int(0.02 * s)))
    return _finish(img, rng, rng.uniform(-12, 12))


def draw_object(colour: str, shape: str, rng: random.Random) -> Image.Image:
    """One image of a coloured shape on a random background."""
    bg = tuple(rng.randint(0, 255) for _ in range(3))
    img = Image.new("RGB", (RENDER, RENDER), bg)
    d = ImageDraw.Draw(img)
    r = RENDER * rng.uniform(0.22, 0.36)
    cx = RENDER / 2 + rng.uniform(-0.12, 0.12) * RENDER
    cy = RENDER / 2 + rng.uniform(-0.12, 0.12) * RENDER
    col = _jitter(COLOURS[colour], rng, 15)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    elif shape == "square":
        d.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=col)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=col)
    elif shape == "star":
        pts = [(cx + (r if i % 2 == 0 else r * 0.45) * math.cos(math.pi * i / 5 - math.pi / 2),
                cy + (r if i % 2 == 0 else r * 0.45) * math.sin(math.pi * i / 5 - math.pi / 2)) for i in range(10)]
        d.polygon(pts, fill=col)
    elif shape == "cross":
        w = r * 0.35
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=col)
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=col)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=col, width=int(r * 0.35))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return _finish(img, rng, rng.uniform(-30, 30))
