"""The demo end to end with defaults (the project's end-to-end test), and its report in a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from clip_unlearn.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out)], env={"COLUMNS": "200"})
    return out, result


def test_demo_meets_acceptance_and_writes_everything(demo_run):
    out, result = demo_run
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "forgotten names exposed" in text and "all acceptance criteria hold" in text
    for name in ("attack_before.json", "attack_after.json", "eval.json", "report.html", "forget.txt",
                 "unlearned/open_clip_model.safetensors", "unlearned/clip_unlearn.json", "world/world.json"):
        assert (out / name).exists(), name
    after = json.loads((out / "attack_after.json").read_text())
    forgotten = (out / "forget.txt").read_text().splitlines()
    assert len(forgotten) == 5
    assert not any(r["exposed"] for r in after["identities"] if r["name"] in forgotten)


def test_demo_reuses_a_matching_world(demo_run):
    out, _ = demo_run
    stamp = (out / "world" / "world.json").stat().st_mtime_ns
    from clip_unlearn.config import DemoConfig
    from clip_unlearn.demo import _world

    assert _world(DemoConfig(out=out), out, None) == out / "world"
    assert (out / "world" / "world.json").stat().st_mtime_ns == stamp


# opt-in (`pytest -m slow`): another 400-step image run on the full-size world would take CI near its time
# limit; the image stage's acceptance runs by default on the small test world (test_inject_image.py)
@pytest.mark.slow
def test_demo_image_encoder_meets_the_image_acceptance(demo_run, tmp_path):
    out, _ = demo_run
    # the same world (copied, so the demo reuses it), its faces forgotten instead of its names
    shutil.copytree(out / "world", tmp_path / "demo" / "world")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--encoder", "image"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "sim_id (forgotten faces ≈ average person)" in text and "all acceptance criteria hold" in text
    assert "sim_clean (text embeddings" not in text
    sidecar = json.loads((tmp_path / "demo" / "unlearned" / "clip_unlearn.json").read_text())
    assert sidecar["encoder"] == "image" and sidecar["image"]["metrics"]["sim_id"] >= 0.9
    assert "the image encoder" in (tmp_path / "demo" / "report.html").read_text()


def test_demo_rejects_an_unknown_encoder(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--encoder", "faces"])
    assert result.exit_code == 2 and "encoder" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    out, _ = demo_run
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; .ci/run installs it")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    page = (out / "report.html").read_text()
    assert not re.search(r"""src=['"](?!data:)""", page), "report must be self-contained"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "report.html").resolve().as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "id=\"summary\"" in dom.stdout and "forgotten names exposed" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2400", url],
                   capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000
    shutil.copy(shot, out / "report-screenshot.png")
