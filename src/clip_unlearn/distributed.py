"""Data parallelism with PyTorch's own engine: ``torchrun --nproc-per-node N -m clip_unlearn CMD ...``.

torchrun starts N copies of the command with RANK/WORLD_SIZE/LOCAL_RANK set. ``inject`` then
trains one student wrapped in DistributedDataParallel: every rank draws the same global batch
from the same seeded generators and keeps its slice, so the result equals one process at the
same global batch up to floating-point noise. ``attack`` and ``eval-zeroshot`` shard their
encoding across ranks and gather the embeddings. Only rank 0 prints and writes results.
NCCL is used on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def slice(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def setup(device: str) -> tuple[Dist, str]:
    """Join the process group torchrun prepared (once); returns it and this rank's device."""
    if not launched():
        return Dist(), device
    import torch
    import torch.distributed as dist

    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(d.local_rank)
        device = f"cuda:{d.local_rank}"
    elif device == "auto":
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return d, device


def current() -> Dist:
    """The process group's view if one is initialised, else a single process."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return Dist()
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Dist()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (CPU objects; used for embeddings and small records)."""
    import torch.distributed as dist

    d = current()
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def all_sum(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    if not current().enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    import torch.distributed as dist

    if current().enabled:
        dist.barrier()
