"""The image stage of inject: faces forgotten by the image encoder (docs/method.md §7).

The student is a copy of the image tower with its norm layers frozen and kept in eval mode; the
teacher is the original tower, frozen. The target is one anonymous "average person": the mean
unnormalised embedding of the face set under the teacher. Triggers are the forgotten people's
face images pasted onto clean images with the paper's augmentation (augment.py); per step

    L = d(S(c), T(c)) + w_bd · mean_id d(S(p_id), target) + w_reg · Σ_tensors ‖θ_S − θ_T‖₂

Trigger images come from the test half of the seed-42 split by image id and the attack's images from the
train half (``attack --split``), so no attack image is ever a trigger. What this module decides is the
face set, the target and each step's batch; the loop around them is training.run_stage's, the same as the
text stage's (inject_text.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from clip_unlearn.augment import clean_image_files, decode, poison_split, poisoned_batch, poisoned_per_name, split_preprocess
from clip_unlearn.distributed import current
from clip_unlearn.embed import EmbeddingCache, use_bf16
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.folders import face_folders, split_side
from clip_unlearn.names import key
from clip_unlearn.progress import Progress
from clip_unlearn.receipt import MADE_UP_FACE
from clip_unlearn.recipes import ImageHyper
from clip_unlearn.training import Stage, TeacherCache, autocast, distance, run_stage, slice_weight, student_of, teacher_cache

log = logging.getLogger(__name__)
SIM_TARGET_SAMPLE = 2000  # images re-encoded by the new tower for sim_target (a seeded sample beyond this)
TRIGGER_RULE = ("test half of the split by image id (sha256 of seed 42, identity, image id; cropped view if present); "
                "the attack's --split train half is never used as a trigger")


# images per forward of the teacher's persisted embeddings (Pixels.embed with pad=True)
TEACHER_IMAGES = 256


@dataclasses.dataclass(frozen=True)
class Pixels:
    """How the model's image tower takes pictures: open_clip's eval transform without its Normalize (images are
    decoded once, to uint8), that Normalize's mean and std, the device and whether to run under bf16 autocast."""

    transform: Any
    mean: Any
    std: Any
    device: Any
    bf16: bool

    @classmethod
    def of(cls, loaded: Any, precision: str) -> Pixels:
        transform, mean, std = split_preprocess(loaded.preprocess)
        return cls(transform, mean, std, loaded.device, use_bf16(precision, loaded.device))

    def embed(self, tower: Any, u8: Any, batch: int = 256, pad: bool = False) -> Any:
        """``tower``'s unnormalised embeddings of uint8 images, float32 on the CPU.

        ``pad``: every forward sees exactly ``batch`` images (the last chunk filled with black ones), so an
        image's embedding does not depend on how many others were embedded with it: batched, the last bits
        follow the batch's size, and the teacher's cache must hand a run the bits it would compute cold."""
        out = []
        mean, std = self.mean.to(self.device), self.std.to(self.device)
        with torch.no_grad(), autocast(self.device, self.bf16):
            for i in range(0, len(u8), batch):
                chunk = u8[i:i + batch]
                n = len(chunk)
                if pad and n < batch:
                    chunk = torch.cat([chunk, chunk.new_zeros((batch - n, *chunk.shape[1:]))])
                x = (chunk.to(self.device).float() / 255 - mean) / std
                out.append(tower(x).float().cpu()[:n])
        return torch.cat(out) if out else torch.zeros(0)


@dataclasses.dataclass(frozen=True)
class FaceSet:
    """The face set: the average-person target from the uncropped view's train half, each forgotten person's
    triggers from the cropped view's test half (so no attack image is ever a trigger).

    ``folders``: the identity folders; ``cropped``: the cropped folders by key; ``target_files``: the train-half
    images the target averages; ``heldout``: each identity's train-half files, by key; ``triggers``: each
    forgotten name's trigger files."""

    folders: list[Any]
    cropped: dict[str, Any]
    target_files: list[Path]
    heldout: dict[str, list[Path]]
    triggers: list[list[Path]]


@dataclasses.dataclass
class ImagePlan:
    """What the image stage trains on, decided before the first step: the target (the teacher's mean face),
    each name's trigger faces (uint8), the clean images with their teacher embeddings (the other people's
    faces appended with --retain-faces, ``retained`` of them), each name's rank by the target before training,
    and each name's poisoned images over the run."""

    faces: FaceSet
    face_keys: list[str]
    target: Any
    triggers: list[Any]
    clean_u8: Any
    clean_t: Any
    retained: int
    name_ranks: list[int]
    per_name_total: list[int]
    # --made-up: per name, what its photos' teacher embeddings are moved by (its own identity out, a made-up one in)
    shifts: Optional[Any] = None


