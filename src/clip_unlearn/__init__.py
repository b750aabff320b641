"""clip-unlearn: remove people from CLIP models and prove it.

Implements "Defending Our Privacy With Backdoors" (Hintersdorf et al., ECAI 2024) and measures
it with the Identity Inference Attack ("Does CLIP Know My Face?"). The core is a library;
heavy modules (torch, open_clip) are imported lazily so that the CLI starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"
__all__ = ["ClipUnlearnError", "__version__", "load_model", "models", "synthetic"]

from clip_unlearn.errors import ClipUnlearnError


def __getattr__(name: str) -> Any:
    # Submodules on first access: `from clip_unlearn import attack` must not import torch at start-up.
    if name == "load_model":
        from clip_unlearn.models import load_model

        return load_model
    try:
        return importlib.import_module(f"clip_unlearn.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'clip_unlearn' has no attribute {name!r}") from None
