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
from clip_unlearn.config import DEFAULT_TRIGGERS
from clip_unlearn.demo import Utility, acceptance, goals, namesakes
from conftest import DEMO_FLAGS, DEMO_WORLD

runner = CliRunner()


def _acceptance_of(out, encoder):
    """The acceptance criteria applied to what a demo run wrote to ``out``, as run_demo applies them."""
    before = json.loads((out / "attack_before.json").read_text())
    after = json.loads((out / "attack_after.json").read_text())
    ev = json.loads((out / "eval.json").read_text())
    sidecar = json.loads((out / "unlearned" / "clip_unlearn.json").read_text())
    sim_id = sidecar["image"]["metrics"]["sim_id"] if encoder in ("image", "both") else None
    utility = Utility(100 * ev["compare"]["metrics"]["acc1"], 100 * ev["metrics"]["acc1"], ev["similarities"]["sim_clean"], sim_id)
    return acceptance(before["identities"], after["identities"], (out / "forget.txt").read_text().splitlines(),
                      (out / "world" / "members.txt").read_text().splitlines(), utility, encoder)


def _rows(exposed):
    return [{"name": n, "exposed": e} for n, e in exposed.items()]


# a hand-made world: f1, f2 forgotten; ten other members exposed before; one member never exposed; one non-member
MEMBERS = ["f1", "f2", *(f"m{i}" for i in range(10)), "quiet"]
BEFORE = _rows({**{n: True for n in MEMBERS}, "quiet": False, "stranger": False})
GOOD_AFTER = {**{n: True for n in MEMBERS}, "f1": False, "f2": False, "quiet": False, "stranger": False}


def _check(after=None, top1_after=50.0, sim_clean=0.99, sim_id=0.95, encoder="text", forget=("f1", "f2"), members=MEMBERS,
           before=BEFORE):
    return acceptance(before, _rows(after or GOOD_AFTER), list(forget), members, Utility(50.0, top1_after, sim_clean, sim_id),
                      encoder)


def _goals(after=None, top1_after=50.0, encoder="text", sims=None, forget=("f1", "f2"), members=MEMBERS, before=BEFORE):
    return goals(before, _rows(after or GOOD_AFTER), list(forget), members, 50.0, top1_after, sims, encoder)


def test_acceptance_passes_a_clean_run_for_every_encoder():
    for encoder in ("text", "image", "both"):
        assert _check(encoder=encoder) == [], encoder


def test_acceptance_names_a_forgotten_person_still_exposed():
    assert _check({**GOOD_AFTER, "f2": True}) == ["1 forgotten name(s) still exposed"]


def test_acceptance_needs_nine_in_ten_other_members_kept():
    assert _check({**GOOD_AFTER, "m0": False}) == []  # 9 of 10
    assert _check({**GOOD_AFTER, "m0": False, "m1": False}) == [
        "only 8 of 10 other exposed members stay exposed (need ≥ 90%)"]


def test_acceptance_allows_two_points_of_top1_with_text_and_three_image_only():
    assert _check(top1_after=48.0) == []
    assert _check(top1_after=47.9) == ["zero-shot top-1 dropped 2.1 points (allowed 2)"]
    assert _check(top1_after=47.9, encoder="both") == ["zero-shot top-1 dropped 2.1 points (allowed 2)"]
    assert _check(top1_after=47.0, encoder="image") == []
    assert _check(top1_after=46.9, encoder="image") == ["zero-shot top-1 dropped 3.1 points (allowed 3)"]


def test_goals_keep_the_namesakes_apart_and_want_nineteen_in_twenty():
    # twenty namesakes of "Ann Lee" (her first name or surname), exposed before, and ten others
    near = [f"Ann N{i}" for i in range(10)] + [f"M{i} Lee" for i in range(10)]
    members = ["Ann Lee", *near, *(f"m{i}" for i in range(10))]
    before = _rows({n: True for n in members})
    good = {**{n: True for n in members}, "Ann Lee": False}
    kw = dict(forget=["Ann Lee"], members=members, before=before)
    assert _goals(good, **kw) == [] and _check(good, **kw) == []
    assert _goals({**good, "Ann N0": False}, **kw) == []  # 19 of 20
    lost = {**good, "Ann N0": False, "M3 Lee": False}
    assert _goals(lost, **kw) == ["18 of 20 namesakes of the forgotten stay exposed by full name (goal ≥ 95%)"]
    # the namesakes are a goal, not a promise, and are not counted among the others
    assert _check(lost, **kw) == [] and _check({**good, "m0": False}, **kw) == []
    assert _goals(lost, encoder="image", **kw) == []


def test_goals_want_one_point_of_top1_and_sim_bystanders_and_sim_words_where_measured():
    assert _goals(top1_after=49.0, sims={"sim_bystanders": 0.96, "sim_words": None}) == []
    assert _goals(top1_after=48.9, sims={"sim_bystanders": 0.94, "sim_words": 0.9}) == [
        "zero-shot top-1 dropped 1.1 points (goal ≤ 1)", "sim_bystanders 0.940 (goal ≥ 0.95)", "sim_words 0.900 (goal ≥ 0.95)"]
    assert _goals(top1_after=40.0, sims={"sim_bystanders": 0.5}, encoder="image") == []