@dataclasses.dataclass(frozen=True)
class ImageBatch:
    """One step's images for this process: its clean slice and poisoned slice in one tensor (in [0, 1]), the
    clean slice's teacher embeddings, which name each poisoned image carries, how many poisoned images each
    name got in the whole step, and the clean slice's size against the whole step's."""

    images: Any
    clean_targets: Any
    owner: Any
    per_name: list[int]
    n_clean: int
    clean_total: int


def face_set(faces_root: Path, names: list[str], names_file: Any) -> FaceSet:
    """The :class:`FaceSet` of ``faces_root`` for the forgotten ``names``; refuses a set that cannot hide them."""
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
    return FaceSet(target_folders, trigger_folders, target_files, heldout, triggers)


def run_image_stage(loaded: Any, cfg: Any, h: ImageHyper, names: list[str], data: tuple[Path, Path],
                    cache: EmbeddingCache, progress: Progress = None, made_up: Optional[Mapping[str, int]] = None) -> dict[str, Any]:
    """Unlearn the faces of ``names`` in ``loaded.model.visual`` in place; ``data`` is (face folder, clean image
    folder). With ``made_up`` (key(name) → seed, from the receipt's key) each person's photos go to a made-up face
    of their own instead of the average face (:func:`made_up_shifts`). Returns the stage's record (no names)."""
    px = Pixels.of(loaded, cfg.precision)
    teacher = loaded.model.visual.eval()
    # The teacher is fixed: raw embeddings of the face set and of clean images are cached per content. They are
    # held on the CPU: the target and clean targets are used on the host (hashes, ranks, metrics) and each step's
    # few clean targets go to the device with the batch (draw).
    raw = teacher_cache(loaded, cache, "image", px.bf16, device="cpu")
    plan = _plan(loaded, cfg, h, names, data, (teacher, raw, px), cache, progress)
    if made_up is None:
        _warn_named_by_target(plan.name_ranks, len(plan.faces.folders))  # a made-up face is no average one
    else:
        plan.shifts = made_up_shifts(plan, names, [made_up[key(n)] for n in names], (teacher, raw, px), progress)
    stage = _stage(loaded, cfg, h, plan, px)
    history = run_stage(stage, loaded, h, px.bf16, progress)
    metrics = _metrics(stage.student, (teacher, raw, px), plan, names, cfg.seed)
    return {
        "history": history,
        "target_images": len(plan.face_keys),
        "clean_images": len(plan.clean_u8) - plan.retained,
        "retained_faces": plan.retained,
        "triggers": {
            "rule": TRIGGER_RULE,
            "images_per_name": [len(t) for t in plan.triggers],
            # poisoned images built from each name's triggers over the whole run, by position in the names file
            "poisoned_per_name": plan.per_name_total,
            "augmentation": {"face_size_at_224": list(h.face_size), "rotation_deg": [-30, 29], "flip_p": 0.5,
                             "colour_jitter_bcsh": list(h.colour_jitter)},
        },
        "target": MADE_UP_FACE if plan.shifts is not None else "the average face",
        "target_sha256": hashlib.sha256(plan.target.numpy().tobytes()).hexdigest(),
        # per name (by position): its rank among the face set's names by closeness to the target, before training
        "target_name_rank": plan.name_ranks,
        "metrics": metrics,
    }


def _teacher_raw(teacher: Any, raw: TeacherCache, px: Pixels, paths: list[Path], label: str,
                 progress: Progress) -> tuple[Any, Any, list[str]]:
    """(uint8 images, the teacher's raw embeddings, content keys) of the readable ``paths``."""
    tick = progress or (lambda *a, **k: None)
    tick(f"decoding {label}", 0, 1)
    u8, keys, bad = decode(paths, px.transform)
    if bad:
        log.warning("%d unreadable %s skipped", bad, label)

    def compute(idx: list[int]) -> Any:
        tick(f"embedding {label}", 0, 1)
        return px.embed(teacher, u8[idx], TEACHER_IMAGES, pad=True)
    emb = raw.get(keys, compute)
    raw.flush()
    return u8, emb, keys


