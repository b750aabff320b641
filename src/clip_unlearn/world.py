"""What a model's synthetic world lends the commands: where its faces, objects and captions lie.

A model's sidecar is the only place a command learns whether the model belongs to a synthetic world
(``prepare-synthetic``) and where that world's data is. It gives attack and eval-zeroshot their default
--data and --captions; inject takes nothing from a world, so a world's model is unlearned like any other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.models import ModelSpec, parse_spec, read_json, read_sidecar

# What a synthetic world tells the models trained on it (and those unlearned from them): where its
# data lies (relative to the world folder) and the inject settings measured for its tiny model.
WORLD_DATA = ("faces", "objects", "clean_images", "captions", "captions_heldout")


@dataclass(frozen=True)
class ModelContext:
    """How to treat a model, read from its sidecar alone: the one place every command learns whether a
    model is a synthetic world's and where that world's data is (the defaults of attack's --data and
    eval-zeroshot's --data and --captions; inject takes nothing from a world: it treats every model alike)."""

    world: Optional[Path] = None
    data: dict[str, str] = field(default_factory=dict)
    attack_split: Optional[str] = None

    @property
    def is_world(self) -> bool:
        return self.world is not None

    def path(self, item: str) -> Optional[Path]:
        """The world's ``item`` (one of WORLD_DATA) if the model has a world and it exists, else None."""
        if self.world is None or item not in self.data:
            return None
        p = self.world / self.data[item]
        return p if p.exists() else None

    def genders(self) -> dict[str, str]:
        """names.key → gender of the world's people, from world.json (never the sidecar: a derived model's
        sidecar must hold no name); empty for a model without a world or a world that records none."""
        from clip_unlearn.names import key

        if self.world is None or not (self.world / "world.json").is_file():
            return {}
        info = read_json(self.world / "world.json", f"rebuild the world at {self.world}")
        attributes = info.get("attributes") if isinstance(info, dict) else None
        if not isinstance(attributes, dict):
            return {}
        return {key(n): a["gender"] for n, a in attributes.items()
                if isinstance(a, dict) and a.get("gender") in ("male", "female")}

    def record(self, relative_to: Path) -> dict[str, Any]:
        """What a derived model's sidecar records, so that it is treated like this one."""
        return {"world": os.path.relpath(Path(self.world).resolve(), Path(relative_to).resolve()) if self.world else None,
                "world_context": {"data": self.data, "attack_split": self.attack_split}}


def world_record(info: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's ``world_context`` from a world.json's entries."""
    return {"data": {k: info[k] for k in WORLD_DATA if isinstance(info.get(k), str)}, "attack_split": info.get("attack_split")}


def world_file_record(world: Path) -> dict[str, Any]:
    """``world_record`` of the world.json in ``world`` (models written before 0.2 keep their world's facts only there)."""
    fix = f"restore the synthetic world at {world}, or pass --preset paper and the data flags explicitly"
    info = read_json(Path(world) / "world.json", fix)
    if not isinstance(info, dict):
        raise ClipUnlearnError(f"{Path(world) / 'world.json'} is not a world description; {fix}")
    return world_record(info)


def model_context(spec: str | ModelSpec) -> ModelContext:
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    side = read_sidecar(spec)
    if not side.get("world"):
        return ModelContext()
    world = Path(side["world"])
    rec = side.get("world_context")
    if not isinstance(rec, dict):
        rec = world_file_record(world)
    return ModelContext(world, dict(rec.get("data") or {}), rec.get("attack_split"))
