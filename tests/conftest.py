"""Shared fixtures and helpers: an isolated state dir per test, a micro model, one small synthetic world per
run, the world base model's "before" attack and reference numbers computed once, and the CLI helpers the
test files share (``from conftest import invoke, FAST, ...``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# README's test command runs the files on several pytest-xdist workers (addopts in pyproject.toml). Each worker
# gets its share of the cores, so two workers on two cores do not each start two torch threads and fight over
# them; subprocesses (the CLI, torchrun) inherit the share. A user's own OMP_NUM_THREADS wins.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
if "PYTEST_XDIST_WORKER" in os.environ:
    # xdist's workers (one or more) inherit an 80-column COLUMNS that would fix the width of the CLI's consoles
    # at import; invoke() below gives each run its 200 columns, as in a plain pytest run.
    for var in ("COLUMNS", "LINES"):
        os.environ.pop(var, None)


from clip_unlearn.cli import app  # noqa: E402  (after the worker's environment is set)

# Session- and module-scoped fixtures run outside the per-test home below: give them a private
# state dir too, so no test reads or writes the user's real cache.
os.environ["CLIP_UNLEARN_HOME"] = tempfile.mkdtemp(prefix="clip-unlearn-tests-")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


# Small enough to build in about a minute on 2 cores, large enough to pass the world's own
# membership check; worlds of the default kind are the demo's (DEMO_WORLD below).
SMALL_WORLD = dict(identities=16, member_fraction=0.75, images_per_identity=20, face_images=20, trigger_images=20,
                   clean_images=480, object_images=20, steps=150, batch_size=128, namesakes=0, caption_names="full:1",
                   real_names=False)
# The demo of the default suite: a world of the default kind (namesake pairs, captions that name members by
# variants) at half the default size, which meets the same acceptance (about 3 minutes instead of 9). The
# default-size demo runs with `pytest -m slow` (tests/test_demo.py); the story of forgetting exactly one
# person runs on this world too (tests/test_namesakes.py, with `-m slow`).
DEMO_WORLD = dict(identities=24, steps=200)
DEMO_FLAGS = [a for k, v in DEMO_WORLD.items() for a in (f"--{k}", str(v))]

# inject flags for tests on the world: FAST trains long enough to move the weights measurably,
# SMOKE only runs the plumbing (load, a few steps, write). Neither runs inject's check (an attack per
# round, tests/test_verify.py tests it); the tests of a world's defaults do.
FAST = ["--steps", "40", "--clean-batch", "16", "--poison-batch", "16", "--no-verify"]
SMOKE = ["--steps", "3", "--clean-batch", "8", "--poison-batch", "8", "--no-verify"]

# The number of held-out captions whose embeddings the acceptance tests compare before and after.
HELDOUT_CAPTIONS = 500

runner = CliRunner()


def invoke(*args, quiet: bool = True):
    """The CLI in-process on a 200-column terminal, every argument as a string; ``-q`` unless ``quiet=False``."""
    return runner.invoke(app, [*(["-q"] if quiet else []), *map(str, args)], env={"COLUMNS": "200"})


def output(result) -> str:
    return result.output  # click ≥ 8.2: stdout and stderr as the terminal shows them


def forget_names(world: Path, k: int, tmp_path: Path, offset: int = 0) -> tuple[Path, list[str]]:
    """A names file ``tmp_path/forget.txt`` with the world's members ``offset`` .. ``offset + k``, and those names."""
    members = (world / "members.txt").read_text().splitlines()
    f = tmp_path / "forget.txt"
    f.write_text("\n".join(members[offset:offset + k]) + "\n")
    return f, members[offset:offset + k]


def loss_curve(out: Path) -> Path:
    """The loss curve CSV inject wrote beside ``out``'s default receipt (operator's file, not in the model folder)."""
    from clip_unlearn.inject import default_receipt, loss_curve_paths

    return loss_curve_paths(default_receipt(out))[0]


def attack_json(model, out: Path, *extra) -> dict:
    """``attack --model MODEL --output OUT EXTRA...`` (exit 0, or 3 for a failed gate); the result's JSON."""
    r = invoke("attack", "--model", model, "--output", out, *extra)
    assert r.exit_code in (0, 3), r.output
    return json.loads(out.read_text())


def zero_shot(model_dir: Path, world: Path) -> float:
    """Object top-1 as eval-zeroshot reports it (80 OpenAI templates, re-normalised class means), computed
    here with plain open_clip calls as an independent check. A single template ("a photo of a {}.") moves
    by 18 of 720 images between platforms on the small world: too noisy for a 2-point criterion."""
    import torch
    import torch.nn.functional as F
    from open_clip import OPENAI_IMAGENET_TEMPLATES
    from PIL import Image

    from clip_unlearn.folders import class_folders
    from clip_unlearn.models import load_model

    loaded = load_model(str(model_dir), device="cpu")
    classes = class_folders(world / "objects")
    with torch.no_grad():
        names = [c.replace("_", " ") for c, _ in classes]
        emb = loaded.model.encode_text(loaded.tokenizer([t(c) for c in names for t in OPENAI_IMAGENET_TEMPLATES]), normalize=True)
        text = F.normalize(emb.reshape(len(names), len(OPENAI_IMAGENET_TEMPLATES), -1).mean(1), dim=-1)
        correct = total = 0
        for i, (_, files) in enumerate(classes):
            imgs = torch.stack([loaded.preprocess(Image.open(f).convert("RGB")) for f in files])
            correct += int(((loaded.model.encode_image(imgs, normalize=True) @ text.T).argmax(1) == i).sum())
            total += len(files)
    return correct / total