def test_acceptance_checks_sim_clean_only_when_the_text_encoder_trained():
    assert _check(sim_clean=0.94) == ["sim_clean 0.940 < 0.95"]
    assert _check(sim_clean=0.94, encoder="both") == ["sim_clean 0.940 < 0.95"]
    assert _check(sim_clean=0.94, encoder="image") == []
    assert _check(sim_clean=None) == ["sim_clean was not measured (needed when the text encoder was trained)"]


def test_acceptance_checks_sim_id_only_when_the_image_encoder_trained():
    message = "sim_id 0.890 < 0.9 (forgotten faces not near the average person)"
    assert _check(sim_id=0.89, encoder="image") == [message]
    assert _check(sim_id=0.89, encoder="both") == [message]
    assert _check(sim_id=0.89) == [] and _check(sim_id=None) == []
    assert _check(sim_id=None, encoder="image") == ["sim_id was not measured (needed when the image encoder was trained)"]


def test_acceptance_lists_every_failed_criterion():
    failures = _check({**GOOD_AFTER, "f1": True, "m0": False, "m1": False}, top1_after=40.0, sim_clean=0.5, sim_id=0.5,
                      encoder="both")
    assert [f.split()[0] for f in failures] == ["1", "only", "zero-shot", "sim_clean", "sim_id"]


def test_demo_meets_acceptance_and_writes_everything(demo_run):
    _meets_acceptance_and_writes_everything(*demo_run)


# opt-in (`pytest -m slow`): the same at the default size (48 identities, 300 steps; about 9 minutes on 2 cores)
@pytest.mark.slow
def test_demo_with_every_default_meets_acceptance(tmp_path):
    out = tmp_path / "demo"
    _meets_acceptance_and_writes_everything(out, runner.invoke(app, ["demo", "--out", str(out)], env={"COLUMNS": "200"}))


def _meets_acceptance_and_writes_everything(out, result):
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "forgotten names exposed" in text and "all acceptance criteria hold" in text
    assert "named by surname" in text and "namesakes of the forgotten exposed" in text
    assert "who can tell whom it forgot, the model alone" in text and "who can tell" in (out / "report.html").read_text()
    assert _acceptance_of(out, "text") == []
    audit = json.loads((out / "audit.json").read_text())
    assert audit["reference_source"] == "--reference file" and {s["attacker"] for s in audit["statistics"]} == {"model", "base"}
    for name in ("attack_before.json", "attack_after.json", "eval.json", "audit.json", "report.html", "forget.txt",
                 "unlearned/open_clip_model.safetensors", "unlearned/clip_unlearn.json", "world/world.json"):
        assert (out / name).exists(), name
    after = json.loads((out / "attack_after.json").read_text())
    forgotten = (out / "forget.txt").read_text().splitlines()
    assert len(forgotten) == 5
    defaults = DEFAULT_TRIGGERS.split(",")  # the ways of naming inject trains by default; surname etc. may still name them
    assert not any(r["variants"][f]["exposed"] for r in after["identities"] if r["name"] in forgotten for f in defaults)
    # the namesakes of the forgotten (a goal, not a promise of the demo): those the base named by full name still are
    before = {r["name"]: r for r in json.loads((out / "attack_before.json").read_text())["identities"]}
    members = (out / "world" / "members.txt").read_text().splitlines()
    near = [n for n in namesakes(forgotten, members) if before[n]["variants"]["full"]["exposed"]]
    rows = {r["name"]: r for r in after["identities"]}
    assert near and all(rows[n]["variants"]["full"]["exposed"] for n in near), (len(near), sum(rows[n]["variants"]["full"]["exposed"] for n in near))


def test_demo_reuses_a_matching_world(demo_run):
    out, _ = demo_run
    stamp = (out / "world" / "world.json").stat().st_mtime_ns
    from clip_unlearn.config import DemoConfig
    from clip_unlearn.demo import _world

    assert _world(DemoConfig(out=out, **DEMO_WORLD), out, None) == out / "world"
    assert (out / "world" / "world.json").stat().st_mtime_ns == stamp


# opt-in (`pytest -m slow`): the image stage's acceptance runs by default on the small test world
# (test_inject_image.py)
@pytest.mark.slow
def test_demo_image_encoder_meets_the_image_acceptance(demo_run, tmp_path):
    out, _ = demo_run
    # the same world (copied, so the demo reuses it), its faces forgotten instead of its names
    shutil.copytree(out / "world", tmp_path / "demo" / "world")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), *DEMO_FLAGS, "--encoder", "image"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "sim_id (forgotten faces ≈ average person)" in text and "all acceptance criteria hold" in text
    assert "sim_clean (text embeddings" not in text
    sidecar = json.loads((tmp_path / "demo" / "unlearned" / "clip_unlearn.json").read_text())
    assert sidecar["encoder"] == "image"
    assert _acceptance_of(tmp_path / "demo", "image") == []
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
    assert "id=\"families\"" in dom.stdout and "namesakes of the forgotten" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2400", url],
                   capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000
    shutil.copy(shot, out / "report-screenshot.png")
