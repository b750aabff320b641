"""Shared fixtures: an isolated state dir per test, a micro model, and one small synthetic world per run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Session- and module-scoped fixtures run outside the per-test home below: give them a private
# state dir too, so no test reads or writes the user's real cache.
os.environ["CLIP_UNLEARN_HOME"] = tempfile.mkdtemp(prefix="clip-unlearn-tests-")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Small enough to build in about a minute on 2 cores, large enough to pass the world's own
# membership check; the full-size world is exercised by the demo test (tests/test_demo.py).
SMALL_WORLD = dict(identities=16, member_fraction=0.75, images_per_identity=20, face_images=20, trigger_images=20,
                   clean_images=480, steps=150, batch_size=128)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_UNLEARN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised micro CLIP saved as a local-dir folder (plumbing tests)."""
    import torch

    from clip_unlearn.models import LoadedModel, ModelSpec, import_open_clip, save_model

    open_clip = import_open_clip()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("clip-unlearn-micro")
    loaded = LoadedModel(model, preprocess, open_clip.get_tokenizer("clip-unlearn-micro"),
                         ModelSpec(raw="clip-unlearn-micro", kind="pretrained", arch="clip-unlearn-micro"),
                         open_clip.get_model_config("clip-unlearn-micro"), {}, "cpu")
    out = tmp_path_factory.mktemp("micro") / "model"
    save_model(loaded, out, {"kind": "test-micro"})
    return out


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The small synthetic world, built once per test run."""
    from clip_unlearn.config import PrepareSyntheticConfig
    from clip_unlearn.synthetic import build_world

    out = tmp_path_factory.mktemp("world") / "world"
    build_world(PrepareSyntheticConfig(out=out, seed=0, **SMALL_WORLD))
    return out
