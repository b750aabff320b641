"""Data parallelism with PyTorch's own engine: ``torchrun --nproc-per-node N -m clip_unlearn CMD ...``.

torchrun starts N copies of the command with RANK/WORLD_SIZE/LOCAL_RANK set. ``inject`` then
trains one student wrapped in DistributedDataParallel: every rank draws the same global batch
from the same seeded generators and keeps its slice, so the result equals one process at the
same global batch up to floating-point noise. ``attack`` and ``eval-zeroshot`` shard their
encoding across ranks and gather the embeddings. Only rank 0 prints and writes results.

Backends: NCCL when every rank has a GPU of its own; gloo on the CPU, and gloo on CUDA when more
ranks than GPUs share a machine (NCCL refuses two ranks on one GPU). ``CLIP_UNLEARN_DIST_BACKEND``
(nccl or gloo) overrides the choice. Every tensor handed to a collective lives on
:func:`collective_device` (NCCL reads CUDA memory only); gathered objects hold CPU tensors only.
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


BACKEND_ENV = "CLIP_UNLEARN_DIST_BACKEND"


def choose_backend(cuda: bool, ranks_here: int, gpus: int, override: str = "") -> str:
    """The process group's backend: ``override`` if given, else NCCL when each of this machine's
    ``ranks_here`` ranks gets a GPU of its own, else gloo (on the CPU, or on GPUs shared by ranks)."""
    from clip_unlearn.errors import ClipUnlearnError

    if override:
        if override not in ("nccl", "gloo"):
            raise ClipUnlearnError(f"{BACKEND_ENV}={override}: use nccl or gloo")
        if override == "nccl" and not cuda:
            raise ClipUnlearnError(f"{BACKEND_ENV}=nccl needs CUDA devices; use gloo or --device cuda")
        return override
    return "nccl" if cuda and ranks_here <= gpus else "gloo"


def setup(device: str) -> tuple[Dist, str]:
    """Join the process group torchrun prepared (once); returns it and this rank's device."""
    if not launched():
        return Dist(), device
    import torch
    import torch.distributed as dist

    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    gpus = torch.cuda.device_count() if cuda else 0
    if cuda:
        if gpus == 0:
            from clip_unlearn.errors import ClipUnlearnError

            raise ClipUnlearnError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        index = d.local_rank % gpus  # more ranks than GPUs: they take turns
        torch.cuda.set_device(index)
        device = f"cuda:{index}"
    elif device == "auto":
        device = "cpu"
    if not dist.is_initialized():
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", str(d.world)))
        dist.init_process_group(choose_backend(cuda, ranks_here, gpus, os.environ.get(BACKEND_ENV, "")))
    return d, device


def collective_device() -> Any:
    """Where tensors handed to a collective must live: this rank's CUDA device under NCCL, else the CPU."""
    import torch.distributed as dist

    return device_for(dist.get_backend())


def device_for(backend: str) -> Any:
    import torch

    if backend != "nccl":
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cuda")


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
    _check_cpu(obj)
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def _check_cpu(obj: Any) -> None:
    """A CUDA tensor inside a gathered object would be unpickled onto the sender's GPU index on every rank."""
    import torch

    if isinstance(obj, torch.Tensor):
        if obj.device.type != "cpu":
            raise ValueError(f"all_gather: a tensor on {obj.device} in a gathered object; move it to the CPU first")
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _check_cpu(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            _check_cpu(x)


def all_sum(values: Any) -> Any:
    """The element-wise sum of ``values`` (a tensor) over all ranks, on ``values``' own device and dtype.
    Summed in float64 on :func:`collective_device`, so the sum of rank shares does not depend on the backend."""
    import torch
    import torch.distributed as dist

    if not current().enabled:
        return values
    t = values.detach().to(collective_device(), torch.float64)
    dist.all_reduce(t)
    return t.to(values.device, values.dtype)


def barrier() -> None:
    import torch.distributed as dist

    if current().enabled:
        if dist.get_backend() == "nccl":
            import torch

            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
