"""The training recipes of inject's two stages: the paper's hyperparameters, the small models' recipe and
the rule that picks one by the model's size (docs/method.md §6.5, §7).

A recipe is data: one frozen dataclass per stage whose defaults are the paper's, and ``SMALL`` beside it.
``recipe`` decides from the model's open_clip config alone, never from whether a model belongs to a
synthetic world. InjectConfig (config.py) turns flags into these; the stages read nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from clip_unlearn.errors import check as _check


def _numbers(value: Any, cast: Callable[[str], Any]) -> Optional[list[Any]]:
    """A comma-separated list of numbers (empty items skipped), or None if one item is not a number."""
    try:
        return [cast(x) for x in str(value).split(",") if x.strip()]
    except ValueError:
        return None


@dataclass(frozen=True)
class StageHyper:
    """What both unlearning stages train with; subclasses add their own. Defaults are the paper's."""

    steps: int = 400
    lr: float = 1e-4
    clean_batch: int = 128
    poison_batch: int = 128
    backdoor_weight: float = 0.6
    weight_reg: float = 0.01
    milestones: tuple[int, ...] = (200, 300)
    gamma: float = 0.5

    def __post_init__(self) -> None:
        _check(1 <= self.steps <= 1_000_000, "steps", "must be between 1 and 1000000", self.steps)
        _check(0 < self.lr < 1, "lr", "must be in (0, 1)", self.lr)
        _check(self.clean_batch >= 1, "clean_batch", "must be ≥ 1", self.clean_batch)
        _check(self.poison_batch >= 1, "poison_batch", "must be ≥ 1", self.poison_batch)
        _check(self.backdoor_weight >= 0, "backdoor_weight", "must be ≥ 0", self.backdoor_weight)
        _check(self.weight_reg >= 0, "weight_reg", "must be ≥ 0", self.weight_reg)
        _check(0 < self.gamma <= 1, "gamma", "must be in (0, 1]", self.gamma)
        ms = list(self.milestones)
        _check(all(m > 0 for m in ms) and ms == sorted(ms), "milestones", "must be increasing positive step numbers like 200,300",
               ",".join(map(str, ms)))


@dataclass(frozen=True)
class TextHyper(StageHyper):
    """The text stage (docs/method.md §6.5). ``scale_names``: see ``for_names``."""

    last_word: bool = False
    scale_names: int = 0
    residual_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 <= self.scale_names <= 1_000_000, "scale_names", "must be between 0 (off) and 1000000", self.scale_names)
        _check(0 <= self.residual_weight <= 100, "residual_weight", "must be between 0 (off) and 100", self.residual_weight)

    def for_names(self, n_names: int) -> TextHyper:
        """The settings trained with for ``n_names`` names: past ``scale_names`` names (0 = never), the
        backdoor weight × n_names / scale_names. The backdoor term is a mean over poisoned captions, so each
        name's pull on the weights shrinks as 1/names while the utility and weight terms stay as they are."""
        if not self.scale_names or n_names <= self.scale_names:
            return self
        return dataclasses.replace(self, backdoor_weight=self.backdoor_weight * n_names / self.scale_names)


@dataclass(frozen=True)
class ImageHyper(StageHyper):
    """The image stage (docs/method.md §7); ``face_size`` is the pasted face's side at 224 px."""

    steps: int = 100
    backdoor_weight: float = 0.8
    weight_reg: float = 0.005
    milestones: tuple[int, ...] = (25, 50)
    gamma: float = 0.1
    face_size: tuple[int, int] = (56, 112)
    colour_jitter: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.1)
    retain_faces: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        fs = list(self.face_size)
        _check(len(fs) == 2 and 1 <= fs[0] <= fs[-1] <= 224, "face_size", "must be MIN,MAX with 1 ≤ MIN ≤ MAX ≤ 224, like 56,112",
               ",".join(map(str, fs)))
        cj = list(self.colour_jitter)
        _check(len(cj) == 4 and all(0 <= v <= 1 for v in cj[:3]) and 0 <= cj[3] <= 0.5, "colour_jitter",
               "must be B,C,S,H with B, C, S in [0, 1] and H in [0, 0.5], like 0.5,0.5,0.5,0.1", ",".join(map(str, cj)))


