"""Bad inputs give one line that names the path and says what is wrong with it: --data folders and world.json."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from PIL import Image

from clip_unlearn.cli import app
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.folders import class_folders, face_folders, read_image
from clip_unlearn.synthetic import load_world
from conftest import runner


def _bad_paths(tmp_path):
    (tmp_path / "a_file.jpg").write_bytes(b"x")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "broken").symlink_to(tmp_path / "gone")
    return {
        "a_file.jpg": "is a file, not a folder",
        "loop": "is a symbolic link that loops",
        "broken": f"is a broken symbolic link (to {tmp_path / 'gone'}, which does not exist)",
        "missing": "does not exist",
    }


@pytest.mark.parametrize("reader, what", [(face_folders, "face folder"), (class_folders, "image folder")])
def test_data_that_is_not_a_folder_says_why(tmp_path, reader, what):
    for name, why in _bad_paths(tmp_path).items():
        with pytest.raises(ClipUnlearnError) as e:
            reader(tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(f"{what} {tmp_path / name} {why}") and "--data" in msg, msg
        if name != "missing":
            assert "does not exist;" not in msg.split("(")[0]


def test_data_file_on_the_cli_is_one_line_exit_1(tmp_path, micro_model_dir):
    _bad_paths(tmp_path)
    for command in ("attack", "eval-zeroshot"):
        result = runner.invoke(app, ["-q", command, "--model", str(micro_model_dir), "--data", str(tmp_path / "a_file.jpg")],
                               env={"COLUMNS": "300"})
        assert result.exit_code == 1, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "is a file, not a folder" in lines[0] and "unexpected" not in lines[0], result.stderr


def test_invalid_world_json_is_one_line_that_says_rebuild(tmp_path):
    world = tmp_path / "world"
    world.mkdir()
    for text, words in (("{not json", "is not valid JSON"), ("[1, 2]", "a JSON list, not an object"),
                        ('{"model": 3}', "'model' must be a path inside the world folder")):
        (world / "world.json").write_text(text)
        with pytest.raises(ClipUnlearnError) as e:
            load_world(world)
        msg = str(e.value)
        assert words in msg and str(world / "world.json") in msg and "prepare-synthetic" in msg and "\n" not in msg
    (world / "world.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ClipUnlearnError, match="not UTF-8"):
        load_world(world)


def test_a_moved_world_finds_its_own_files(tmp_path, monkeypatch):
    built = tmp_path / "built"
    built.mkdir()
    (built / "world.json").write_text(json.dumps({
        "model": "model", "faces": "faces", "objects": "objects", "captions": "captions.txt",
        "clean_images": str(built / "clean_images"),  # as if recorded absolute where it was built
        "config": {"out": str(built)}, "members": 3}))
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(built, moved.parent / "copy")
    shutil.rmtree(built)
    monkeypatch.chdir(moved.parent)
    info = load_world("copy")  # a relative path: the result must not depend on the working folder
    assert info["root"] == str(moved)
    for k, name in (("model", "model"), ("faces", "faces"), ("objects", "objects"), ("captions", "captions.txt"),
                    ("clean_images", "clean_images")):
        assert info[k] == str(moved / name)
    assert info["members"] == 3


def test_16_bit_images_are_scaled_not_clipped_to_white():
    im = Image.new("I;16", (8, 8))
    im.frombytes(b"\x00\x80" * 64)  # 32768 everywhere: mid grey
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    rgb = read_image(buf.getvalue())
    assert rgb.mode == "RGB" and abs(rgb.getpixel((0, 0))[0] - 128) <= 1
