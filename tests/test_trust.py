"""The proof cannot be silently wrong: embedding identity, exact truncation, privacy on disk and in logs,
comparisons that refuse to compare different things, every name trained, inputs and outputs kept safe."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conftest
from clip_unlearn import embed
from clip_unlearn.embed import EmbeddingCache, Encoder, encode_text, supports_truncation
from clip_unlearn.inject import training_record
from clip_unlearn.models import import_open_clip, load_model
from conftest import SMOKE, output


def invoke(*args):
    return conftest.invoke(*args, quiet=False)  # these tests read what a user's terminal shows: no -q


# --- 1. embedding identity ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def quickgelu_twin(micro_model_dir, tmp_path_factory) -> Path:
    """The micro model's weights under the same config with QuickGELU: same weights, different forward."""
    twin = tmp_path_factory.mktemp("twin") / "model"
    shutil.copytree(micro_model_dir, twin)
    cfg = json.loads((twin / "open_clip_config.json").read_text())
    cfg["model_cfg"]["quick_gelu"] = True
    (twin / "open_clip_config.json").write_text(json.dumps(cfg))
    return twin


def test_quickgelu_twin_has_its_own_namespace_and_embeddings(micro_model_dir, quickgelu_twin, tmp_path):
    gelu, quick = load_model(str(micro_model_dir), "cpu"), load_model(str(quickgelu_twin), "cpu")
    assert gelu.fingerprint("text") == quick.fingerprint("text")  # the weights really are the same
    cache = EmbeddingCache(tmp_path)
    a, b = Encoder(gelu, cache), Encoder(quick, cache)
    assert a.text_namespace() != b.text_namespace() and a.image_namespace() != b.image_namespace()
    prompts = ["a photo of a red star", "an image of a person"]
    ea = a.texts(prompts)
    misses = cache.stats["text_misses"]
    eb = b.texts(prompts)  # must not reuse the GELU twin's entries
    assert cache.stats["text_misses"] == misses + len(prompts)
    with torch.no_grad():
        truth = quick.model.encode_text(quick.tokenizer(prompts), normalize=True)
    assert torch.allclose(eb, truth, atol=1e-5) and not torch.allclose(ea, eb, atol=1e-4)


def test_a_new_encoding_version_misses_the_old_entries(micro_model_dir, tmp_path, monkeypatch):
    loaded = load_model(str(micro_model_dir), "cpu")
    Encoder(loaded, EmbeddingCache(tmp_path)).texts(["a photo of a dog"])
    again = EmbeddingCache(tmp_path)
    Encoder(loaded, again).texts(["a photo of a dog"])
    assert again.stats["text_hits"] == 1
    monkeypatch.setattr(embed, "ENCODE_VERSION", embed.ENCODE_VERSION + "-next")
    bumped = EmbeddingCache(tmp_path)
    Encoder(loaded, bumped).texts(["a photo of a dog"])
    assert bumped.stats == {**bumped.stats, "text_hits": 0, "text_misses": 1}


def test_image_namespace_covers_the_normalisation(micro_model_dir, tmp_path):
    from torchvision import transforms as T

    loaded = load_model(str(micro_model_dir), "cpu")
    before = Encoder(loaded, EmbeddingCache(tmp_path)).image_namespace()
    steps = [t if not isinstance(t, T.Normalize) else T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
             for t in loaded.preprocess.transforms]
    loaded.preprocess = T.Compose(steps)
    assert Encoder(loaded, EmbeddingCache(tmp_path)).image_namespace() != before


def test_the_cache_holds_no_prompt_text(micro_model_dir, tmp_path):
    loaded = load_model(str(micro_model_dir), "cpu")
    Encoder(loaded, EmbeddingCache(tmp_path)).texts(["a photo of Zorblax Quintavelle", "a photo of a dog"])
    data = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert data and b"zorblax" not in data.lower() and b"dog" not in data.lower()
    assert hashlib.sha256(b"a photo of a dog").hexdigest().encode() in data


