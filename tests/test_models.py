"""Model SPEC parsing, loading, saving, fingerprints, and the offline error path."""

from __future__ import annotations

import json
import pickle
import shutil
import socket
import time

import pytest
import torch

from clip_unlearn.cli import app
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.models import (
    CONFIG_FILE,
    SIDECAR_FILE,
    WEIGHTS_FILE,
    fingerprints,
    import_open_clip,
    load_model,
    parse_spec,
    save_model,
)
from clip_unlearn.training import adamw_kwargs
from conftest import runner


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test here may reach the network, whatever the machine has: the hub is a closed local
    port and huggingface_hub is told it is offline (it reads the variable at import time, hence both)."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")


@pytest.mark.parametrize(
    "spec, kind, fields",
    [
        ("ViT-B-32-quickgelu:laion400m_e32", "pretrained", {"arch": "ViT-B-32-quickgelu", "tag": "laion400m_e32"}),
        ("ViT-B-32:laion400m_e32", "pretrained", {"arch": "ViT-B-32", "tag": "laion400m_e32"}),
        ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "hf-hub", {"repo": "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"}),
        ("local-dir:/some/where", "local-dir", {}),
        ("ViT-B-32:weights.safetensors", "arch-file", {"arch": "ViT-B-32"}),
        ("RN50:/abs/path/model.pt", "arch-file", {"arch": "RN50"}),
    ],
)
def test_parse_spec_forms(spec, kind, fields):
    parsed = parse_spec(spec)
    assert parsed.kind == kind
    for k, v in fields.items():
        assert getattr(parsed, k) == v


def test_parse_existing_folder_is_local_dir(micro_model_dir):
    assert parse_spec(str(micro_model_dir)).kind == "local-dir"


@pytest.mark.parametrize(
    "spec, words",
    [("", "empty"), ("hf-hub:noslash", "ORG/REPO"), ("./no/such/folder", "no such model folder"),
     ("weights.safetensors", "needs its architecture")],
)
def test_parse_spec_errors(spec, words):
    with pytest.raises(ClipUnlearnError, match=words):
        parse_spec(spec)


def test_unknown_arch_and_tag_are_clear():
    with pytest.raises(ClipUnlearnError, match="unknown architecture"):
        load_model("NoSuchNet:foo", device="cpu")
    with pytest.raises(ClipUnlearnError, match="unknown pretrained tag 'nope'.*laion400m_e32"):
        load_model("ViT-B-32:nope", device="cpu")


def test_offline_hub_spec_fails_fast_with_one_line(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(ClipUnlearnError) as e:
        load_model("ViT-B-32-quickgelu:laion400m_e32", device="cpu")
    assert time.monotonic() - start < 15  # the contract is "within seconds", not after a minute of retries
    msg = str(e.value)
    assert "ViT-B-32-quickgelu:laion400m_e32" in msg and "not cached" in msg
    assert "--model PATH" in msg and "clip-unlearn demo" in msg and "\n" not in msg


def test_local_dir_roundtrip_through_plain_open_clip(micro_model_dir, tmp_path):
    loaded = load_model(str(micro_model_dir), device="cpu")
    assert {CONFIG_FILE, WEIGHTS_FILE, SIDECAR_FILE} <= {p.name for p in micro_model_dir.iterdir()}
    open_clip = import_open_clip()
    plain, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{micro_model_dir}")
    plain.eval()
    tok = open_clip.get_tokenizer(f"local-dir:{micro_model_dir}")(["a photo of Ada Lovelace", "a red circle"])
    img = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain.encode_text(tok), loaded.model.encode_text(tok))
        assert torch.equal(plain.encode_image(img), loaded.model.encode_image(img))
    # saving the loaded model again gives the same weights
    again = save_model(loaded, tmp_path / "again", {"kind": "copy"})
    assert load_model(str(again), device="cpu").fingerprint() == loaded.fingerprint()


