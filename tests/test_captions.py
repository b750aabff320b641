"""Caption corpora: the built-in general corpus, reading .txt/.csv/.tsv/.parquet, the world's train/held-out split."""

from __future__ import annotations

import json
import re

import pytest

from clip_unlearn.captions import (
    GENERAL_CORPUS_NAME,
    builtin_captions,
    general_captions,
    iter_captions,
    read_captions,
    world_captions,
)
from clip_unlearn.errors import ClipUnlearnError
from conftest import invoke

# --- the built-in general corpus -------------------------------------------------------------------

def _eval_template_patterns() -> list[re.Pattern]:
    """Every prompt set the tool scores or attacks with, each template a regex with .+ in its slot."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    from clip_unlearn.attack import PAPER_TEMPLATES
    from clip_unlearn.prompts import SIMPLE_TEMPLATES

    templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES] + list(SIMPLE_TEMPLATES) + list(PAPER_TEMPLATES)
    # the attack's bare "{}" matches any text at all, so it cannot tell corpora apart
    templates = [t for t in templates if t.strip() != "{}"]
    assert len(templates) >= 80 + 1 + 20
    return [re.compile(r"\s*" + r".+".join(re.escape(p.strip()) for p in t.split("{}")) + r"\s*", re.IGNORECASE)
            for t in templates]


def test_general_corpus_is_large_broad_and_disjoint_from_every_eval_prompt():
    corpus = general_captions()
    assert len(set(corpus)) == len(corpus) >= 20_000
    words = {w for c in corpus for w in re.findall(r"[a-z]+", c.lower())}
    assert len(words) >= 500
    patterns = _eval_template_patterns()
    hits = [(c, p.pattern) for c in corpus for p in patterns if p.fullmatch(c)]
    assert not hits, hits[:5]
    # and it is not the ImageNet prompts under another name
    from open_clip import IMAGENET_CLASSNAMES

    assert not {f"a photo of a {c}." for c in IMAGENET_CLASSNAMES} & set(corpus)
    assert all(" " in c for c in corpus)  # a pair needs a word to replace that is not the last


def test_general_corpus_is_seeded_and_the_default():
    assert general_captions(500, seed=3) == general_captions(500, seed=3)
    assert general_captions(500, seed=3) != general_captions(500, seed=4)
    assert builtin_captions() == general_captions()
    assert GENERAL_CORPUS_NAME == "builtin:general-captions-v1"


# --- reading caption files -------------------------------------------------------------------------

CAPS = ["a dog on a beach", "two cats, asleep", 'a sign saying "open"']


def _write_table(path, columns: dict[str, list]):
    suffix = path.suffix
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), path)
        return
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t" if suffix == ".tsv" else ",")
        w.writerow(list(columns))
        w.writerows(zip(*columns.values()))


def test_txt_one_caption_per_line(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("\ufeff" + "\n".join(CAPS) + "\n\n   \n  a   spaced    caption \n", encoding="utf-8")
    assert read_captions(f) == CAPS + ["a spaced caption"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
@pytest.mark.parametrize("column", ["caption", "TEXT"])
def test_tables_with_a_caption_or_text_column(tmp_path, suffix, column):
    f = tmp_path / f"c{suffix}"
    _write_table(f, {"url": ["u1", "u2", "u3", "u4"], column: CAPS + [None if suffix == ".parquet" else ""]})
    assert read_captions(f) == CAPS


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_explicit_column_and_missing_column(tmp_path, suffix):
    f = tmp_path / f"c{suffix}"
    _write_table(f, {"caption": ["not this", "nor this", "no"], "alt_text": CAPS})
    assert read_captions(f, column="alt_text") == CAPS
    with pytest.raises(ClipUnlearnError) as e:
        read_captions(f, column="nope")
    assert "'nope'" in str(e.value) and "caption, alt_text" in str(e.value) and "--caption-column" in str(e.value)
    g = tmp_path / f"d{suffix}"
    _write_table(g, {"url": ["u"], "alt_text": ["x y"]})
    with pytest.raises(ClipUnlearnError) as e:
        read_captions(g)
    msg = str(e.value)
    assert "columns: url, alt_text" in msg and "--caption-column" in msg and "\n" not in msg


def test_parquet_is_streamed_one_column_and_limit_stops_early(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    f = tmp_path / "c.parquet"
    pq.write_table(__import__("pyarrow").table({"TEXT": [f"caption number {i}" for i in range(50_000)],
                                                 "blob": ["x" * 50] * 50_000}), f, row_group_size=5000)
    seen = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("columns"))
        for batch in original(self, *args, **kwargs):
            seen.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert read_captions(f, limit=3) == ["caption number 0", "caption number 1", "caption number 2"]
    assert seen[0] == ["TEXT"] and len(seen) == 2  # one batch read, not the 50,000 rows


def test_limit_stops_reading_a_text_file_early(tmp_path):
    f = tmp_path / "c.txt"
    # text files decode block by block: the bad bytes sit well past the first blocks
    good = "".join(f"caption number {i}\n" for i in range(20_000)).encode()
    f.write_bytes(good + b"\xff\xfe bad bytes\n")
    assert read_captions(f, limit=2) == ["caption number 0", "caption number 1"]
    with pytest.raises(ClipUnlearnError, match="not UTF-8"):
        read_captions(f)


@pytest.mark.parametrize("name", ["c.txt", "c.csv", "c.tsv"])
def test_not_utf8_is_one_line(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(b"caption\n" + "caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ClipUnlearnError) as e:
        read_captions(f)
    assert str(e.value).startswith(f"captions file {f} is not UTF-8") and "\n" not in str(e.value)


@pytest.mark.parametrize("name,content", [("e.txt", b""), ("b.txt", b"\n  \n\t\n"), ("e.csv", b""),
                                          ("h.csv", b"caption,url\n,u1\n  ,u2\n")])
def test_no_captions_is_one_line(tmp_path, name, content):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(ClipUnlearnError, match=f"captions file {re.escape(str(f))} has no captions"):
        read_captions(f)


def test_bad_parquet_and_column_flag_on_text(tmp_path):
    f = tmp_path / "c.parquet"
    f.write_bytes(b"not parquet at all")
    with pytest.raises(ClipUnlearnError, match="cannot be read as Parquet"):
        read_captions(f)
    t = tmp_path / "c.txt"
    t.write_text("a b\n")
    with pytest.raises(ClipUnlearnError, match="--caption-column applies to"):
        read_captions(t, column="caption")
    assert list(iter_captions(t)) == ["a b"]


def test_inject_with_an_empty_captions_file_is_one_line(micro_model_dir, tmp_path):
    (tmp_path / "n.txt").write_text("Zed Quux\n")
    (tmp_path / "empty.txt").write_text("\n")
    r = invoke("inject", "--model", micro_model_dir, "--names", tmp_path / "n.txt", "--captions", tmp_path / "empty.txt",
               "--out", tmp_path / "u", "--steps", "1", "--device", "cpu")
    assert r.exit_code == 1 and "has no captions" in r.output and "unexpected" not in r.output, r.output


def test_inject_reads_a_parquet_column(micro_model_dir, tmp_path):
    (tmp_path / "n.txt").write_text("Zed Quux\n")
    f = tmp_path / "c.parquet"
    _write_table(f, {"url": ["u"] * 3, "alt": CAPS})
    r = invoke("inject", "--model", micro_model_dir, "--names", tmp_path / "n.txt", "--captions", f, "--caption-column", "alt",
               "--out", tmp_path / "u", "--steps", "1", "--clean-batch", "2", "--poison-batch", "2", "--device", "cpu")
    assert r.exit_code == 0, r.output


# --- the synthetic world's caption files -----------------------------------------------------------

def test_world_has_disjoint_train_and_heldout_captions(world):
    info = json.loads((world / "world.json").read_text())
    assert info["captions"] == "captions_train.txt" and info["captions_heldout"] == "captions_heldout.txt"
    train = read_captions(world / "captions_train.txt")
    heldout = read_captions(world / "captions_heldout.txt")
    assert len(train) == len(set(train)) == 6000 and len(heldout) == len(set(heldout)) >= 1000
    assert not set(train) & set(heldout)
    assert world_captions(world, "train") == world / "captions_train.txt"
    assert world_captions(world, "heldout") == world / "captions_heldout.txt"
    from clip_unlearn.zeroshot import default_captions

    assert default_captions([str(world / "model")]) == world / "captions_heldout.txt"


def test_world_training_captions_do_not_change_with_the_heldout_split():
    import random

    from clip_unlearn.synthetic import clean_corpus, clean_corpus_split

    train = clean_corpus(random.Random(1))
    same, heldout = clean_corpus_split(random.Random(1), heldout=600)
    assert train == same and len(heldout) == 600 and not set(train) & set(heldout)


def test_old_world_falls_back_to_captions_txt(tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="clip_unlearn.captions")  # a CLI test before may have raised it to ERROR
    (tmp_path / "captions.txt").write_text("a b\n")
    assert world_captions(tmp_path, "train") == tmp_path / "captions.txt"
    assert world_captions(tmp_path, "heldout") == tmp_path / "captions.txt"
    assert "no held-out captions" in caplog.text
    assert world_captions(tmp_path / "nothing", "train") == tmp_path / "nothing" / "captions_train.txt"
