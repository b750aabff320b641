"""The CLI skeleton: help, version, defaults shown, errors as one line, lazy imports."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from clip_unlearn import __version__, config
from clip_unlearn.cli import app
from clip_unlearn.errors import flag
from conftest import runner

COMMANDS = {"prepare-synthetic": config.PrepareSyntheticConfig, "attack": config.AttackConfig,
            "inject": config.InjectConfig, "eval-zeroshot": config.EvalZeroshotConfig,
            "prepare-facescrub": config.PrepareFacescrubConfig, "verify-receipt": config.VerifyReceiptConfig}


def _help(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    # rich draws boxes; compare on plain words
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_no_args_shows_help():
    result = runner.invoke(app, [])
    assert "prepare-synthetic" in result.output


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_field_with_its_default(command):
    text = _help(command)
    for f in dataclasses.fields(COMMANDS[command]):
        flags = f.metadata.get("flags") or (flag(f.name),)
        assert flags[0].split("/")[0] in text, f"{flags[0]} missing from {command} --help"
        if f.default is None:
            assert "[default:" in f.metadata["help"], f"{f.name}: a None default must be explained in its help"
            shown = f.metadata["help"][f.metadata["help"].index("[default:"):]
        elif isinstance(f.default, bool) and "/" in flags[0]:
            on, off = flags[0].split("/")
            shown = f"[default: {(on if f.default else off).lstrip('-')}]"
        elif isinstance(f.default, bool):
            shown = f"[default: {'on' if f.default else 'off'}]"
        else:
            shown = f"[default: {f.default}]"
        assert " ".join(shown.split()) in text, f"{f.name}: {shown} missing from {command} --help"


def test_help_is_available_as_h():
    assert runner.invoke(app, ["prepare-synthetic", "-h"]).exit_code == 0


def test_cli_import_does_not_load_torch():
    code = "import sys, clip_unlearn.cli; bad = [m for m in ('torch', 'open_clip') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_console_script_and_module_entry_points():
    proc = subprocess.run([sys.executable, "-m", "clip_unlearn", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_bad_flag_value_is_one_line_usage_error(tmp_path):
    result = runner.invoke(app, ["prepare-synthetic", "--out", str(tmp_path / "w"), "--identities", "1"])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--identities" in lines[0] and "Traceback" not in result.output


def test_existing_output_is_refused_without_overwrite(tmp_path):
    (tmp_path / "w").mkdir()
    result = runner.invoke(app, ["prepare-synthetic", "--out", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert "--overwrite" in result.output and "Traceback" not in result.output


def test_unavailable_device_is_one_clean_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = runner.invoke(app, ["prepare-synthetic", "--out", str(tmp_path / "w"), "--device", "cuda"])
    assert result.exit_code == 1
    assert "CUDA is not available" in result.output and "Traceback" not in result.output