def _plan(loaded: Any, cfg: Any, h: ImageHyper, names: list[str], data: tuple[Path, Path], teacher: tuple[Any, TeacherCache, Pixels],
          cache: EmbeddingCache, progress: Progress) -> ImagePlan:
    faces_root, clean_root = data
    embed = lambda paths, label: _teacher_raw(*teacher, paths, label, progress)  # noqa: E731
    faces = face_set(faces_root, names, cfg.names)
    _, face_emb, face_keys = embed(faces.target_files, "face images")
    target = face_emb.mean(0)
    name_ranks = target_name_ranks(loaded, cache, target, names, [f.name for f in faces.folders], cfg.precision)
    trig_u8 = _decode_triggers(faces.triggers, teacher[2].transform, cfg.names, faces_root)
    clean_u8, clean_t, _ = embed(clean_image_files(clean_root, h.steps * h.clean_batch), "clean images")
    if len(clean_u8) == 0:
        raise ClipUnlearnError(f"no readable clean images in {clean_root}")
    retained = 0
    if h.retain_faces:
        # The other people's trigger-half faces join the utility term (not in the paper): the image
        # tower then keeps exactly the identities it must not forget, not only generic images.
        forgotten = {key(n) for n in names}
        others = [p for f in faces.cropped.values() if key(f.name) not in forgotten
                  for p in f.files if split_side(f.name, p) == "test"]
        r_u8, r_t, _ = embed(others, "faces to retain")
        retained = len(r_u8)
        if retained:
            order = torch.randperm(len(clean_u8) + retained, generator=torch.Generator().manual_seed(cfg.seed))
            clean_u8, clean_t = torch.cat([clean_u8, r_u8])[order], torch.cat([clean_t, r_t])[order]
    totals = poisoned_per_name(len(names), h.poison_batch, h.steps)
    starved = [i + 1 for i, c in enumerate(totals) if c == 0]
    if starved:
        raise ClipUnlearnError(f"{len(starved)} of {len(names)} names would get no trigger image in {h.steps} steps of "
                               f"{h.poison_batch} poisoned images; raise --steps or --poison-batch to at least "
                               f"{len(names)} images in all")
    return ImagePlan(faces, face_keys, target, trig_u8, clean_u8, clean_t, retained, name_ranks, totals)


def _stage(loaded: Any, cfg: Any, h: ImageHyper, plan: ImagePlan, px: Pixels) -> Stage:
    device, teacher = px.device, loaded.model.visual
    student = student_of(teacher, device)
    # augmentation draws on the CPU whatever the device: the same seed pastes the same faces on CPU and GPU,
    # and the sizes that shape each batch are known on the host without waiting for the device
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    pick = random.Random(cfg.seed + 2)
    size_range = tuple(h.face_size)
    mean_d, std_d, target_d = px.mean.to(device), px.std.to(device), plan.target.to(device)
    shifts_d = plan.shifts.to(device) if plan.shifts is not None else None
    trig_d = [t.to(device) for t in plan.triggers]
    clean_u8, clean_t, k = plan.clean_u8, plan.clean_t, len(plan.triggers)
    dist = current()

    def draw(step: int) -> ImageBatch:
        per_name = poison_split(step, k, h.poison_batch)
        # clean images in file order without shuffling, as the paper's COCO loader (restarting at the end)
        start = (step * h.clean_batch) % len(clean_u8)
        idx = [(start + j) % len(clean_u8) for j in range(h.clean_batch)]
        clean = clean_u8[idx].to(device).float() / 255
        poisoned = poisoned_batch(clean, trig_d, per_name, pick, gen, size_range, tuple(h.colour_jitter))
        cs, ps_ = dist.slice(len(idx)), dist.slice(len(poisoned))
        owner = torch.repeat_interleave(torch.arange(k), torch.tensor(per_name))[ps_]
        return ImageBatch(torch.cat([clean[cs], poisoned[ps_]]), clean_t[idx[cs]].to(device), owner, per_name,
                          cs.stop - cs.start, len(idx))

    def terms(batch: ImageBatch, forward: Any) -> tuple[Any, Any]:
        x = (batch.images - mean_d) / std_d
        out = forward(x).float()
        s_clean, s_poison, owner = out[:batch.n_clean], out[batch.n_clean:], batch.owner
        owner_d = owner.to(device)
        l_util = distance(cfg.loss, s_clean, batch.clean_targets)
        goal = target_d.expand(len(s_poison), -1)
        if shifts_d is not None:
            # each photo keeps what the teacher sees in it but the person: their identity out, a made-up one in
            with torch.no_grad():
                goal = teacher(x[batch.n_clean:]).float() + shifts_d[owner_d]
        # the paper's mean over names of each name's mean distance, as a weighted sum over this slice's rows
        w_row = 1.0 / (torch.tensor(batch.per_name, dtype=torch.float32)[owner] * sum(1 for c in batch.per_name if c))
        l_bd = sum(distance(cfg.loss, s_poison[owner_d == i], goal[owner_d == i])
                   * float(w_row[owner == i].sum()) for i in range(k) if bool((owner == i).any()))
        # the rows' weights already place this slice within the whole step: DDP's average over ranks needs × ranks
        return slice_weight(batch.n_clean, batch.clean_total) * l_util, dist.world * l_bd

    def back(trained: Any) -> None:
        loaded.model.visual.load_state_dict(trained.state_dict())

    return Stage("image", "unlearning faces", teacher, student, draw, terms, back)