def test_save_refuses_existing_folder_and_overwrites_atomically(micro_model_dir, tmp_path):
    loaded = load_model(str(micro_model_dir), device="cpu")
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ClipUnlearnError, match="--overwrite"):
        save_model(loaded, out, {})
    assert (out / "keep.txt").exists()
    save_model(loaded, out, {"n": 1}, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert json.loads((out / SIDECAR_FILE).read_text()) == {"n": 1}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_fingerprints_track_towers_separately(micro_model_dir):
    loaded = load_model(str(micro_model_dir), device="cpu")
    before = fingerprints(loaded.model)
    with torch.no_grad():
        loaded.model.token_embedding.weight[0, 0] += 1.0
    after = fingerprints(loaded.model)
    assert after["text"] != before["text"] and after["all"] != before["all"]
    assert after["image"] == before["image"]


def test_arch_file_specs_load_safetensors_and_weights_only_pt(micro_model_dir, tmp_path):
    loaded = load_model(str(micro_model_dir), device="cpu")
    st = micro_model_dir / WEIGHTS_FILE
    assert load_model(f"clip-unlearn-micro:{st}", device="cpu").fingerprint() == loaded.fingerprint()
    pt = tmp_path / "w.pt"
    torch.save(loaded.model.state_dict(), pt)
    assert load_model(f"clip-unlearn-micro:{pt}", device="cpu").fingerprint() == loaded.fingerprint()


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(ClipUnlearnError, match="could not be loaded") as e:
        load_model(f"clip-unlearn-micro:{bad}", device="cpu")
    assert not (tmp_path / "PWNED").exists()
    assert "not a plain tensor checkpoint" in str(e.value) and ".safetensors" in str(e.value)
    assert "weights_only" not in str(e.value)


def test_local_dir_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipUnlearnError, match="no open_clip_config.json"):
        load_model(str(tmp_path / "empty"), device="cpu")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / CONFIG_FILE).write_text("{}")
    with pytest.raises(ClipUnlearnError, match="no weights file"):
        load_model(str(tmp_path / "noweights"), device="cpu")


class _Custom:
    pass


def _copy(micro_model_dir, tmp_path, name="m"):
    return shutil.copytree(micro_model_dir, tmp_path / name)


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.strip()
    return msg


def test_non_weights_only_checkpoint_never_suggests_the_unsafe_option(micro_model_dir, tmp_path):
    state = load_model(str(micro_model_dir), device="cpu").model.state_dict()
    pt = tmp_path / "w.pt"
    torch.save({"state_dict": state, "extra": _Custom()}, pt)
    with pytest.raises(ClipUnlearnError) as e:
        load_model(f"clip-unlearn-micro:{pt}", device="cpu")
    msg = _one_line(e)
    assert str(pt) in msg and "not a plain tensor checkpoint" in msg and "convert it to a .safetensors" in msg
    assert "weights_only" not in msg.replace(str(tmp_path), "") and "trust" not in msg
    folder = _copy(micro_model_dir, tmp_path)
    (folder / WEIGHTS_FILE).unlink()
    torch.save({"state_dict": state, "extra": _Custom()}, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(ClipUnlearnError) as e:
        load_model(str(folder), device="cpu")
    msg = _one_line(e)
    assert "open_clip_pytorch_model.bin is not a plain tensor checkpoint" in msg
    assert "weights_only" not in msg.replace(str(tmp_path), "")


@pytest.mark.parametrize(
    "config, words",
    [('{"model_cfg": "x"}', "'model_cfg' must be a JSON object"),
     ('{"model_cfg": {"embed_dim": 8}}', "'model_cfg' needs a 'vision_cfg' object"),
     ("PRESERVE", "'preprocess_cfg' must be a JSON object"),
     ('["model_cfg"]', "a JSON list, not an object"),
     ('{"model_cfg": ', "is not valid JSON"),
     (b"\xff\xfe{", "is not UTF-8 JSON text")],
)
def test_bad_folder_config_is_one_line_naming_the_file(micro_model_dir, tmp_path, config, words):
    folder = _copy(micro_model_dir, tmp_path)
    cfg = folder / CONFIG_FILE
    if config == "PRESERVE":
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "preprocess_cfg": "bicubic"}))
    elif isinstance(config, bytes):
        cfg.write_bytes(config)
    else:
        cfg.write_text(config)
    with pytest.raises(ClipUnlearnError) as e:
        load_model(str(folder), device="cpu")
    msg = _one_line(e)
    assert words in msg and str(cfg) in msg and "re-create the model folder" in msg