def test_texts_not_persisted_never_reach_disk(micro_model_dir, tmp_path):
    loaded = load_model(str(micro_model_dir), "cpu")
    enc = Encoder(loaded, EmbeddingCache(tmp_path))
    first = enc.texts(["a photo of Zorblax Quintavelle"], persist=False)
    assert torch.equal(first, enc.texts(["a photo of Zorblax Quintavelle"], persist=False))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# --- 2. exact truncation, as a property ----------------------------------------------------------

@pytest.fixture(scope="module", params=["clip-unlearn-micro", "clip-unlearn-tiny"])
def random_clip(request):
    open_clip = import_open_clip()
    torch.manual_seed(1)
    model = open_clip.create_model(request.param).eval()
    return model, open_clip.get_tokenizer(request.param)


# punctuation that BPE merges with "!" into token id 0 ("!/", "!;", "![", ...), unicode, digits, words
_PIECES = st.sampled_from(["!", "!/", "!;", "!=", "![", "!{", "!!", "have", "fun", "today", "a", "photo", "of", "é",
                           "naïve", "東京", "🙂", "--", "'s", "42", "  ", "x" * 30, "Ängström", "<|endoftext|>", ".", ","])
_PROMPT = st.lists(_PIECES, min_size=0, max_size=90).map(" ".join)


def test_the_prompt_that_broke_truncation(random_clip):
    model, tok = random_clip
    tokens = tok(["have fun!/ today", "a"])
    assert (tokens[0, :int(tokens[0].argmax())] == 0).any()  # id 0 ("!/") inside the prompt, before its EOT
    with torch.no_grad():
        assert torch.allclose(encode_text(model, tokens), model.encode_text(tokens, normalize=True), atol=1e-5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(_PROMPT, min_size=1, max_size=6))
def test_fast_text_path_equals_encode_text(random_clip, batch):
    model, tok = random_clip
    tokens = tok(batch)
    with torch.no_grad():
        fast = encode_text(model, tokens, normalize=False)
        slow = model.encode_text(tokens, normalize=False)
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-4)


def _tokenizers():
    from open_clip.tokenizer import SimpleTokenizer

    # two loads of one definition (they share rows), another context length and another vocabulary (they may not)
    return [SimpleTokenizer(), SimpleTokenizer(), SimpleTokenizer(context_length=12),
            SimpleTokenizer(additional_special_tokens=["<|pad|>"])]


_TOKENIZERS = _tokenizers()


@settings(max_examples=150, deadline=None)
@given(calls=st.lists(st.tuples(st.integers(0, 3), st.lists(_PROMPT, min_size=0, max_size=8)), min_size=1, max_size=6))
def test_remembered_token_rows_are_the_tokenizers_own(calls):
    # one sequence of calls across tokenizers, on one memory: every answer equals a fresh tokenizer call
    embed._SHARED.clear()
    for i, texts in calls:
        tok = _TOKENIZERS[i]
        assert torch.equal(embed.token_rows(tok)(texts), tok(texts)), (i, texts)


@settings(max_examples=100, deadline=None)
@given(calls=st.lists(st.lists(st.sampled_from(["a", "b b", "c", "d!/", "e é", "f", "g"]), max_size=6), min_size=1, max_size=8),
       limit=st.integers(1, 6))
def test_a_full_memory_still_answers_every_text(calls, limit):
    # past its limit the memory starts again, and a call's texts remembered before are answered all the same
    tok = _TOKENIZERS[0]
    rows = embed.TokenRows(tok, limit=limit)
    for texts in calls:
        assert torch.equal(rows(texts), tok(texts)), texts


def test_only_a_tokenizer_read_in_full_and_not_drawing_at_random_shares_rows():
    from open_clip.tokenizer import SimpleTokenizer

    a, b, short, other = _TOKENIZERS
    assert embed.token_rows(a) is embed.token_rows(b)
    assert embed.token_rows(short) is not embed.token_rows(a) and embed.token_rows(other) is not embed.token_rows(a)
    random_masks = SimpleTokenizer(reduction_mask="random")
    assert embed.token_rows(random_masks) is random_masks

    class Odd(SimpleTokenizer):  # a subclass may tokenize differently under the same vocabulary
        pass

    assert embed.token_rows(Odd()) is not embed.token_rows(a) and isinstance(embed.token_rows(Odd()), Odd)


