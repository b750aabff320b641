"""Shared helpers for the benchmark scripts: machine facts, medians, and appending to BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import random
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _cpu_seconds() -> tuple[float, float, float]:
    """(wall clock, busy CPU seconds of the whole machine, CPU seconds of this process and its reaped children)."""
    busy = float("nan")
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError):
        pass
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return time.perf_counter(), busy, own


# Other jobs sharing the cores slow a benchmark down; append() reports how much CPU they took.
_START = _cpu_seconds()


def other_load() -> str:
    """Average number of cores that other processes kept busy since this script started."""
    wall, busy, own = (b - a for a, b in zip(_START, _cpu_seconds()))
    if busy != busy or wall <= 0:
        return "unknown (no /proc/stat)"
    return f"{max(0.0, (busy - own) / wall):.2f} of {os.cpu_count()} cores on average"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def sync(device: str = "cpu") -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a timer alone measures the queueing)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str = "cpu") -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def random_vit_b32(folder: Path, arch: str = "ViT-B-32-quickgelu") -> Path:
    """A randomly initialised ViT-B-32 saved as a local-dir model (no weights can be downloaded here)."""
    import torch

    from clip_unlearn.models import LoadedModel, ModelSpec, import_open_clip, save_model

    out = folder / arch
    if (out / "open_clip_model.safetensors").exists():
        return out
    open_clip = import_open_clip()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(arch)
    loaded = LoadedModel(model, preprocess, open_clip.get_tokenizer(arch), ModelSpec(raw=arch, kind="pretrained", arch=arch),
                         open_clip.get_model_config(arch), {}, "cpu")
    save_model(loaded, out, {"kind": "benchmark-random"})
    return out


def face_folders(folder: Path, identities: int, images: int, seed: int = 0) -> Path:
    """``identities`` × ``images`` synthetic face PNGs in <First_Last>/ folders."""
    from clip_unlearn.drawing import draw_face, sample_identities
    from clip_unlearn.names import folder_name, world_names

    out = folder / f"faces-{identities}x{images}"
    if out.is_dir():
        return out
    rng = random.Random(seed)
    people = sample_identities(identities, rng, min_diff=1)
    for name, who in zip(world_names(identities, rng), people):
        d = out / folder_name(name)
        d.mkdir(parents=True)
        for j in range(images):
            draw_face(who, rng).save(d / f"{j:03d}.png")
    return out


def benchmarks_file() -> Path:
    """BENCHMARKS.md, or the file ``CLIP_UNLEARN_BENCHMARKS`` names (a dry run must not touch the real one)."""
    return Path(os.environ.get("CLIP_UNLEARN_BENCHMARKS") or ROOT / "BENCHMARKS.md")


def append(title: str, rows: list[tuple[str, str]], note: str = "", command: str = "") -> None:
    """Append a section with the machine, the exact command (``command``, else this script's) and a
    two-column table to BENCHMARKS.md."""
    cmd = command or "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    lines = [f"\n## {title}\n", f"- date: {time.strftime('%Y-%m-%d')}", f"- machine: {machine()}", f"- command: `{cmd}`",
             f"- other jobs during the run: {other_load()} (above ~0.1 the seconds are inflated; ratios measured in one run less so)"]
    if note:
        lines.append(f"- {note}")
    lines += ["", "| measure | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows], ""]
    text = "\n".join(lines)
    print(text)
    path = benchmarks_file()
    if not path.exists():
        path.write_text("# Benchmarks\n\nEvery figure below was appended by the script and command it names "
                        "(`benchmarks/`); rerun the command to reproduce it.\n")
    with path.open("a") as f:
        f.write(text)


def cli(*args: object, check: bool = True) -> int:
    """``clip-unlearn -q ARGS`` in a process of its own (stdout dropped); its exit code."""
    import subprocess

    # the source tree first, so that an uninstalled checkout runs its own code
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "clip_unlearn", "-q", *map(str, args)], check=check,
                          stdout=subprocess.DEVNULL, env=env).returncode