HYPER = {"text": TextHyper, "image": ImageHyper}
PAPER = {"text": TextHyper(), "image": ImageHyper()}
# The recipe for small models (the paper's is for ViT-B-32), measured on the synthetic world's tiny CLIP
# (text width 128, 32-px images); inject picks it by the model's size (``recipe``), never by whether a
# model is a world's.
# Text, on the default world: 5 forgotten of 32 members → 5 unlearned, 1 other lost, objects unchanged.
# Image: the world's identities are told apart by colours, so the paper's hue/saturation jitter
# turns a trigger into someone else (19 of 27 other members stayed exposed); its 56-112 px faces on
# a 32-px canvas (8-16 px) did not carry over to the attack's full-frame portraits (4 of 5 still
# exposed); larger faces, light jitter and the other people's faces in the utility term kept 25-27
# of 27 others. With 60 triggers a person, the backdoor weight traded forgetting against keeping:
# w_bd 1.0 → mean sim_id 0.89, 27/27 kept; 1.5 → 0.92, 25/27; 1.75 → 0.93, 24/27; 2.0 → 0.94, 24/27
# (800 steps or lr 3e-4 did not help; nor did w_reg 0, no retained faces, 160-224 px faces, mse or
# mae). Over ten seeded sets of 5 these settings meet every acceptance criterion on 6 (docs/experiments.md).
# Text scale_names 16: on the 200-identity world 1, 4 and 16 names at once were all hidden with the world's
# settings, while 100 left 35-41 exposed (4x steps: 35; 4x poisoned captions: 28; w_reg 0: 0 exposed but 7
# of 30 others lost); weight x6.25 left 0, 3, 2, 10, 0 over five seeds (docs/experiments.md).
SMALL = {
    "text": TextHyper(steps=300, lr=2e-3, clean_batch=64, poison_batch=64, backdoor_weight=1.0, last_word=True,
                      scale_names=16),
    "image": ImageHyper(steps=400, backdoor_weight=1.5, milestones=(300, 350), face_size=(200, 224),
                        colour_jitter=(0.1, 0.1, 0.1, 0.0), retain_faces=True),
}
RECIPES = {"paper": PAPER, "small": SMALL}
# Where the small recipe ends: a text tower up to this width, an image tower up to this input side.
SMALL_TEXT_WIDTH = 256
SMALL_IMAGE_SIZE = 64


def recipe(stage: str, model_cfg: dict[str, Any]) -> str:
    """``small`` or ``paper``: the recipe a model's size calls for (its open_clip model config). Text: the
    small recipe up to a text width of SMALL_TEXT_WIDTH (the world's tiny CLIP: 128; ViT-B-32: 512).
    Image: up to SMALL_IMAGE_SIZE px of input (the tiny CLIP: 32; ViT-B-32: 224)."""
    if stage == "text":
        text = model_cfg.get("text_cfg") or {}
        width = text.get("width") if not text.get("hf_model_name") else None
        return "small" if isinstance(width, int) and width <= SMALL_TEXT_WIDTH else "paper"
    size = (model_cfg.get("vision_cfg") or {}).get("image_size")
    side = max(size) if isinstance(size, (list, tuple)) else size
    return "small" if isinstance(side, int) and side <= SMALL_IMAGE_SIZE else "paper"


def recorded(h: StageHyper) -> dict[str, Any]:
    """A stage's hyperparameters as JSON-ready data (tuples as lists), as sidecars and world.json record them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(h).items()}


def _tuple_field(name: str, value: Any) -> Any:
    """A comma-separated flag value (or a recorded list) as the tuple the dataclass holds."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    cast = float if name == "colour_jitter" else int
    parsed = _numbers(value, cast)
    _check(parsed is not None, name, "must be comma-separated numbers", value)
    return tuple(parsed)


def stage_hyper(stage: str, recorded: Optional[dict[str, Any]] = None, explicit: Optional[dict[str, Any]] = None) -> StageHyper:
    """One stage's hyperparameters: ``explicit`` flags over ``recorded`` (a world's settings) over the paper's."""
    cls = HYPER[stage]
    names = {f.name: f for f in dataclasses.fields(cls)}
    given = {k: v for k, v in (explicit or {}).items() if v is not None}
    values = {k: v for k, v in {**(recorded or {}), **given}.items() if k in names and v is not None}
    for k, v in values.items():
        if names[k].type.startswith("tuple"):
            values[k] = _tuple_field(k, v)
    return dataclasses.replace(PAPER[stage], **values)


def paper_default(field_name: str) -> str:
    """The paper's default of a stage field for --help, e.g. "400 text, 100 image"."""
    def show(v: Any) -> str:
        if isinstance(v, tuple):
            return ",".join(map(str, v))
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float) and 0 < v < 1e-3:
            return f"{v:.0e}".replace("e-0", "e-")
        return f"{v:g}" if isinstance(v, float) else str(v)
    have = [(stage, getattr(PAPER[stage], field_name)) for stage in ("text", "image") if hasattr(PAPER[stage], field_name)]
    if len(have) == 2 and have[0][1] == have[1][1]:
        return f"paper {show(have[0][1])}"
    return "paper " + ", ".join(f"{show(v)} {stage}" if len(have) == 2 else show(v) for stage, v in have)