def test_unproven_models_take_open_clips_own_path(random_clip):
    model, tok = random_clip

    class Subclass(type(model)):
        pass

    import copy
    odd = copy.deepcopy(model)
    odd.__class__ = Subclass
    assert supports_truncation(model) and not supports_truncation(odd)
    other_pool = copy.deepcopy(model)
    other_pool.text_pool_type = "last"
    assert not supports_truncation(other_pool)
    tokens = tok(["a photo of a dog"])
    with torch.no_grad():
        assert torch.equal(encode_text(other_pool, tokens), other_pool.encode_text(tokens, normalize=True))


# --- 3. forgotten names reach no file and no log ------------------------------------------------

def _leaks(names: list[str], blobs: dict[str, bytes]) -> list[str]:
    found = []
    for name in names:
        variants = {name, name.replace(" ", "_"), *name.split()}
        for v in variants:
            for where, data in blobs.items():
                if v.lower().encode() in data.lower():
                    found.append(f"{v!r} in {where}")
    return found


def _files(*roots: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for r in roots if r.exists() for p in r.rglob("*") if p.is_file()}


@pytest.mark.parametrize("encoder", ["text", "image", "both", "image+made-up"])
def test_no_forgotten_name_in_any_byte_written_or_printed(world, tmp_path, encoder):
    encoder, *made_up = encoder.split("+")  # made-up faces: each person's target is drawn from the receipt's key
    members = (world / "members.txt").read_text().splitlines()
    forgotten = members[:2]
    names = tmp_path / "forget.txt"
    names.write_text("\n".join(forgotten) + "\n")
    cache, out = tmp_path / "cache", tmp_path / "out"
    # every variant of the names as triggers and their namesakes held (text stage): all spell parts of the names;
    # the text stage's check attacks with all of them too, and trains again (a round) whom three steps left exposed
    check = ["--verify-data", world / "faces"] if encoder == "text" else ["--no-verify"]
    r = invoke("-v", "inject", "--model", world / "model", "--names", names, "--out", out, "--encoder", encoder,
               "--cache-dir", cache, "--variants", "all", "--neighbours", "4", *SMOKE[:-1], *check, "--verify-rounds", "1",
               *[f"--{m}" for m in made_up])
    assert r.exit_code == 0, output(r)
    if encoder == "text":
        rounds = json.loads((out / "clip_unlearn.json").read_text())["text"]["verification"]["rounds"]
        # --verify-hold (the default): round 2 holds, by full name, whom it does not train again
        assert len(rounds) == 2 and rounds[1]["names_held"] == 2 - rounds[1]["names_trained"]
    gate = invoke("attack", "--model", out, "--fail-on-exposed", names, "--num-candidates", "60", "--cache-dir", cache,
                  "--variants", "all")
    assert gate.exit_code in (0, 3), output(gate)
    ev = invoke("eval-zeroshot", "--model", out, "--compare-to", world / "model", "--names", names,
                "--max-captions", "50", "--cache-dir", cache)
    assert ev.exit_code == 0, output(ev)
    blobs = {**_files(out, cache), "inject output": output(r).encode(), "gate output": output(gate).encode(),
             "eval output": output(ev).encode(), "receipt": (tmp_path / "out.receipt.json").read_bytes()}
    assert not _leaks(forgotten, blobs)


def test_a_failing_gate_names_lines_and_counts_not_people(world, small_before, tmp_path):
    rows = json.loads(small_before.read_text())["identities"]  # the same 60-candidate attack as the gate runs below
    exposed = [r["name"] for r in rows if r["exposed"]][:2]
    hidden = [r["name"] for r in rows if not r["exposed"]][:1]
    gate = tmp_path / "gate.txt"
    gate.write_text("\n".join(hidden + exposed) + "\n")
    r = invoke("attack", "--model", world / "model", "--fail-on-exposed", gate, "--num-candidates", "60")
    text = output(r)
    assert r.exit_code == 3 and "2 name(s)" in text and "#2, #3" in text
    assert not _leaks(exposed + hidden, {"terminal": text.encode()})
    shown = invoke("attack", "--model", world / "model", "--fail-on-exposed", gate, "--num-candidates", "60", "--show-names")
    assert shown.exit_code == 3 and exposed[0] in output(shown)


