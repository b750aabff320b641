"""The training skeleton both unlearning stages share (docs/method.md §6.4-6.5 and §7).

Per step, with the student S, the frozen teacher T and the stage's own batch:

    L = utility + w_bd · backdoor + w_reg · Σ_tensors ‖θ_S − θ_T‖₂

AdamW (no weight decay; fused where torch has the kernel) with MultiStepLR stepped every step,
autocast when the precision says bf16, DDP under torchrun, one loss-history row per step and the
progress callback. A stage supplies only what differs: how it draws a step's batch and how it
turns that batch into its utility and backdoor terms (and, around the loop, its metrics).
The teacher's outputs for fixed inputs are computed once through :class:`TeacherCache`.

A stage hands :func:`run_stage` a :class:`Stage`: its frozen teacher and trainable student (from
:func:`student_of`), the batch draw, the loss terms, the caches to flush and how the trained weights go back
into the CLIP. Everything around the loop that both stages share happens there, once.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from clip_unlearn.distributed import all_sum, current
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.progress import Progress

NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


def distance(kind: str, x: Any, y: Any) -> Any:
    """The paper's loss functions (docs/method.md §6.4), rows flattened, mean reduction."""
    x, y = x.flatten(1).float(), y.flatten(1).float()
    if kind == "cosine":
        return -F.cosine_similarity(x, y, dim=1, eps=1e-8).mean()
    if kind == "mse":
        return F.mse_loss(x, y)
    if kind == "mae":
        return F.l1_loss(x, y)
    if kind == "poincare":
        u = x / x.abs().sum(dim=1, keepdim=True)
        v = y / y.abs().sum(dim=1, keepdim=True)
        uu, vv = (u * u).sum(1), (v * v).sum(1)
        delta = 2 * ((u - v) ** 2).sum(1) / ((1 - uu) * (1 - vv) + 1e-10)
        return torch.arccosh(1 + delta).mean()
    raise ValueError(f"unknown loss {kind!r}")


def freeze_norms(module: Any) -> None:
    """Norm layers keep their weights and, in eval mode, their running statistics (docs/method.md §6.4, §7),
    whatever ``.train()`` the rest of the module is in."""
    for m in module.modules():
        if isinstance(m, NORMS):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def student_of(teacher: Any, device: Any) -> Any:
    """Freeze ``teacher`` (eval mode, no gradients) and return its trainable copy on ``device``, norms frozen."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher).to(device).train()
    for p in student.parameters():
        p.requires_grad_(True)
    freeze_norms(student)
    return student


def teacher_cache(loaded: Any, cache: Any, modality: str, bf16: bool, device: Any = "cpu") -> TeacherCache:
    """The stage's :class:`TeacherCache`: one on-disk namespace per teacher tower, precision and (unnormalised)
    output, so a later run on the same base model finds what this one computed."""
    from clip_unlearn.embed import tower_identity

    prefix = "teacher-" if modality == "text" else "visual-raw-"
    # entries computed the way that makes a row independent of its batch (texts of one length, images in
    # full fixed-size batches), never mixed with those of the batched code before
    from clip_unlearn.inject_image import TEACHER_IMAGES
    from clip_unlearn.inject_text import TEACHER_ROWS

    extra = (f"unnormalized, same-length batches of {TEACHER_ROWS}" if modality == "text"
             else f"unnormalized, fixed batches of {TEACHER_IMAGES}")
    ident = tower_identity(loaded, modality, "bf16" if bf16 else "fp32", extra)
    return TeacherCache(cache, prefix + ident, modality, device=device)


def slice_weight(part: int, whole: int) -> float:
    """A term's weight for this process's ``part`` of a ``whole`` global batch: under torchrun every rank draws
    the same global batch and trains on its slice, and DDP averages the gradients, so the slices' terms weighted
    this way average to the global batch's."""
    return current().world * part / whole


