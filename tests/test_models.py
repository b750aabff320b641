"""Model SPEC parsing, loading, saving, fingerprints, and the offline error path."""

from __future__ import annotations

import json
import pickle
import time

import pytest
import torch

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
    with pytest.raises(ClipUnlearnError, match="could not be loaded"):
        load_model(f"clip-unlearn-micro:{bad}", device="cpu")
    assert not (tmp_path / "PWNED").exists()


def test_local_dir_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipUnlearnError, match="no open_clip_config.json"):
        load_model(str(tmp_path / "empty"), device="cpu")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / CONFIG_FILE).write_text("{}")
    with pytest.raises(ClipUnlearnError, match="no weights file"):
        load_model(str(tmp_path / "noweights"), device="cpu")
