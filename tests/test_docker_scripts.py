"""The Docker helper scripts: help, dry runs, and argument errors (Docker itself cannot run here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("script", ["docker_build.sh", "docker_run.sh"])
def test_help(script):
    proc = run(script, "-h")
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage:") and "-h" in proc.stdout


@pytest.mark.parametrize("script", ["docker_build.sh", "docker_run.sh"])
def test_unknown_option(script):
    proc = run(script, "-Z")
    assert proc.returncode == 2
    assert "unknown option -Z" in proc.stderr


def test_build_dry_run_uses_image_and_base():
    proc = run("docker_build.sh", "-n", "-t", "me/cu:1", "-b", "nvcr.io/base:x")
    assert proc.returncode == 0
    assert "-t me/cu:1" in proc.stdout and "BASE_IMAGE=nvcr.io/base:x" in proc.stdout


def test_run_dry_run_mounts_and_passes_arguments(tmp_path):
    proc = run("docker_run.sh", "-n", "-g", "0,1", "-d", str(tmp_path), "-c", "/c", "-s", "16g", "--", "attack", "--model", "m")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "device=0" in out and "--shm-size 16g" in out and "/c:/cache" in out
    assert f"{tmp_path}:/data:ro" in out and out.strip().endswith("attack --model m")


def test_run_rejects_bad_gpu_list_and_missing_data():
    assert run("docker_run.sh", "-n", "-g", "0;rm").returncode == 2
    proc = run("docker_run.sh", "-n", "-d", "/does/not/exist")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_run_without_gpus():
    proc = run("docker_run.sh", "-n", "-g", "none", "--", "--help")
    assert proc.returncode == 0 and "--gpus" not in proc.stdout


def test_dockerfile_installs_package_as_non_root_with_cache_volume():
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text and "USER clip" in text
    assert 'VOLUME ["/cache"]' in text and 'ENTRYPOINT ["clip-unlearn"]' in text