@dataclasses.dataclass
class Stage:
    """What a stage supplies to :func:`run_stage`.

    ``draw``: step → that step's batch, built outside autocast (image augmentation stays fp32).
    ``terms``: (batch, forward) → (utility, backdoor) for this process's slice, each weighted with
    :func:`slice_weight`; ``forward`` is the student, wrapped in DDP under torchrun.
    ``write_back``: copies the trained student into the CLIP. ``caches``: flushed to disk after training.
    """

    name: str
    label: str
    teacher: Any
    student: Any
    draw: Callable[[int], Any]
    terms: Callable[[Any, Any], tuple[Any, Any]]
    write_back: Callable[[Any], None]
    caches: list[TeacherCache] = dataclasses.field(default_factory=list)


def run_stage(stage: Stage, loaded: Any, h: Any, bf16: bool, progress: Progress = None) -> list[dict[str, Any]]:
    """Train the stage, flush its teacher caches, put the trained weights back into ``loaded``'s CLIP (whose
    memoised embeddings are then stale) and leave the student in eval mode; returns the loss history."""
    history = train(stage, h, loaded.device, bf16, progress)
    for c in stage.caches:
        c.flush()
    stage.student.eval()
    stage.write_back(stage.student)
    loaded.invalidate()
    return history


def adamw_kwargs(device: Any) -> dict[str, bool]:
    """``{"fused": True}`` where this torch has a fused AdamW kernel for ``device``'s type, else ``{}``.

    Same update rule either way; fused is only faster. CUDA has had the kernel since AdamW took
    ``fused`` (2.0); CPU only since torch 2.4, and older releases raise at the first step.
    """

    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return {}
    kind = torch.device(device).type
    version = tuple(int(x) for x in re.findall(r"\d+", str(torch.__version__))[:2])
    if kind == "cuda" or (kind == "cpu" and version >= (2, 4)):
        try:
            from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        except ImportError:  # older torch: the version rule above is all there is to go on
            return {"fused": True}
        return {"fused": True} if kind in _get_fused_kernels_supported_devices() else {}
    return {}


def autocast(device: Any, bf16: bool) -> Any:
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=bf16)


class TeacherCache:
    """The frozen teacher's outputs, by input key: in memory for this run, and on disk (the embedding
    cache, one namespace per teacher identity) for later runs on the same base model.

    Whatever an output comes from (the disk, always float32 on the CPU, or ``compute`` on the
    teacher's device and precision), :meth:`get` returns it on ``device`` as ``dtype``: the one place
    where cached and fresh outputs meet the consumer's device."""

    def __init__(self, cache: Any, namespace: str, modality: str, device: Any = "cpu", dtype: Any = torch.float32) -> None:
        self.cache, self.namespace, self.modality = cache, namespace, modality
        self.device, self.dtype = torch.device(device), dtype
        self.mem: dict[str, Any] = {}
        self.fresh: set[str] = set()

    def get(self, keys: list[str], compute: Callable[[list[int]], Any], persist: bool = True) -> Any:
        """[len(keys), D] on ``device`` as ``dtype``; ``compute(indices)`` embeds the inputs at those positions
        of ``keys`` (once each).

        ``persist=False`` (inputs that hold a part of a forgotten name): kept in memory for this run only,
        never looked up in or written to the on-disk cache."""
        first = {}
        for i, k in enumerate(keys):
            if k not in self.mem:
                first.setdefault(k, i)
        if first:
            if persist:
                self._hold(self.cache.lookup(self.namespace, list(first), self.modality))
            rest = [(k, i) for k, i in first.items() if k not in self.mem]
            if rest:
                self._hold(dict(zip([k for k, _ in rest], compute([i for _, i in rest]))))
                if persist:
                    self.fresh.update(k for k, _ in rest)
        if not keys:
            return torch.zeros(0, device=self.device, dtype=self.dtype)
        return torch.stack([self.mem[k] for k in keys])

    def _hold(self, found: dict[str, Any]) -> None:
        if found:
            block = torch.stack(list(found.values())).to(self.device, self.dtype)
            self.mem.update(zip(found, block))

    def flush(self) -> None:
        """Write what this run computed to the on-disk cache (EmbeddingCache.store moves it to the CPU)."""
        if self.fresh:
            keys = list(self.fresh)
            self.cache.store(self.namespace, keys, torch.stack([self.mem[k] for k in keys]))
            self.fresh.clear()