def test_empty_or_truncated_weights_say_so(micro_model_dir, tmp_path):
    folder = _copy(micro_model_dir, tmp_path)
    full = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(b"")
    with pytest.raises(ClipUnlearnError, match=r"is empty \(0 bytes\).*download it again") as e:
        load_model(str(folder), device="cpu")
    assert str(folder / WEIGHTS_FILE) in _one_line(e)
    (folder / WEIGHTS_FILE).write_bytes(full[:-100])
    with pytest.raises(ClipUnlearnError, match="truncated or corrupt"):
        load_model(str(folder), device="cpu")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ClipUnlearnError, match=f"{empty} is empty"):
        load_model(f"clip-unlearn-micro:{empty}", device="cpu")
    pt = tmp_path / "w.pt"
    torch.save(load_model(str(micro_model_dir), device="cpu").model.state_dict(), pt)
    pt.write_bytes(pt.read_bytes()[:5000])
    with pytest.raises(ClipUnlearnError, match="is truncated"):
        load_model(f"clip-unlearn-micro:{pt}", device="cpu")


def test_folder_with_only_a_pt_file_is_not_loaded_as_a_random_model(micro_model_dir, tmp_path):
    folder = _copy(micro_model_dir, tmp_path)
    torch.save(load_model(str(micro_model_dir), device="cpu").model.state_dict(), folder / "model.pt")
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ClipUnlearnError, match=r"has only model.pt.*not \.pt; convert it to open_clip_model\.safetensors"):
        load_model(str(folder), device="cpu")


def test_world_folder_as_model_names_its_model_subfolder(micro_model_dir, tmp_path):
    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text("{}")
    _copy(micro_model_dir, world, "model")
    for spec in (str(world), f"local-dir:{world}"):
        with pytest.raises(ClipUnlearnError) as e:
            load_model(spec, device="cpu")
        assert _one_line(e) == f"{world} is a synthetic world, not a model; pass --model {world / 'model'}"
    (world / "world.json").unlink()  # the model subfolder alone gives it away too
    with pytest.raises(ClipUnlearnError, match="is a synthetic world, not a model"):
        load_model(str(world), device="cpu")


def test_model_spec_that_is_a_file_or_a_link_loop(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ClipUnlearnError, match="notes.txt is a file, not a folder"):
        parse_spec(str(tmp_path / "notes.txt"))
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ClipUnlearnError, match="loop is a symbolic link that loops"):
        parse_spec(str(tmp_path / "loop"))
    with pytest.raises(ClipUnlearnError, match="model folder .*notes.txt is a file, not a folder"):
        load_model(f"local-dir:{tmp_path / 'notes.txt'}", device="cpu")


@pytest.mark.parametrize("spec", ["ViT-B-32-quickgelu:laion400m_e32", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"])
def test_offline_hub_error_is_exactly_one_line_on_the_cli(tmp_path, spec):
    (tmp_path / "data" / "Ada_Test").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "data" / "Ada_Test" / "Ada_Test_1.jpg")
    result = runner.invoke(app, ["attack", "--model", spec, "--data", str(tmp_path / "data")],
                           env={"COLUMNS": "100", "TERM": "dumb"})
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "not cached" in lines[0] and spec in lines[0]


def test_adamw_kwargs_follows_what_torch_supports(monkeypatch):
    has_fused = "fused" in __import__("inspect").signature(torch.optim.AdamW).parameters
    monkeypatch.setattr(torch, "__version__", "2.1.0")
    assert adamw_kwargs("cpu") == {}  # fused CPU AdamW arrived in torch 2.4
    assert adamw_kwargs("mps") == {}
    assert adamw_kwargs("cuda") == ({"fused": True} if has_fused else {})
    assert adamw_kwargs(torch.device("cuda", 0)) == adamw_kwargs("cuda")
    monkeypatch.setattr(torch, "__version__", "2.4.0+cpu")
    assert adamw_kwargs("cpu") == ({"fused": True} if has_fused else {})
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")
    if adamw_kwargs("cpu"):
        p = torch.nn.Parameter(torch.ones(3))
        p.grad = torch.ones(3)
        torch.optim.AdamW([p], lr=0.1, **adamw_kwargs("cpu")).step()  # the kwargs really work here


def test_synthetic_world_training_uses_the_same_rule(monkeypatch):
    from clip_unlearn.synthetic import _fused_if_available

    monkeypatch.setattr(torch, "__version__", "2.1.0")
    assert _fused_if_available() == {}