def test_model_folder_holds_nothing_enumeration_inverts(world, tmp_path):
    members = (world / "members.txt").read_text().splitlines()
    names = tmp_path / "forget.txt"
    names.write_text(members[0] + "\n")
    out = tmp_path / "out"
    assert invoke("inject", "--model", world / "model", "--names", names, "--out", out, *SMOKE).exit_code == 0
    text = b" ".join(_files(out).values()).decode("latin-1")
    tokens = set(re.findall(r"[0-9a-f]{16,}", text))
    from clip_unlearn.names import key

    candidates = members + (world / "non_members.txt").read_text().splitlines()
    # an attacker's enumeration: every candidate, alone, as a file, and salted with every hex string found
    guesses = set()
    for n in candidates:
        for form in (n, key(n), n + "\n"):
            guesses.add(hashlib.sha256(form.encode()).hexdigest())
            guesses.update(hashlib.sha256((t + form).encode()).hexdigest() for t in tokens if len(t) <= 64)
    assert not tokens & guesses
    side = json.loads((out / "clip_unlearn.json").read_text())
    assert side["names"] == {"count": 1, "trained": 1, "already_forgotten": 0} and "sha256" not in json.dumps(side["config"]["names"])


def test_the_receipt_proves_the_request_and_only_it(world, tmp_path):
    members = (world / "members.txt").read_text().splitlines()
    names = tmp_path / "forget.txt"
    names.write_text(members[0] + "\n" + members[1] + "\n")
    out = tmp_path / "out"
    assert invoke("inject", "--model", world / "model", "--names", names, "--out", out, *SMOKE).exit_code == 0
    receipt = tmp_path / "out.receipt.json"
    assert receipt.stat().st_mode & 0o077 == 0  # the operator's alone
    assert invoke("verify-receipt", "--model", out, "--receipt", receipt, "--names", names).exit_code == 0
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(members[0] + "\n")
    r = invoke("verify-receipt", "--model", out, "--receipt", receipt, "--names", wrong)
    assert r.exit_code == 1 and "names file is exactly" in output(r)
    r = invoke("verify-receipt", "--model", world / "model", "--receipt", receipt)
    assert r.exit_code == 1 and "model weights" in output(r)
    inside = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "o2", "--receipt",
                    tmp_path / "o2" / "r.json", *SMOKE)
    assert inside.exit_code == 1 and "inside the model folder" in output(inside)


# --- 5. comparisons refuse to compare different things ----------------------------------------