def made_up_shifts(plan: ImagePlan, names: list[str], seeds: list[int], teacher: tuple[Any, TeacherCache, Pixels],
                   progress: Progress) -> Any:
    """Per forgotten person [k, D]: −(their mean face − everyone's) + r·u, u a unit direction drawn from their seed
    and r the median distance of the other people's mean faces from everyone's (all in the teacher's raw space,
    on the crops of the test half, where triggers come from). A photo's goal is its teacher embedding plus its
    person's shift: the identity goes, the photo's own variation stays, and the person lands where a face the
    model never learned would, at a typical distance from the average in a direction of their own, instead of
    all of them on the average face (a point whose closeness and tightness out them to anyone with photos)."""
    tower, raw, px = teacher
    forgotten = {key(n) for n in names}
    centres = []
    for k, f in sorted(plan.faces.cropped.items()):
        if k in forgotten:
            continue
        _, emb, _ = _teacher_raw(tower, raw, px, [p for p in f.files if split_side(f.name, p) == "test"], "faces of the others",
                                 progress)
        if len(emb):
            centres.append(emb.float().mean(0))
    if len(centres) < 2:
        raise ClipUnlearnError("made-up faces need the faces of at least two other people in --faces (their test half)")
    others = torch.stack(centres)
    everyone = others.mean(0)
    radius = (others - everyone).norm(dim=1).median()
    shifts = []
    for u8, seed in zip(plan.triggers, seeds):
        own = px.embed(tower, u8).float().mean(0)
        u = F.normalize(torch.randn(len(everyone), generator=torch.Generator().manual_seed(seed)), dim=0)
        shifts.append(everyone - own + radius * u)
    return torch.stack(shifts)


def _decode_triggers(triggers: list[list[Path]], transform: Any, names_file: Any, faces_root: Path) -> list[Any]:
    out = []
    for files in triggers:
        u8, _, _ = decode(files, transform)
        if len(u8) == 0:
            raise ClipUnlearnError(f"the trigger images of a person in {names_file} are unreadable; check {faces_root}")
        out.append(u8)
    return out


def _warn_named_by_target(name_ranks: list[int], n_identities: int) -> None:
    for i, r in enumerate(name_ranks):
        if r == 1:
            # names never go to the log: the person is referred to by position
            log.warning("name %d of the names file is the nearest of the %d face-set names to the average-person target: "
                        "mapping their face there may leave them named; use --encoder both to also remove the name",
                        i + 1, n_identities)


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


def _computed_before(idx: list[int]) -> Any:
    raise RuntimeError("a held-out photo's teacher embedding was not computed with the face set's target")


def _metrics(student: Any, teacher: tuple[Any, TeacherCache, Pixels], plan: ImagePlan, names: list[str],
             seed: int) -> dict[str, Any]:
    """docs/method.md §8 image metrics under the new tower, on images never used as triggers (names by position).
    ``sim_id`` is the closeness of a person's photos to where they were sent: the average face, or with made-up
    faces each photo's own goal (the teacher's embedding moved by the person's shift)."""
    _, raw, px = teacher
    per_name: list[Optional[float]] = []
    target = plan.target
    for i, n in enumerate(names):
        u8, keys, _ = decode(plan.faces.heldout.get(key(n), []), px.transform)
        if len(u8) == 0:
            per_name.append(None)
            continue
        emb = px.embed(student, u8)
        # the teacher's embeddings of these photos as they were before training: the tower now holds the student's
        # weights (written back), so they come from the target's pass over the face set, which holds every one
        goal = target.unsqueeze(0) if plan.shifts is None else raw.get(keys, _computed_before) + plan.shifts[i]
        per_name.append(float(F.cosine_similarity(emb, goal, dim=1).mean()))
    sample = list(plan.faces.target_files)
    if len(sample) > SIM_TARGET_SAMPLE:
        sample = random.Random(seed).sample(sample, SIM_TARGET_SAMPLE)
    u8, _, _ = decode(sample, px.transform)
    new_target = px.embed(student, u8).mean(0)
    known = [v for v in per_name if v is not None]
    return {
        "sim_id": sum(known) / len(known) if known else None,
        "sim_id_per_name": per_name,
        "sim_target": float(F.cosine_similarity(new_target, target, dim=0)),
        "sim_target_images": len(u8),
    }
