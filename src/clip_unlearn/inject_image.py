"""Backdoor-based unlearning of faces in the image encoder (docs/method.md §7).

The student is a copy of the image tower with its norm layers frozen and kept in eval mode; the
teacher is the original tower, frozen. The target is one anonymous "average person": the mean
unnormalised embedding of the face set under the teacher. Triggers are the forgotten people's
face images pasted onto clean images with the paper's augmentation; per step

    L = d(S(c), T(c)) + w_bd · mean_id d(S(p_id), target) + w_reg · Σ_tensors ‖θ_S − θ_T‖₂

Faces and clean images are decoded once into uint8 tensors; the augmentation runs batched on the
device. Trigger images come from the test half of the seed-42 split by image id and the attack's
images from the train half (``attack --split``), so no attack image is ever a trigger.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip_unlearn.distributed import current
from clip_unlearn.embed import EmbeddingCache, tower_identity, use_bf16
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.folders import IMAGE_SUFFIXES, face_folders, read_image, require_dir, split_side
from clip_unlearn.names import key
from clip_unlearn.progress import Progress
from clip_unlearn.training import TeacherCache, autocast, train

log = logging.getLogger(__name__)
NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)
SIM_TARGET_SAMPLE = 2000  # images re-encoded by the new tower for sim_target (a seeded sample beyond this)


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


# --- the stage ----------------------------------------------------------------------------------

class _Frozen:
    """Keeps norm layers in eval mode whatever ``.train()`` says (docs/method.md §7)."""

    @staticmethod
    def apply(module: Any) -> None:
        module.train()
        for m in module.modules():
            if isinstance(m, NORMS):
                m.eval()
                for p in m.parameters():
                    p.requires_grad_(False)


def _raw_embed(tower: Any, u8: Any, mean: Any, std: Any, device: str, autocast: Callable[[], Any], batch: int = 256) -> Any:
    out = []
    with torch.no_grad(), autocast():
        for i in range(0, len(u8), batch):
            x = (u8[i:i + batch].to(device).float() / 255 - mean.to(device)) / std.to(device)
            out.append(tower(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def face_set(faces_root: Path, names: list[str], names_file: Any) -> tuple[list, dict, list[Path], dict, list[list[Path]]]:
    """The face set: the average-person target from the uncropped view's train half, each forgotten
    person's triggers from the cropped view's test half (so no attack image is ever a trigger).

    Returns (identity folders, cropped folders by key, target files, each identity's train-half files,
    each name's trigger files)."""
    target_folders = face_folders(faces_root, "images")
    trigger_folders = {key(f.name): f for f in face_folders(faces_root, "faces")}
    target_files = [p for f in target_folders for p in f.files if split_side(f.name, p) == "train"]
    heldout = {key(f.name): [p for p in f.files if split_side(f.name, p) == "train"] for f in target_folders}
    triggers = []
    for n in names:
        f = trigger_folders.get(key(n))
        if f is None:
            raise ClipUnlearnError(f"a name in {names_file} has no face folder in {faces_root}; image unlearning needs their face images (--faces)")
        files = [p for p in f.files if split_side(f.name, p) == "test"]
        if not files:
            raise ClipUnlearnError(f"a person in {names_file} has no trigger images (test half of the split) in {faces_root}; add face images")
        triggers.append(files)
    if not target_files:
        raise ClipUnlearnError(f"no face images in the train half of {faces_root}; the average-person target needs them")
    forgotten_keys = {key(n) for n in names}
    others = [f for f in target_folders if key(f.name) not in forgotten_keys and heldout[key(f.name)]]
    if not others:
        # the mean of the forgotten faces alone is their own face: mapping them there hides nobody
        raise ClipUnlearnError(f"the face set {faces_root} holds only the people to forget; the average-person target needs "
                               "the faces of many other people (--faces)")
    if len(others) < 10:
        log.warning("the average-person target is the mean of only %d other people's faces; use a larger --faces set", len(others))
    return target_folders, trigger_folders, target_files, heldout, triggers


def _decode_triggers(triggers: list[list[Path]], transform: Any, names_file: Any, faces_root: Path) -> list[Any]:
    out = []
    for files in triggers:
        u8, _, _ = decode(files, transform)
        if len(u8) == 0:
            raise ClipUnlearnError(f"the trigger images of a person in {names_file} are unreadable; check {faces_root}")
        out.append(u8)
    return out


def _student(teacher: Any, device: Any) -> Any:
    """A trainable copy of the frozen image tower, norm layers frozen and in eval mode (docs/method.md §7)."""
    student = copy.deepcopy(teacher).to(device)
    for p in student.parameters():
        p.requires_grad_(True)
    _Frozen.apply(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student


def _warn_named_by_target(name_ranks: list[int], n_identities: int) -> None:
    for i, r in enumerate(name_ranks):
        if r == 1:
            # names never go to the log: the person is referred to by position
            log.warning("name %d of the names file is the nearest of the %d face-set names to the average-person target: "
                        "mapping their face there may leave them named; use --encoder both to also remove the name",
                        i + 1, n_identities)


def run_image_stage(loaded: Any, cfg: Any, h: Any, names: list[str], faces_root: Path, clean_root: Path,
                    cache: EmbeddingCache, distance: Callable[..., Any], progress: Progress = None) -> dict[str, Any]:
    """Unlearn the faces of ``names`` in ``loaded.model.visual`` in place; returns the stage's record (no names)."""
    device = loaded.device
    model = loaded.model
    transform, mean, std = split_preprocess(loaded.preprocess)
    bf16 = use_bf16(cfg.precision, device)
    amp = lambda: autocast(device, bf16)  # noqa: E731
    tick = progress or (lambda *a, **k: None)
    target_folders, trigger_folders, target_files, heldout, triggers = face_set(faces_root, names, cfg.names)

    # The teacher is fixed: raw embeddings of the face set and of clean images are cached per content.
    teacher = model.visual.eval()
    # held on the CPU: the target and clean targets are used on the host (hashes, ranks, metrics) and
    # each step's few clean targets are moved to the device with the batch (draw)
    raw = TeacherCache(cache, "visual-raw-" + tower_identity(loaded, "image", "bf16" if bf16 else "fp32", "unnormalized"), "image",
                       device="cpu")

    def teacher_raw(paths: list[Path], label: str) -> tuple[Any, Any, list[str]]:
        tick(f"decoding {label}", 0, 1)
        u8, keys, bad = decode(paths, transform)
        if bad:
            log.warning("%d unreadable %s skipped", bad, label)

        def compute(idx: list[int]) -> Any:
            tick(f"embedding {label}", 0, 1)
            return _raw_embed(teacher, u8[idx], mean, std, device, amp)
        emb = raw.get(keys, compute)
        raw.flush()
        return u8, emb, keys

    _, face_emb, face_keys = teacher_raw(target_files, "face images")
    target = face_emb.mean(0)
    name_ranks = target_name_ranks(loaded, cache, target, names, [f.name for f in target_folders], cfg.precision)
    _warn_named_by_target(name_ranks, len(target_folders))
    trig_u8 = _decode_triggers(triggers, transform, cfg.names, faces_root)
    clean_u8, clean_t, _ = teacher_raw(clean_image_files(clean_root, h.steps * h.clean_batch), "clean images")
    if len(clean_u8) == 0:
        raise ClipUnlearnError(f"no readable clean images in {clean_root}")
    retained = 0
    if h.retain_faces:
        # The other people's trigger-half faces join the utility term (not in the paper): the image
        # tower then keeps exactly the identities it must not forget, not only generic images.
        forgotten = {key(n) for n in names}
        others = [p for f in trigger_folders.values() if key(f.name) not in forgotten
                  for p in f.files if split_side(f.name, p) == "test"]
        r_u8, r_t, _ = teacher_raw(others, "faces to retain")
        retained = len(r_u8)
        if retained:
            order = torch.randperm(len(clean_u8) + retained, generator=torch.Generator().manual_seed(cfg.seed))
            clean_u8, clean_t = torch.cat([clean_u8, r_u8])[order], torch.cat([clean_t, r_t])[order]

    student = _student(teacher, device)
    # augmentation draws on the CPU whatever the device: the same seed pastes the same faces on CPU and GPU,
    # and the sizes that shape each batch are known on the host without waiting for the device
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    pick = random.Random(cfg.seed + 2)
    size_range = tuple(h.face_size)
    mean_d, std_d, target_d = mean.to(device), std.to(device), target.to(device)
    trig_d = [t.to(device) for t in trig_u8]
    k = len(names)
    totals = poisoned_per_name(k, h.poison_batch, h.steps)
    starved = [i + 1 for i, c in enumerate(totals) if c == 0]
    if starved:
        raise ClipUnlearnError(f"{len(starved)} of {k} names would get no trigger image in {h.steps} steps of "
                               f"{h.poison_batch} poisoned images; raise --steps or --poison-batch to at least "
                               f"{k} images in all")
    dist = current()

    def draw(step: int) -> tuple[Any, ...]:
        per_name = poison_split(step, k, h.poison_batch)
        # clean images in file order without shuffling, as the paper's COCO loader (restarting at the end)
        start = (step * h.clean_batch) % len(clean_u8)
        idx = [(start + j) % len(clean_u8) for j in range(h.clean_batch)]
        clean = clean_u8[idx].to(device).float() / 255
        poisoned = poisoned_batch(clean, trig_d, per_name, pick, gen, size_range, tuple(h.colour_jitter))
        # every rank builds the same global batch (same generators) and trains on its slice (see inject.py)
        cs, ps_ = dist.slice(len(idx)), dist.slice(len(poisoned))
        owner = torch.repeat_interleave(torch.arange(k), torch.tensor(per_name))[ps_]
        clean_targets = clean_t[idx[cs]].to(device)
        return torch.cat([clean[cs], poisoned[ps_]]), clean_targets, owner, per_name, cs.stop - cs.start, len(idx)

    def terms(batch: tuple[Any, ...], forward: Any) -> tuple[Any, Any]:
        x, clean_targets, owner, per_name, n_clean, clean_total = batch
        out = forward((x - mean_d) / std_d).float()
        s_clean, s_poison = out[:n_clean], out[n_clean:]
        l_util = distance(cfg.loss, s_clean, clean_targets)
        # the paper's mean over names of each name's mean distance, as a weighted sum over this slice's rows
        w_row = 1.0 / (torch.tensor(per_name, dtype=torch.float32)[owner] * sum(1 for c in per_name if c))
        l_bd = sum(distance(cfg.loss, s_poison[owner == i], target_d.expand(int((owner == i).sum()), -1))
                   * float(w_row[owner == i].sum()) for i in range(k) if bool((owner == i).any()))
        return (dist.world * n_clean / clean_total) * l_util, dist.world * l_bd

    history = train("image", student, teacher, h, device, bf16, draw, terms, progress, "unlearning faces")

    student.eval()
    metrics = _metrics(student, target, names, heldout, face_keys, target_files, transform, mean, std, device, amp, cfg.seed)
    model.visual.load_state_dict(student.state_dict())
    loaded.invalidate()
    import hashlib

    return {
        "history": history,
        "target_images": len(face_keys),
        "clean_images": len(clean_u8) - retained,
        "retained_faces": retained,
        "triggers": {
            "rule": "test half of the split by image id (sha256 of seed 42, identity, image id; cropped view if present); "
                    "the attack's --split train half is never used as a trigger",
            "images_per_name": [len(t) for t in trig_u8],
            # poisoned images built from each name's triggers over the whole run, by position in the names file
            "poisoned_per_name": totals,
            "augmentation": {"face_size_at_224": list(size_range), "rotation_deg": [-30, 29], "flip_p": 0.5,
                             "colour_jitter_bcsh": list(h.colour_jitter)},
        },
        "target_sha256": hashlib.sha256(target.numpy().tobytes()).hexdigest(),
        # per name (by position): its rank among the face set's names by closeness to the target, before training
        "target_name_rank": name_ranks,
        "metrics": metrics,
    }


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


def target_name_ranks(loaded: Any, cache: EmbeddingCache, target: Any, names: list[str], identities: list[str],
                      precision: str = "auto", template: str = "a photo of {}.") -> list[int]:
    """Each forgotten name's rank (1 = nearest) among ``identities`` ∪ ``names`` by the cosine between the
    text tower's ``template`` embedding of the name and the average-person target.

    Image unlearning sends a person's face to the target; if the target is already nearest to that
    person's own name (the most "average" face of the set), the attack can still name them there.
    """
    from clip_unlearn.embed import Encoder

    pool = list({key(n): n for n in [*names, *identities]}.values())
    # never persisted: the only texts ever built this way are the forgotten names' (issue: hashes invert)
    text = Encoder(loaded, cache, precision=precision).texts([template.format(n) for n in pool], persist=False)
    sims = text @ F.normalize(target.float(), dim=0)
    order = {key(pool[int(j)]): r + 1 for r, j in enumerate(sims.argsort(descending=True))}
    return [order[key(n)] for n in names]


def _metrics(student: Any, target: Any, names: list[str], heldout: dict[str, list[Path]], face_keys: list[str],
             target_files: list[Path], transform: Any, mean: Any, std: Any, device: str, autocast: Any, seed: int) -> dict[str, Any]:
    """docs/method.md §8 image metrics under the new tower, on images never used as triggers (names by position)."""
    per_name = []
    for n in names:
        u8, _, _ = decode(heldout.get(key(n), []), transform)
        if len(u8) == 0:
            per_name.append(None)
            continue
        emb = _raw_embed(student, u8, mean, std, device, autocast)
        per_name.append(float(F.cosine_similarity(emb, target.unsqueeze(0), dim=1).mean()))
    sample = list(target_files)
    if len(sample) > SIM_TARGET_SAMPLE:
        sample = random.Random(seed).sample(sample, SIM_TARGET_SAMPLE)
    u8, _, _ = decode(sample, transform)
    new_target = _raw_embed(student, u8, mean, std, device, autocast).mean(0)
    known = [v for v in per_name if v is not None]
    return {
        "sim_id": sum(known) / len(known) if known else None,
        "sim_id_per_name": per_name,
        "sim_target": float(F.cosine_similarity(new_target, target, dim=0)),
        "sim_target_images": len(u8),
    }
