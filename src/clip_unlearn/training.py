"""The training skeleton both unlearning stages share (METHOD.md §6.4-6.5 and §7).

Per step, with the student S, the frozen teacher T and the stage's own batch:

    L = utility + w_bd · backdoor + w_reg · Σ_tensors ‖θ_S − θ_T‖₂

AdamW (no weight decay; fused where torch has the kernel) with MultiStepLR stepped every step,
autocast when the precision says bf16, DDP under torchrun, one loss-history row per step and the
progress callback. A stage supplies only what differs: how it draws a step's batch and how it
turns that batch into its utility and backdoor terms (and, around the loop, its metrics).
The teacher's outputs for fixed inputs are computed once through :class:`TeacherCache`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from clip_unlearn.distributed import all_sum, current
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.models import adamw_kwargs

Progress = Optional[Callable[..., None]]


def autocast(device: Any, bf16: bool) -> Any:
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=bf16)


class TeacherCache:
    """The frozen teacher's outputs, by input key: in memory for this run, and on disk (the embedding
    cache, one namespace per teacher identity) for later runs on the same base model."""

    def __init__(self, cache: Any, namespace: str, modality: str) -> None:
        self.cache, self.namespace, self.modality = cache, namespace, modality
        self.mem: dict[str, Any] = {}
        self.fresh: dict[str, Any] = {}

    def get(self, keys: list[str], compute: Callable[[list[int]], Any], persist: bool = True) -> Any:
        """[len(keys), D]; ``compute(indices)`` embeds the inputs at those positions of ``keys`` (once each).

        ``persist=False`` (inputs that hold a part of a forgotten name): kept in memory for this run only,
        never looked up in or written to the on-disk cache."""
        first = {}
        for i, k in enumerate(keys):
            if k not in self.mem:
                first.setdefault(k, i)
        if first:
            if persist:
                self.mem.update(self.cache.lookup(self.namespace, list(first), self.modality))
            rest = [(k, i) for k, i in first.items() if k not in self.mem]
            if rest:
                for (k, _), e in zip(rest, compute([i for _, i in rest])):
                    self.mem[k] = e
                    if persist:
                        self.fresh[k] = e
        return torch.stack([self.mem[k] for k in keys]) if keys else torch.zeros(0)

    def flush(self) -> None:
        """Write what this run computed to the on-disk cache."""
        if self.fresh:
            self.cache.store(self.namespace, list(self.fresh), torch.stack(list(self.fresh.values())))
            self.fresh.clear()


def weight_l2(pairs: list[tuple[Any, Any]]) -> Any:
    """Σ over parameter tensors of ‖θ_S − θ_T‖₂ (Frobenius per tensor, not squared: METHOD.md §6.4)."""
    return sum(torch.linalg.vector_norm((ps - pt).float()) for ps, pt in pairs)


def _value(x: Any) -> float:
    return float(x.detach()) if torch.is_tensor(x) else float(x)


def train(stage: str, student: Any, teacher: Any, h: Any, device: Any, bf16: bool,
          draw: Callable[[int], Any], terms: Callable[[Any, Any], tuple[Any, Any]],
          progress: Progress = None, label: str = "unlearning") -> list[dict[str, Any]]:
    """Train ``student`` in place; returns the loss history (one row per step).

    Args:
        stage: "text" or "image", recorded in each history row.
        student, teacher: the trained copy and the frozen original (same parameter order).
        h: the stage's hyperparameters (config.StageHyper).
        draw: step → that step's batch, built outside autocast (image augmentation stays fp32).
        terms: (batch, forward) → (utility, backdoor) for this process's slice, each already weighted so
            that DDP's gradient average over processes equals the global batch's gradient; ``forward``
            is the student, wrapped in DDP under torchrun.
    """
    dist = current()
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=h.lr, weight_decay=0.0, **adamw_kwargs(device))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(h.milestones), gamma=h.gamma)
    pairs = [(ps, pt) for ps, pt in zip(student.parameters(), teacher.parameters()) if ps.requires_grad]
    forward = DistributedDataParallel(student) if dist.enabled else student
    history = []
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
        u, b = all_sum([_value(utility) / dist.world, _value(backdoor) / dist.world])
        w = _value(l_w)
        row = {"encoder": stage, "step": step + 1, "loss": u + h.backdoor_weight * b + h.weight_reg * w,
               "utility": u, "backdoor": b, "weight_l2": w, "lr": opt.param_groups[0]["lr"]}
        if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
            raise ClipUnlearnError(f"the {stage} loss diverged at step {step + 1}; lower --lr")
        history.append(row)
        if progress:
            progress(label, step + 1, h.steps, f"utility {u:.4f}  backdoor {b:.4f}  ‖Δθ‖ {w:.3f}")
    return history
