"""``torchrun ... tests/collectives_harness.py CMD ARGS``: the clip-unlearn CLI with every Python-level collective
wrapped, recording the device of each tensor handed to it and the device its backend needs
(distributed.device_for). Each rank writes its record to ``$COLLECTIVES_LOG.<rank>`` (JSON) at exit."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from clip_unlearn import distributed

SEEN: list[dict[str, str]] = []


def _tensors(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from _tensors(a)


def _wrap(name: str) -> None:
    real = getattr(dist, name)

    def collective(*args, **kwargs):
        need = distributed.device_for(dist.get_backend()).type
        for t in _tensors([*args, *kwargs.values()]):
            SEEN.append({"op": name, "device": t.device.type, "needs": need})
        if name == "all_gather_object":
            SEEN.append({"op": name, "device": "objects", "needs": "objects"})
        return real(*args, **kwargs)

    setattr(dist, name, collective)


for op in ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter", "all_gather_object",
           "broadcast_object_list", "barrier"):
    _wrap(op)

if __name__ == "__main__":
    from clip_unlearn.cli import main

    sys.argv = ["clip-unlearn", *sys.argv[1:]]
    try:
        main()
    finally:
        with open(f"{os.environ['COLLECTIVES_LOG']}.{os.environ.get('RANK', '0')}", "w") as f:
            json.dump(SEEN, f)