@pytest.fixture(scope="module")
def small_before(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmp") / "before.json"
    r = invoke("attack", "--model", world / "model", "--num-candidates", "60", "--output", out)
    assert r.exit_code == 0, output(r)
    return out


@pytest.mark.parametrize("flags, what", [
    (["--threshold", "2"], "--threshold"),
    (["--split", "all"], "--split"),
    (["--precision", "bf16"], "--precision"),
    (["--templates", "TPL"], "--templates"),
])
def test_compare_to_refuses_a_run_that_differs(world, small_before, tmp_path, flags, what):
    tpl = tmp_path / "t.txt"
    tpl.write_text("a photo of {}\n{} on a photo\n")
    flags = [str(tpl) if f == "TPL" else f for f in flags]
    r = invoke("attack", "--model", world / "model", "--num-candidates", "60", "--compare-to", small_before, *flags)
    text = output(r)
    errors = [ln for ln in text.splitlines() if "error" in ln]
    assert r.exit_code == 1 and f"differ in {what}" in text and len(errors) == 1 and f"differ in {what}" in errors[0]


def test_results_record_the_tool_version(small_before):
    from clip_unlearn import __version__

    assert json.loads(small_before.read_text())["config"]["tool_version"] == __version__


def test_output_may_not_overwrite_the_baseline(world, small_before):
    before = small_before.read_bytes()
    r = invoke("attack", "--model", world / "model", "--num-candidates", "60", "--compare-to", small_before,
               "--output", small_before)
    assert r.exit_code == 1 and "also an input" in output(r) and small_before.read_bytes() == before


@pytest.mark.parametrize("threshold, templates", [("22", None), ("3", ["a photo of {}", "{} on a photo"])])
def test_a_threshold_above_the_templates_is_a_usage_error(world, tmp_path, threshold, templates):
    args = ["attack", "--model", world / "model", "--num-candidates", "60", "--threshold", threshold]
    if templates:
        (tmp_path / "t.txt").write_text("\n".join(templates) + "\n")
        args += ["--templates", tmp_path / "t.txt"]
    r = invoke(*args)
    assert r.exit_code == 2 and "above the" in output(r)


def test_forgotten_without_compare_to_and_one_candidate_are_refused(world, tmp_path):
    names = tmp_path / "n.txt"
    names.write_text("Some Body\n")
    r = invoke("attack", "--model", world / "model", "--forgotten", names)
    assert r.exit_code == 2 and "--compare-to" in output(r)
    one = tmp_path / "one.txt"
    one.write_text((world / "members.txt").read_text().splitlines()[0] + "\n")
    r = invoke("attack", "--model", world / "model", "--candidates", one, "--identities", one)
    assert r.exit_code == 1 and "proves nothing" in output(r)


# --- 6. every name is unlearned, however many ---------------------------------------------------

def test_more_names_than_the_poison_batch_all_get_triggers(world, tmp_path):
    members = (world / "members.txt").read_text().splitlines()[:6]
    names = tmp_path / "forget.txt"
    names.write_text("\n".join(members) + "\n")
    out = tmp_path / "out"
    r = invoke("inject", "--encoder", "image", "--model", world / "model", "--names", names, "--out", out,
               "--steps", "2", "--clean-batch", "4", "--poison-batch", "4")
    assert r.exit_code == 0, output(r)
    counts = training_record(out)["image"]["triggers"]["poisoned_per_name"]
    assert counts == [2, 2, 1, 1, 1, 1]
    r = invoke("inject", "--encoder", "image", "--model", world / "model", "--names", names, "--out", tmp_path / "o2",
               "--steps", "1", "--clean-batch", "4", "--poison-batch", "4")
    assert r.exit_code == 1 and "no trigger image" in output(r) and not (tmp_path / "o2").exists()


def test_poison_split_rotates_and_sums_to_the_batch():
    from clip_unlearn.augment import poison_split, poisoned_per_name

    for k, batch, steps in [(1, 128, 3), (5, 128, 7), (200, 128, 5), (128, 128, 2), (7, 3, 11)]:
        totals = [0] * k
        for s in range(steps):
            split = poison_split(s, k, batch)
            assert sum(split) == batch and max(split) - min(split) <= 1
            totals = [a + b for a, b in zip(totals, split)]
        assert totals == poisoned_per_name(k, batch, steps)
        assert max(totals) - min(totals) <= 1


def test_a_target_made_of_the_forgotten_alone_is_refused(world, tmp_path):
    members = (world / "members.txt").read_text().splitlines()[:2]
    faces = tmp_path / "faces"
    for n in members:
        shutil.copytree(world / "faces" / n.replace(" ", "_"), faces / n.replace(" ", "_"))
    names = tmp_path / "forget.txt"
    names.write_text("\n".join(members) + "\n")
    r = invoke("inject", "--encoder", "image", "--model", world / "model", "--names", names, "--faces", faces,
               "--out", tmp_path / "o", *SMOKE)
    assert r.exit_code == 1 and "only the people to forget" in output(r)


# --- 7/9. inputs and outputs are safe ----------------------------------------------------------

def test_out_may_not_be_contain_or_lie_inside_an_input(world, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    names = copy / "forget.txt"
    names.write_text((copy / "members.txt").read_text().splitlines()[0] + "\n")
    for out in (copy, copy / "model", copy / "model" / "sub"):
        r = invoke("inject", "--model", copy / "model", "--names", names, "--out", out, "--overwrite", *SMOKE)
        assert r.exit_code == 1 and "input" in output(r), out
    assert (copy / "model" / "open_clip_model.safetensors").exists() and names.exists()
    for out in (".", str(tmp_path / "x" / "..")):
        r = invoke("inject", "--model", copy / "model", "--names", names, "--out", out, *SMOKE)
        assert r.exit_code == 1 and "--out" in output(r)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_out_fails_before_training(world, tmp_path):  # pragma: no cover - CI runs as root
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    names = tmp_path / "n.txt"
    names.write_text((world / "members.txt").read_text().splitlines()[0] + "\n")
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", locked / "o", *SMOKE)
    assert r.exit_code == 1 and "cannot write" in output(r)


def test_unusable_out_and_cache_fail_before_any_work(world, tmp_path):
    names = tmp_path / "n.txt"
    names.write_text((world / "members.txt").read_text().splitlines()[0] + "\n")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", blocker / "o", *SMOKE)
    assert r.exit_code == 1 and "cannot write" in output(r)
    r = invoke("inject", "--model", world / "model", "--names", names, "--out", tmp_path / "o", "--cache-dir", blocker, *SMOKE)
    assert r.exit_code == 1 and "cache folder" in output(r) and not (tmp_path / "o").exists()
    r = invoke("attack", "--model", world / "model", "--cache-dir", blocker, "--num-candidates", "60")
    assert r.exit_code == 1 and "cache folder" in output(r)


def test_a_copied_or_moved_world_behaves_identically(world, tmp_path):
    from clip_unlearn.attack import default_data
    from clip_unlearn.models import parse_spec, read_sidecar

    moved = tmp_path / "elsewhere" / "w"
    shutil.copytree(world, tmp_path / "w")
    moved.parent.mkdir()
    os.replace(tmp_path / "w", moved)
    assert Path(read_sidecar(parse_spec(str(moved / "model")))["world"]) == moved.resolve()
    assert default_data(str(moved / "model")) == moved.resolve() / "faces"
    names = tmp_path / "n.txt"
    names.write_text((moved / "members.txt").read_text().splitlines()[0] + "\n")
    r = invoke("inject", "--model", moved / "model", "--names", names, "--out", tmp_path / "u", *SMOKE)
    assert r.exit_code == 0, output(r)
    side = json.loads((tmp_path / "u" / "clip_unlearn.json").read_text())
    assert side["config"]["preset_applied"] == {"text": "small"}  # by the model's size: its text tower is 128 wide
    assert Path(read_sidecar(parse_spec(str(tmp_path / "u")))["world"]) == moved.resolve()
    # inject takes nothing from a world: one that vanished changes nothing it does
    shutil.rmtree(moved)
    # (the same name again: an earlier request forgot it, so it is trained only on request)
    r = invoke("inject", "--model", tmp_path / "u", "--names", names, "--out", tmp_path / "u2", "--retrain-forgotten", *SMOKE)
    assert r.exit_code == 0, output(r)
    assert json.loads((tmp_path / "u2" / "clip_unlearn.json").read_text())["config"]["preset_applied"] == {"text": "small"}


def _in_a_fresh_process(code: str, tmp_path) -> str:
    """Run ``code`` in a new interpreter, as a CLI run is: signal dispositions and masks are per process, and a
    long test session's own state (threads, masks left by libraries) must not decide a signal test."""
    # a process started in the background by a non-interactive shell inherits SIGINT ignored (and a parent
    # may leave it blocked); a CLI run from a terminal has the defaults, so the child starts from those
    reset = ("import signal\nsignal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})\n"
             "signal.signal(signal.SIGINT, signal.default_int_handler)\n")
    proc = subprocess.run([sys.executable, "-c", reset + code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_an_interrupted_swap_keeps_the_old_or_the_new_folder(tmp_path):
    out = _in_a_fresh_process("""
import os, signal, sys
from pathlib import Path
from clip_unlearn import models
root = Path(sys.argv[1]); out, tmp = root / "out", root / ".out.tmp-1"
out.mkdir(); (out / "v").write_text("old"); tmp.mkdir(); (tmp / "v").write_text("new")
real, calls = os.replace, []
def replace_then_signal(a, b):
    calls.append(a); real(a, b)
    if len(calls) == 1:
        os.kill(os.getpid(), signal.SIGINT)  # held back until both renames are done
models.os.replace = replace_then_signal
try:
    models.replace_dir(tmp, out)
    print("no interrupt")
except KeyboardInterrupt:
    print("interrupted after", len(calls), "renames;", (out / "v").read_text(), tmp.exists())
""", tmp_path)
    assert out.strip() == "interrupted after 2 renames; new False", out


def test_sigterm_during_inject_cleans_up_and_exits_130(world, tmp_path):
    names = tmp_path / "n.txt"
    names.write_text((world / "members.txt").read_text().splitlines()[0] + "\n")
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "clip_unlearn", "inject", "--model", str(world / "model"), "--names",
                             str(names), "--out", str(out), "--steps", "100000", "--clean-batch", "8", "--poison-batch", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CLIP_UNLEARN_HOME": str(tmp_path / "home"), "COLUMNS": "200"})
    import time

    time.sleep(8)  # past start-up: loading or training, when work is under way
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_a_signal_that_reaches_another_thread_is_still_held_back(tmp_path):
    # torch's OpenMP workers are threads too: a Ctrl-C the kernel hands to one of them must not run
    # between the two renames either
    out = _in_a_fresh_process("""
import signal, threading, time
from clip_unlearn.outputs import signals_deferred
stop = threading.Event(); worker = threading.Thread(target=stop.wait); worker.start()
steps = []
try:
    with signals_deferred():
        signal.pthread_kill(worker.ident, signal.SIGINT)
        time.sleep(0.2)  # Python would run the handler here if it were not held back
        steps.append("both renames done")
    print("no interrupt")
except KeyboardInterrupt:
    print("interrupted after:", *steps, signal.getsignal(signal.SIGINT) is signal.default_int_handler)
finally:
    stop.set(); worker.join()
""", tmp_path)
    assert out.strip() == "interrupted after: both renames done True", out


# every kind of character the cleaning treats apart: whitespace of each kind, '&' and entities, control and
# escape characters, curly quotes, ligatures, full-width letters, mojibake, accents
_RAW = st.lists(st.sampled_from(list(" \t\n\r\x0b\x0c\x00\x1b\x7f&;#<>!/'aAzZ09.-_") + ["amp", "lt", "&amp;", "&lt;", "&#39;",
                                 "\u2019", "\ufb01", "\uff21", "Ã©", "é", "\u00a0", "\u0085", "\x1b[31m"]),
                max_size=40).map("".join) | st.text(max_size=40)
# long plain prompts, past the shortest context
_ASCII_PROMPT = st.lists(_PIECES.filter(str.isascii), min_size=0, max_size=90).map(" ".join)


@settings(max_examples=2000, deadline=None)
@given(text=_RAW)
def test_the_plain_cleaning_is_open_clips_wherever_it_is_used(text):
    from open_clip.tokenizer import _clean_lower

    if embed.is_plain(text):
        assert embed.plain_clean(text) == _clean_lower(text), repr(text)


@settings(max_examples=400, deadline=None)
@given(i=st.integers(0, 3), texts=st.lists(_RAW | _PROMPT | _ASCII_PROMPT, min_size=1, max_size=8))
def test_rows_through_the_plain_path_are_the_tokenizers_own(i, texts):
    # every tokenizer kind of _TOKENIZERS cleans with open_clip's "lower": all take the plain path, the short
    # context cuts long prompts, the extra special token changes the pre-token pattern
    tok = _TOKENIZERS[i]
    rows = embed.TokenRows(tok)
    assert isinstance(rows.plain, embed.PlainTokens)
    assert torch.equal(rows(texts), tok(texts)), texts
    assert torch.equal(rows.plain([t for t in texts if embed.is_plain(t)]), tok([t for t in texts if embed.is_plain(t)]))


def test_only_open_clips_lower_cleaning_takes_the_plain_path():
    from open_clip.tokenizer import SimpleTokenizer

    assert embed.TokenRows(SimpleTokenizer(clean="whitespace")).plain is None
    assert embed.TokenRows(SimpleTokenizer(reduction_mask="random")).plain is None
