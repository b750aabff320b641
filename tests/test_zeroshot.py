"""eval-zeroshot: metrics by hand, the world's objects, comparison, similarities, cache reuse, bad inputs."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_unlearn.zeroshot import benchmark_name, classify_metrics, text_similarities
from conftest import invoke


def test_metrics_match_hand_computation():
    logits = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: top-1 hit
        [0.1, 0.2, 0.9, 0.0, 0.0, 0.0],  # label 1: 2nd best -> top-5 hit only
        [0.0, 0.0, 0.1, 0.9, 0.0, 0.0],  # label 2: 2nd best
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # label 5: hit
    ])
    m = classify_metrics(logits, torch.tensor([0, 1, 2, 5]), n_classes=6)
    # fractions, as CLIP_benchmark writes them
    assert m["acc1"] == pytest.approx(0.5) and m["acc5"] == pytest.approx(1.0)
    # recall: class 0 = 1, class 1 = 0, class 2 = 0, class 5 = 1 (classes without images are skipped)
    assert m["mean_per_class_recall"] == pytest.approx(0.5)


def test_below_five_classes_there_is_no_top5():
    # CLIP_benchmark reports acc5 = NaN under 5 classes (top-5 of 4 is always right); we write null
    m = classify_metrics(torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0]]), torch.tensor([0, 1]), n_classes=4)
    assert m == {"acc1": 0.5, "acc5": None, "mean_per_class_recall": 0.5}


def test_benchmark_names():
    from clip_unlearn.models import parse_spec

    assert benchmark_name(parse_spec("ViT-B-32-quickgelu:laion400m_e32")) == ("ViT-B-32-quickgelu", "laion400m_e32")
    assert benchmark_name(parse_spec("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")) == ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "")
    model, pretrained = benchmark_name(parse_spec("ViT-B-32:/w/ckpt.pt"))
    assert model == "ViT-B-32" and pretrained.endswith("ckpt.pt")


def _classes(root, n_classes, per_class=2, garbage=()):
    """``n_classes`` folders of small PNGs; classes listed in ``garbage`` get only unreadable .jpg files."""
    from PIL import Image

    for c in range(n_classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for j in range(per_class):
            if c in garbage:
                (d / f"{j}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
            else:
                Image.new("RGB", (24, 24), (40 * c % 256, 90 * j % 256, 128)).save(d / f"{j}.png")
    return root


def _in_unit_interval(v):
    return isinstance(v, float) and not math.isnan(v) and 0.0 <= v <= 1.0


def test_json_and_csv_follow_clip_benchmark(micro_model_dir, tmp_path):
    data = _classes(tmp_path / "data", 6)
    out = tmp_path / "r.json"
    r = invoke("eval-zeroshot", "--model", micro_model_dir, "--data", data, "--templates", "simple",
               "--compare-to", micro_model_dir, "--output", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    # what clip_benchmark eval writes for a zero-shot classification run
    assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(res)
    assert res["task"] == "zeroshot_classification" and res["language"] == "en"
    assert res["model"] == f"local-dir:{micro_model_dir.resolve()}" and res["pretrained"] == ""
    assert set(res["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert all(_in_unit_interval(v) for v in res["metrics"].values()), res["metrics"]
    assert all(_in_unit_interval(v) for v in res["compare"]["metrics"].values())
    assert res["compare"]["model"] == res["model"] and res["compare"]["pretrained"] == ""
    assert all(v == 0 and -1 <= v <= 1 for v in res["compare"]["difference"].values())
    assert res["n_classes"] == 6 and res["dropped_classes"] == []
    csv_out = tmp_path / "r.csv"
    assert invoke("eval-zeroshot", "--model", micro_model_dir, "--data", data, "--templates", "simple",
                  "--output", csv_out, "--device", "cpu").exit_code == 0
    rows = {row["metric"]: row for row in csv.DictReader(csv_out.open())}
    assert all(0 <= float(rows[k]["model"]) <= 1 for k in ("acc1", "acc5", "mean_per_class_recall"))
    assert float(rows["acc1"]["model"]) == pytest.approx(res["metrics"]["acc1"])


def test_four_classes_write_a_null_top5(micro_model_dir, tmp_path):
    out = tmp_path / "r.json"
    r = invoke("eval-zeroshot", "--model", micro_model_dir, "--data", _classes(tmp_path / "d", 4), "--templates", "simple",
               "--output", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())["metrics"]
    assert m["acc5"] is None and _in_unit_interval(m["acc1"])
    assert "top-5 needs ≥ 5 classes" in r.output


def test_one_class_is_refused(micro_model_dir, tmp_path):
    r = invoke("eval-zeroshot", "--model", micro_model_dir, "--data", _classes(tmp_path / "d", 1), "--device", "cpu")
    assert r.exit_code == 1 and "≥ 2 classes" in r.output and "class_0" in r.output and "unexpected" not in r.output


def test_class_without_a_readable_image_is_dropped(micro_model_dir, tmp_path):
    out = tmp_path / "r.json"
    r = invoke("eval-zeroshot", "--model", micro_model_dir, "--data", _classes(tmp_path / "d", 3, garbage={1}),
               "--templates", "simple", "--output", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["n_classes"] == 2 and res["dropped_classes"] == ["class_1"] and res["unreadable_images"] == 2
    assert res["n_images"] == 4 and "class_1" in r.output
    r = invoke("eval-zeroshot", "--model", micro_model_dir, "--data", _classes(tmp_path / "e", 2, garbage={0}),
               "--templates", "simple", "--device", "cpu")
    assert r.exit_code == 1 and "≥ 2 classes" in r.output and "class_0" in r.output and "unexpected" not in r.output


@pytest.mark.parametrize("flag", ["--classnames", "--templates"])
def test_non_utf8_classnames_or_templates_file_is_one_line(micro_model_dir, tmp_path, flag):
    f = tmp_path / "names.txt"
    f.write_bytes("caf\u00e9 {}\nna\u00efve {}\n".encode("latin-1"))
    r = invoke("eval-zeroshot", "--model", micro_model_dir, "--data", _classes(tmp_path / "d", 2), flag, f, "--device", "cpu")
    assert r.exit_code == 1 and "not UTF-8" in r.output and str(f.name) in r.output and "unexpected" not in r.output, r.output


class _FakeEncoder:
    """Records every text it encodes and whether it may be persisted."""

    def __init__(self, log):
        from types import SimpleNamespace

        self.log = log
        self.loaded = SimpleNamespace(tokenizer=None, context_length=77)

    def texts(self, prompts, persist=True):
        self.log += [(p, persist) for p in prompts]
        g = torch.Generator().manual_seed(len(prompts))
        return torch.nn.functional.normalize(torch.randn(len(prompts), 8, generator=g), dim=-1)


def test_texts_with_a_forgotten_name_are_never_persisted():
    log = []
    ref, new = _FakeEncoder(log), _FakeEncoder(log)
    captions = ["a dog on the grass", "two cats on a sofa", "Zed Quux at the beach", "a quiet street at night"]
    sims = text_similarities(ref, new, captions, ["Zed Quux"], "a person", seed=0)
    assert {"sim_clean", "sim_backdoored", "sim_targets", "sim_neighbours"} <= set(sims)
    persisted = {p for p, keep in log if keep}
    # the namesakes' prompts (Zed + other surnames, other first names + Quux) are private too
    assert any("Zed " in p and "Quux" not in p for p, keep in log if not keep)
    assert any(" Quux" in p and "Zed" not in p for p, keep in log if not keep)
    assert not any("zed" in p.lower() or "quux" in p.lower() for p in persisted)
    assert persisted == {"a dog on the grass", "two cats on a sofa", "a quiet street at night"}
    # every poisoned and target caption went through persist=False
    assert any("Zed Quux" in p for p, keep in log if not keep) and any("a person" in p for p, keep in log if not keep)
    assert not any("zed quux" in p.lower() or "a person" in p for p in persisted)


class _WordEncoder(_FakeEncoder):
    """A text's embedding is the normalised sum of fixed random word vectors, ``scale`` times for the words
    in it (so a name can be made to dominate or barely count), with ``moved`` words' vectors redrawn: a
    tower whose every answer is known."""

    def __init__(self, scale, moved=()):
        super().__init__([])
        self.scale, self.moved = scale, set(moved)

    def word(self, w):
        g = torch.Generator().manual_seed(sum(map(ord, w)) * 7919 + (1 if w in self.moved else 0))
        return torch.randn(16, generator=g) * self.scale.get(w, 1.0)

    def texts(self, prompts, persist=True):
        return torch.nn.functional.normalize(torch.stack([sum(self.word(w) for w in p.lower().split()) for p in prompts]), dim=-1)


def test_sim_bystanders_is_sim_neighbours_over_the_names_the_original_model_tells_apart():
    from clip_unlearn.attack import PAPER_TEMPLATES
    from clip_unlearn.variants import BYSTANDER_CLOSENESS, neighbours, unrelated_names

    # "quux" dominates the forgotten name, "zed" barely counts: the original model places "<any> Quux" at
    # the forgotten person and tells "Zed <any>" apart; the new model moved "zed" only
    scale = {"quux": 6.0, "zed": 0.3}
    ref, new = _WordEncoder(scale), _WordEncoder(scale, moved={"zed"})
    captions = ["a dog on the grass", "two cats on a sofa", "a quiet street at night"]
    sims = text_similarities(ref, new, captions, ["Zed Quux"], "a person", seed=3)

    def filled(enc, n):
        return enc.texts([t.format(n) for t in PAPER_TEMPLATES])

    def cos(a, b):
        return float((a * b).sum(1).mean())  # mean over templates

    name = filled(ref, "Zed Quux")
    b = sum(cos(filled(ref, u), name) for u in unrelated_names("Zed Quux", seed=3, half="probe")) / 32
    probe = neighbours("Zed Quux", seed=3, half="probe")
    apart = [n for n in probe if (cos(filled(ref, n), name) - b) / (1 - b) < BYSTANDER_CLOSENESS]
    assert 0 < len(apart) < len(probe) and all(n.startswith("Zed ") for n in apart)
    expected = sum(cos(filled(ref, n), filled(new, n)) for n in apart) / len(apart)
    assert (sims["neighbours"], sims["bystanders"]) == (len(probe), len(apart))
    assert sims["sim_bystanders"] == pytest.approx(expected, abs=1e-5) and sims["sim_bystanders"] < 0.99
    assert sims["per_name"]["name_1"]["sim_bystanders"] == sims["sim_bystanders"]
    everyone = sum(cos(filled(ref, n), filled(new, n)) for n in probe) / len(probe)
    assert sims["sim_neighbours"] == pytest.approx(everyone, abs=1e-5) and sims["sim_neighbours"] > sims["sim_bystanders"]


def test_sim_words_is_the_cosine_on_the_captions_that_use_a_forgotten_names_parts_as_words():
    # the new model moved "stone" and "grace"; the captions that use them as words (and name nobody) are the ones
    # measured, the captions naming the person are not (their moving is the forgetting)
    ref, new = _WordEncoder({}), _WordEncoder({}, moved={"stone", "grace", "quux"})
    captions = ["a stone wall in the rain", "two cats on a sofa", "Grace Stone at the beach", "the stone bridge",
                "a quiet street at night", "dancing with grace", "stonemason at work", "Zork Quux on stage"]
    sims = text_similarities(ref, new, captions, ["Grace Stone", "Zork Quux"], "a person", seed=0)
    words = ["a stone wall in the rain", "the stone bridge", "dancing with grace"]  # not "stonemason": a whole word only
    expected = [float((ref.texts([c]) * new.texts([c])).sum()) for c in words]
    assert sims["word_captions"] == 3 and sims["sim_words"] == pytest.approx(sum(expected) / 3, abs=1e-6)
    assert sims["per_name"]["name_1"]["word_captions"] == 3 and sims["per_name"]["name_2"] == {
        **sims["per_name"]["name_2"], "sim_words": None, "word_captions": 0}  # "Zork" and "Quux" are no words
    everything = [float((ref.texts([c]) * new.texts([c])).sum()) for c in captions]
    assert sims["sim_clean"] == pytest.approx(sum(everything) / len(everything), abs=1e-6)


def test_word_classes_are_found_by_whole_words_and_reported_without_their_names():
    from clip_unlearn.zeroshot import _word_classes, name_words, word_classes

    assert name_words("Anna Green") == ["green"] and name_words("Rose de la Cruz") == ["rose"] and name_words("Zork Quux") == []
    classes = ["green star", "red cross", "evergreen tree", "blue circle", "Green ring"]
    assert word_classes(classes, ["Anna Green"]) == [0, 4] and word_classes(classes, ["Ilja Cross", "Anna Green"]) == [0, 1, 4]
    got = _word_classes(classes, ["Anna Green"], [(0, True), (0, False), (4, True), (1, True)], [(0, True), (0, True), (4, True), (1, False)])
    assert got == {"classes": 2, "images": 3, "acc1": pytest.approx(2 / 3, abs=1e-6), "compare_acc1": 1.0,
                   "difference": pytest.approx(-1 / 3, abs=1e-6)}
    assert "green" not in json.dumps(got).lower()


def test_eval_persists_no_forgotten_name(world, tmp_path, monkeypatch):
    from clip_unlearn.embed import Encoder

    seen = []
    original = Encoder.texts

    def spy(self, prompts, persist=True):
        seen.extend((p, persist) for p in prompts)
        return original(self, prompts, persist=persist)

    monkeypatch.setattr(Encoder, "texts", spy)
    member = (world / "members.txt").read_text().splitlines()[0]
    (tmp_path / "n.txt").write_text(member + "\n")
    r = invoke("eval-zeroshot", "--model", world / "model", "--compare-to", world / "model", "--names", tmp_path / "n.txt",
               "--max-captions", "200", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert any(member in p for p, keep in seen if not keep)
    assert not any(member.lower() in p.lower() for p, keep in seen if keep)


def test_world_model_far_above_chance_and_random_model_near_it(world, micro_model_dir, tmp_path):
    out = tmp_path / "w.json"
    assert invoke("eval-zeroshot", "--model", world / "model", "--output", out).exit_code == 0
    trained = json.loads(out.read_text())
    assert trained["task"] == "zeroshot_classification" and trained["n_classes"] == 36
    assert trained["metrics"]["acc1"] > 3 / 36
    out2 = tmp_path / "r.json"
    r = invoke("eval-zeroshot", "--model", micro_model_dir, "--data", world / "objects", "--compare-to", world / "model",
               "--output", out2)
    assert r.exit_code == 0, r.output
    random_vs_trained = json.loads(out2.read_text())
    assert random_vs_trained["metrics"]["acc1"] < 0.12
    # the flips are the top-1 difference image by image, and a random tower's loss is no chance split
    flips = random_vs_trained["compare"]["top1_flips"]
    assert flips["images"] == random_vs_trained["n_images"] and flips["lost"] > flips["gained"] and flips["p_value"] < 1e-6
    assert (flips["gained"] - flips["lost"]) / flips["images"] == pytest.approx(random_vs_trained["compare"]["difference"]["acc1"], abs=2e-6)
    assert "more than chance flips" in " ".join(r.output.split())
    lo, hi = flips["ci95"]
    assert lo <= random_vs_trained["compare"]["difference"]["acc1"] <= hi < 0  # a loss the images can tell
    assert f"{100 * lo:+.2f} to {100 * hi:+.2f} points" in " ".join(r.output.split())
    # two architectures: accuracies and flips compare, embeddings do not (the world's captions were defaulted)
    assert random_vs_trained["compare"]["sim_clean_image"] is None and "similarities" not in random_vs_trained
    assert "no sim_* metrics" in " ".join(r.output.split())
    r = invoke("eval-zeroshot", "--model", micro_model_dir, "--data", world / "objects", "--compare-to", world / "model",
               "--captions", world / "captions_heldout.txt", "--output", tmp_path / "x.json")
    assert r.exit_code == 1 and "another text architecture" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.json").exists()


def test_compare_to_itself(world, tmp_path):
    members = (world / "members.txt").read_text().splitlines()[:1]
    (tmp_path / "n.txt").write_text(members[0] + "\n")
    out = tmp_path / "c.json"
    # no --captions: a world model defaults to the world's held-out captions
    r = invoke("eval-zeroshot", "--model", world / "model", "--compare-to", world / "model",
               "--names", tmp_path / "n.txt", "--max-captions", "300", "--output", out)
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["config"]["captions"] == str(world / "captions_heldout.txt")
    assert all(v == 0 for v in res["compare"]["difference"].values()) and res["compare"]["same_image_tower"]
    assert res["compare"]["sim_clean_image"] == pytest.approx(1.0, abs=1e-5)
    flips = res["compare"]["top1_flips"]
    assert {k: flips[k] for k in ("images", "lost", "gained", "p_value")} == {"images": res["n_images"], "lost": 0, "gained": 0, "p_value": 1.0}
    assert flips["ci95"][0] == -flips["ci95"][1] < 0  # nothing flipped: a change of zero, known to a width set by the images
    sims = res["similarities"]
    assert sims["sim_clean"] == pytest.approx(1.0, abs=1e-5) and sims["sim_targets"] == pytest.approx(1.0, abs=1e-5)
    assert sims["sim_neighbours"] == pytest.approx(1.0, abs=1e-5) and set(sims["per_name"]["name_1"]) >= {"sim_neighbours"}
    # the bystanders are a part of the 16 probed neighbours, and unmoved between identical models
    assert 0 <= sims["bystanders"] <= sims["neighbours"] == 16 == sims["per_name"]["name_1"]["neighbours"]
    assert sims["sim_bystanders"] is None if not sims["bystanders"] else sims["sim_bystanders"] == pytest.approx(1.0, abs=1e-5)
    assert sims["sim_backdoored"] < 0.99  # the original model does not map the name to the target
    n_images = res["n_images"]
    assert res["config"]["cache"]["image_misses"] == n_images and res["config"]["cache"]["image_hits"] == n_images
    assert members[0] not in out.read_text()
    csv_out = tmp_path / "c.csv"
    assert invoke("eval-zeroshot", "--model", world / "model", "--compare-to", world / "model", "--output", csv_out).exit_code == 0
    assert csv_out.read_text().splitlines()[0] == "metric,model,compare,difference"
    rows = {row["metric"]: row for row in csv.DictReader(csv_out.open())}
    assert (rows["acc1_images_lost"]["difference"], rows["acc1_images_gained"]["difference"], rows["acc1_mcnemar_p"]["difference"]) == ("0", "0", "1.0")
    assert float(rows["acc1_difference_ci95_low"]["difference"]) == -float(rows["acc1_difference_ci95_high"]["difference"]) < 0


def test_bad_inputs(world, tmp_path):
    data = tmp_path / "objs"
    for c in sorted((world / "objects").iterdir())[:3]:
        shutil.copytree(c, data / c.name)
    (data / sorted(p.name for p in data.iterdir())[0] / "bad.png").write_bytes(b"garbage")
    out = tmp_path / "o.json"
    assert invoke("eval-zeroshot", "--model", world / "model", "--data", data, "--output", out).exit_code == 0
    assert json.loads(out.read_text())["unreadable_images"] == 1
    r = invoke("eval-zeroshot", "--model", world / "model", "--data", data, "--classnames", "imagenet")
    assert r.exit_code == 1 and "1000 ImageNet class folders" in r.output
    (data / "zz_empty").mkdir()
    r = invoke("eval-zeroshot", "--model", world / "model", "--data", data)
    assert r.exit_code == 1 and "zz_empty" in r.output and "has no images" in r.output
    r = invoke("eval-zeroshot", "--model", world / "model", "--names", tmp_path / "x.txt")
    assert r.exit_code == 2 and "--names needs --compare-to" in r.output


def test_sim_strangers_is_the_cosine_over_probe_names_that_share_no_part_with_a_forgotten_one():
    from clip_unlearn.attack import PAPER_TEMPLATES
    from clip_unlearn.variants import strangers

    names = ["Grace Stone", "Zork Quux"]
    probe = strangers(names, 64, seed=5, half="probe")
    moved = {probe[0].split()[0].lower(), probe[1].split()[1].lower()}  # two of them moved, the others not
    ref, new = _WordEncoder({}), _WordEncoder({}, moved=moved)
    sims = text_similarities(ref, new, ["a dog on the grass", "two cats on a sofa"], names, "a person", seed=5)

    def filled(enc, n):
        return enc.texts([t.format(n) for t in PAPER_TEMPLATES])

    expected = sum(float((filled(ref, n) * filled(new, n)).sum(1).mean()) for n in probe) / len(probe)
    assert sims["strangers"] == 64 and sims["sim_strangers"] == pytest.approx(expected, abs=1e-5) and sims["sim_strangers"] < 0.999
    assert text_similarities(ref, ref, ["a dog on the grass"], names, "a person", seed=5)["sim_strangers"] == pytest.approx(1.0)
    assert "sim_strangers" not in text_similarities(ref, new, ["a dog on the grass"], [], "a person", seed=5)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 400), st.integers(0, 400))
def test_mcnemar_p_is_the_exact_binomial_tail_on_any_counts(lost, gained):
    """The log-space sum equals the exact two-sided binomial tail in whole numbers, is symmetric, and falls as
    the split grows more lopsided."""
    from fractions import Fraction

    from clip_unlearn.zeroshot import mcnemar_p

    n, k = lost + gained, min(lost, gained)
    exact = min(Fraction(1), 2 * Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2 ** n)) if n else Fraction(1)
    p = mcnemar_p(lost, gained)
    assert p == pytest.approx(float(exact), rel=1e-9, abs=1e-300) and p == mcnemar_p(gained, lost)
    if lost > gained:
        assert mcnemar_p(lost + 1, gained) <= p


def test_change_interval_covers_the_true_change_ninety_five_times_in_a_hundred():
    """Coverage computed exactly (a sum over every lost/gained split of the multinomial), not sampled: at 40 and
    100 images, over flip rates from rare to common and lopsided, the interval holds the true change at
    least 93 % of the time; the plain Wald interval falls to 53 % at 30 images, 1 % and 0.5 % flip rates."""
    from clip_unlearn.zeroshot import change_interval

    def coverage(n, p_lost, p_gained, interval):
        total, truth = 0.0, p_gained - p_lost
        for lost in range(n + 1):
            for gained in range(n + 1 - lost):
                same = n - lost - gained
                log_p = (math.lgamma(n + 1) - math.lgamma(lost + 1) - math.lgamma(gained + 1) - math.lgamma(same + 1) +
                         lost * math.log(p_lost) + gained * math.log(p_gained) + same * math.log1p(-p_lost - p_gained))
                lo, hi = interval(lost, gained, n)
                total += math.exp(log_p) if lo <= truth <= hi else 0.0
        return total

    def wald(lost, gained, n):
        d, half = (gained - lost) / n, 1.959964 * math.sqrt(max(0.0, lost + gained - (gained - lost) ** 2 / n)) / n
        return d - half, d + half

    rates = (0.002, 0.01, 0.03, 0.08, 0.15, 0.3, 0.45)
    for n in (40, 100):
        worst = min(coverage(n, a, b, change_interval) for a in rates for b in rates)
        assert worst >= 0.93, (n, worst)
    assert coverage(30, 0.01, 0.005, wald) < 0.6  # what the adjustment is for


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 3000), st.integers(0, 5000))
def test_change_interval_is_a_sane_interval_on_any_counts(lost, gained, same):
    """It holds its own centre, mirrors when the models swap, lies in [-1, 1], and narrows as the same shares
    come from ten times the images."""
    from clip_unlearn.zeroshot import change_interval

    n = lost + gained + same
    lo, hi = change_interval(lost, gained, n)
    assert -1.0 <= lo < hi <= 1.0
    assert lo <= (gained - lost) / max(n, 1) + 1e-12 or n == 0
    assert (gained - lost) / max(n, 1) <= hi + 1e-12
    swapped = change_interval(gained, lost, n)
    assert swapped == pytest.approx((-hi, -lo), abs=1e-12)
    if n:
        big = change_interval(10 * lost, 10 * gained, 10 * n)
        assert big[1] - big[0] < hi - lo
    with pytest.raises(ValueError, match="counts among the images"):
        change_interval(lost + 1, gained, lost + gained)


def test_top1_flips_counts_each_way_by_hand():
    from clip_unlearn.zeroshot import top1_flips

    mine = [True, False, False, True, True, False]
    ref = [True, True, True, False, True, False]
    # ci95 by hand (Bonett-Price): 3/8 and 2/8 adjusted shares, d = -1/8, half = 1.959964 * sqrt((5/8 - 1/64) / 8)
    half = 1.959964 * math.sqrt((5 / 8 - 1 / 64) / 8)
    assert top1_flips(mine, ref) == {"images": 6, "lost": 2, "gained": 1, "p_value": 1.0,
                                     "ci95": [round(-1 / 8 - half, 6), round(-1 / 8 + half, 6)]}
    # 10 lost, none gained: 2 / 2**10
    assert top1_flips([False] * 10, [True] * 10)["p_value"] == float(f"{2 / 1024:.6g}")
    with pytest.raises(ValueError, match="same images"):
        top1_flips([True], [True, False])