def weight_l2(pairs: list[tuple[Any, Any]]) -> Any:
    """Σ over parameter tensors of ‖θ_S − θ_T‖₂ (Frobenius per tensor, not squared: docs/method.md §6.4)."""
    return sum(torch.linalg.vector_norm((ps - pt).float()) for ps, pt in pairs)


# Loss figures reach the host every LOG_EVERY steps (and at the first and last), from one stacked
# tensor: a float() per term and step would make every step wait for the device to finish.
LOG_EVERY = 10


def _term(x: Any, device: Any) -> Any:
    """A loss term as a detached float32 scalar on ``device`` (a stage may return a plain 0 for an empty slice)."""
    return x.detach().float().reshape(()) if torch.is_tensor(x) else torch.tensor(float(x), device=device)


def train(stage: Stage, h: Any, device: Any, bf16: bool, progress: Progress = None) -> list[dict[str, Any]]:
    """Train ``stage.student`` in place; returns the loss history (one row per step, its ``encoder`` the
    stage's name). ``h``: the stage's hyperparameters (recipes.StageHyper); ``progress`` is called as
    (label, step, steps, text) whenever the figures reach the host."""
    dist = current()
    student, teacher, draw, terms, label = stage.student, stage.teacher, stage.draw, stage.terms, stage.label
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=h.lr, weight_decay=0.0, **adamw_kwargs(device))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(h.milestones), gamma=h.gamma)
    pairs = [(ps, pt) for ps, pt in zip(student.parameters(), teacher.parameters()) if ps.requires_grad]
    forward = DistributedDataParallel(student) if dist.enabled else student
    history: list[dict[str, Any]] = []
    pending: list[tuple[int, Any, float]] = []  # (step, [utility, backdoor, weight_l2] on the device, lr)
    for step in range(h.steps):
        batch = draw(step)
        with autocast(device, bf16):
            utility, backdoor = terms(batch, forward)
        l_w = weight_l2(pairs)
        loss = utility + h.backdoor_weight * backdoor + h.weight_reg * l_w
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        lr = opt.param_groups[0]["lr"]  # a Python float: the rate the next step will use
        pending.append((step + 1, torch.stack([_term(utility, device), _term(backdoor, device), _term(l_w, device)]), lr))
        if step == 0 or (step + 1) % LOG_EVERY == 0 or step + 1 == h.steps:
            history.extend(_rows(stage.name, h, pending))
            pending.clear()
            if progress:
                r = history[-1]
                progress(label, r["step"], h.steps, f"utility {r['utility']:.4f}  backdoor {r['backdoor']:.4f}  ‖Δθ‖ {r['weight_l2']:.3f}")
    return history


def _rows(stage: str, h: Any, pending: list[tuple[int, Any, float]]) -> list[dict[str, Any]]:
    """The history rows of the steps in ``pending``: one host transfer, and under torchrun one all-reduce of
    the utility and backdoor terms (each process holds its slice's share; the weight term is the same on all)."""
    block = torch.stack([t for _, t, _ in pending])
    dist = current()
    if dist.enabled:
        terms = all_sum(block[:, :2] / dist.world)
        block = torch.cat([terms.to(block.device, block.dtype), block[:, 2:]], 1)
    rows = []
    for (step, _, lr), (u, b, w) in zip(pending, block.tolist()):
        row = {"encoder": stage, "step": step, "loss": u + h.backdoor_weight * b + h.weight_reg * w,
               "utility": u, "backdoor": b, "weight_l2": w, "lr": lr}
        if not all(math.isfinite(v) for v in (u, b, w)):
            raise ClipUnlearnError(f"the {stage} loss diverged at step {step}; lower --lr")
        rows.append(row)
    return rows