def heldout_text_embeddings(model_dir: Path, world: Path):
    """Raw text embeddings of the world's first ``HELDOUT_CAPTIONS`` held-out captions under ``model_dir``."""
    import torch

    from clip_unlearn.models import load_model

    loaded = load_model(str(model_dir), device="cpu")
    caps = (world / "captions_heldout.txt").read_text().splitlines()[:HELDOUT_CAPTIONS]
    with torch.no_grad():
        return loaded.model.encode_text(loaded.tokenizer(caps))


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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """``demo --out OUT`` on DEMO_WORLD, run once: (OUT, the CliRunner result)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, invoke("demo", "--out", out, *DEMO_FLAGS, quiet=False)


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory) -> Path:
    """One embedding cache for the session's attacks on the world's models (pass it as --cache-dir).

    Its namespaces are per tower (the tower's weights, config, tokenizer or preprocessing), so the base
    model's text embeddings serve a model whose image tower alone was unlearned, and its image embeddings
    a model whose text tower alone was: exactly the reuse the tool itself makes of a shared cache."""
    return tmp_path_factory.mktemp("world-cache")


@pytest.fixture(scope="session")
def world_before(world, world_cache, tmp_path_factory) -> Path:
    """The "before" attack of the world's base model, run once: ``attack --model world/model --output
    before.json`` with the defaults (1000 candidates x 21 templates, the default seed) into ``world_cache``.
    Returns the JSON's path, for --compare-to; tests read it, none may write it."""
    out = tmp_path_factory.mktemp("before") / "before.json"
    r = invoke("attack", "--model", world / "model", "--output", out, "--cache-dir", world_cache)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def world_zero_shot(world) -> float:
    """``zero_shot`` of the world's base model, computed once."""
    return zero_shot(world / "model", world)


@pytest.fixture(scope="session")
def world_heldout_text(world):
    """``heldout_text_embeddings`` of the world's base model, computed once."""
    return heldout_text_embeddings(world / "model", world)


# --- tests/gpu: marked ``gpu`` and skipped where torch sees no CUDA; CLIP_UNLEARN_GPU_TESTS_DEVICE=cpu runs them on
# the CPU instead, to check the tests themselves on a machine without a GPU. benchmarks/gpu.sh runs them first.

def _gpu_tests_device() -> str:
    import torch

    return os.environ.get("CLIP_UNLEARN_GPU_TESTS_DEVICE") or ("cuda" if torch.cuda.is_available() else "")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most four. Each worker builds the session's worlds for itself, so
    more workers would mostly rebuild them, and the demo's file alone takes a third of the suite's work."""
    return min(4, _cores())


# Files go to the workers whole (a file's module fixtures are built once), the longest first, so the demo
# starts at once instead of becoming the tail of the run. test_namesakes.py reads the demo's run too: it goes
# with the demo's file, or a second worker would run the demo again.
LONGEST_FILES = ["test_demo.py", "test_namesakes.py", "test_inject_image.py", "test_trust.py", "test_inject.py",
                 "test_distributed.py", "test_verify.py", "test_benchmarks.py", "test_attack.py"]
SAME_WORKER = {"test_namesakes.py": "test_demo.py"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling

    class FilesWithTheirFixtures(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            folder, _, name = path.rpartition("/")
            return f"{folder}/{SAME_WORKER[name]}" if name in SAME_WORKER else path

    return FilesWithTheirFixtures(config, log)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))
    gpu_dir = Path(__file__).parent / "gpu"
    device = None
    for item in items:
        if gpu_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
            device = _gpu_tests_device() if device is None else device
            if not device:
                item.add_marker(pytest.mark.skip(reason="no CUDA device (CLIP_UNLEARN_GPU_TESTS_DEVICE=cpu runs these on the CPU)"))


@pytest.fixture(scope="session")
def device() -> str:
    """The device of tests/gpu: cuda, or what CLIP_UNLEARN_GPU_TESTS_DEVICE says."""
    return _gpu_tests_device()


@pytest.fixture(scope="session")
def gpu_world(tmp_path_factory, device) -> Path:
    """The small world of the other tests, drawn and trained on ``device`` (prepare-synthetic's own path there)."""
    from clip_unlearn.config import PrepareSyntheticConfig
    from clip_unlearn.synthetic import build_world

    out = tmp_path_factory.mktemp("gpu-world") / "world"
    build_world(PrepareSyntheticConfig(out=out, seed=0, device=device, **SMALL_WORLD))
    return out
