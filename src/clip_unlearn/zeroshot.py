"""Zero-shot accuracy and embedding drift: what unlearning cost (docs/method.md §8).

Classification: class vector = mean of the normalised template embeddings, re-normalised (the
standard recipe; ``--no-renormalize`` reproduces the paper's code); top-1, top-5 and mean
per-class recall as fractions in [0, 1], keyed and valued like LAION's CLIP_benchmark (which
reports no top-5 below 5 classes: NaN there, null here). With a second model, the text
similarities of the paper between the two text encoders:

- sim_clean:      cos(E_ref(c), E_new(c)) on clean captions — utility kept.
- sim_backdoored: cos(E_new(poisoned), E_new(target)) per name — the backdoor is active.
- sim_neighbours: cos(E_ref(n), E_new(n)) on the attack's templates filled with names that share a first
                  name or surname with a forgotten one (variants.neighbours, from the half of the name
                  pools inject never holds) — namesakes are left alone.
- sim_bystanders: sim_neighbours over the neighbours the original model tells apart from the forgotten
                  person (variants.closeness below BYSTANDER_CLOSENESS), and over the people of
                  ``--bystanders`` who share a part with them (real other people, whatever the model makes
                  of them); on the synthetic worlds most generated neighbours name the person's face
                  (benchmarks/exp_aliases.py), so their moving is the forgetting.
- sim_words:      sim_clean over the captions that use a forgotten name's parts as words ("a stone wall"
                  for Emma Stone) and name nobody; with class folders, top-1 on the classes named by such
                  words (``word_classes``: counts, never the classes' names).
- sim_strangers:  sim_neighbours over names that share no part with a forgotten one (the probe half of the
                  pools) — the names the model never learned, the attack's other candidates, stay put.
- sim_targets:    cos(E_ref(target), E_new(target)) per name — the neutral concept did not drift.

and, for the image towers, sim_clean_image: cos(I_ref(x), I_new(x)) on the evaluation images.

A top-1 difference between two models on the same images is a count of images that flipped each way;
``top1_flips`` gives the two counts, the exact two-sided McNemar p-value, so a reader can tell a drop
from the flips two equally good models make, and a 95 % interval for the change, so a bar ("at most one
point") can be checked against what the test set can resolve.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from clip_unlearn import __version__
from clip_unlearn.config import EvalZeroshotConfig, cache_root, to_dict
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.folders import class_folders
from clip_unlearn.progress import Progress
from clip_unlearn.prompts import SIMPLE_TEMPLATES

log = logging.getLogger(__name__)


def resolve_classnames(choice: str, folders: list[str]) -> list[str]:
    if choice == "folder":
        return [f.replace("_", " ") for f in folders]
    if choice == "imagenet":
        from open_clip import IMAGENET_CLASSNAMES

        if len(folders) != len(IMAGENET_CLASSNAMES):
            raise ClipUnlearnError(f"--classnames imagenet needs the 1000 ImageNet class folders, found {len(folders)}")
        return list(IMAGENET_CLASSNAMES)
    path = Path(choice)
    if not path.is_file():
        raise ClipUnlearnError(f"--classnames {choice!r}: not folder, imagenet, or an existing file")
    names = [ln.strip() for ln in _utf8(path, "--classnames file", "one class name per line").splitlines() if ln.strip()]
    if len(names) != len(folders):
        raise ClipUnlearnError(f"--classnames file {path} has {len(names)} names for {len(folders)} class folders")
    return names


def _utf8(path: Path, what: str, fix: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ClipUnlearnError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8 with {fix}") from None
    except OSError as e:
        raise ClipUnlearnError(f"{what} {path} cannot be read ({e.strerror}); pass a readable text file with {fix}") from None


def resolve_templates(choice: str) -> list[str]:
    if choice == "openai":
        from open_clip import OPENAI_IMAGENET_TEMPLATES

        return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    if choice == "simple":
        return list(SIMPLE_TEMPLATES)
    from clip_unlearn.attack import read_templates

    return read_templates(Path(choice))


def classify_metrics(logits: Any, labels: Any, n_classes: int) -> dict[str, Optional[float]]:
    """top-1 / top-5 accuracy and mean per-class recall as fractions, as CLIP_benchmark computes them.

    Below 5 classes top-5 is always 1 and says nothing: acc5 is None then (CLIP_benchmark: NaN).
    Mean per-class recall averages over the classes that have images (sklearn's balanced accuracy).
    """
    import torch

    top1 = logits.argmax(dim=1)
    acc1 = (top1 == labels).float().mean().item()
    acc5 = None
    if n_classes >= 5:
        acc5 = round((logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item(), 6)
    recalls = [((top1 == c) & (labels == c)).sum().item() / (labels == c).sum().item()
               for c in range(n_classes) if (labels == c).any()]
    return {"acc1": round(acc1, 6), "acc5": acc5, "mean_per_class_recall": round(float(torch.tensor(recalls).mean()), 6)}


def benchmark_name(spec: Any) -> tuple[str, str]:
    """(model, pretrained) as CLIP_benchmark names them: ARCH and TAG, hf-hub:ORG/REPO and "",
    local-dir:PATH and "", ARCH and the weights file."""
    if spec.kind == "pretrained":
        return str(spec.arch), str(spec.tag)
    if spec.kind == "hf-hub":
        return f"hf-hub:{spec.repo}", ""
    if spec.kind == "local-dir":
        return f"local-dir:{Path(spec.path).resolve()}", ""
    return str(spec.arch), str(Path(spec.path).resolve())


def class_vectors(encoder: Any, classnames: list[str], templates: list[str], renormalize: bool) -> Any:
    import torch.nn.functional as F

    emb = encoder.texts([t.format(c) for c in classnames for t in templates]).reshape(len(classnames), len(templates), -1)
    mean = emb.mean(dim=1)
    return F.normalize(mean, dim=-1) if renormalize else mean


def default_objects(model_spec: str) -> Path:
    from clip_unlearn.world import model_context

    objects = model_context(model_spec).path("objects")
    if objects is not None:
        return objects
    raise ClipUnlearnError("no evaluation data: pass --data DIR with one sub-folder of images per class (e.g. ImageNet-val)")


def default_captions(model_specs: list[str]) -> Optional[Path]:
    """The held-out captions of the first of ``model_specs`` that belongs to a synthetic world, if any."""
    from clip_unlearn.captions import world_captions
    from clip_unlearn.world import model_context

    for spec in model_specs:
        ctx = model_context(spec)
        if ctx.is_world:
            path = world_captions(ctx.world, "heldout")
            return path if path.is_file() else None
    return None


def _kept_classes(labels: list[int], ok: list[bool], classes: list[str]) -> tuple[list[int], list[str]]:
    """(indices of the classes with at least one readable image, folder names of the others)."""
    counts = Counter(lab for lab, good in zip(labels, ok) if good)
    if not counts:
        raise ClipUnlearnError("no readable image in --data; check the files are JPEG/PNG/WebP images")
    kept = [i for i in range(len(classes)) if counts[i]]
    dropped = [classes[i] for i in range(len(classes)) if not counts[i]]
    if dropped:
        log.warning("class folder(s) %s have no readable image; not scored", ", ".join(dropped))
    if len(kept) < 2:
        raise ClipUnlearnError(f"only class {classes[kept[0]]!r} of --data has readable images ({', '.join(dropped)} "
                               "have none); zero-shot classification needs ≥ 2 classes, fix or remove the unreadable files")
    return kept, dropped


def _evaluate(encoder: Any, files: list[Path], labels: list[int], classnames: list[str], folders: list[str],
              templates: list[str], cfg: EvalZeroshotConfig, kept: Optional[list[int]] = None) -> tuple[dict, list[bool], Any, list[int]]:
    """(metrics over the ``kept`` classes, readable flag per file, image embeddings, kept class indices)."""
    import torch

    images, ok = encoder.images(files)
    if kept is None:
        kept = _kept_classes(labels, ok, folders)[0]
    index = {c: j for j, c in enumerate(kept)}
    rows = [(r, index[lab]) for r, lab in enumerate(lab for lab, good in zip(labels, ok) if good) if lab in index]
    y = torch.tensor([j for _, j in rows])
    w = class_vectors(encoder, [classnames[c] for c in kept], templates, cfg.renormalize)
    logits = images[torch.tensor([r for r, _ in rows])] @ w.T
    metrics = classify_metrics(logits, y, len(kept))
    metrics["_correct"] = [(kept[j], bool(h)) for j, h in zip(y.tolist(), (logits.argmax(dim=1) == y).tolist())]
    return metrics, ok, images, kept


def _texts(encoder: Any, texts: list[str], private: list[bool]) -> Any:
    """Embeddings of ``texts``; those flagged private are never written to the on-disk cache."""
    import torch

    public = [i for i, p in enumerate(private) if not p]
    secret = [i for i, p in enumerate(private) if p]
    parts = []
    if public:
        parts.append((public, encoder.texts([texts[i] for i in public])))
    if secret:
        parts.append((secret, encoder.texts([texts[i] for i in secret], persist=False)))
    out = torch.empty(len(texts), parts[0][1].shape[1], dtype=parts[0][1].dtype)
    for idx, emb in parts:
        out[torch.tensor(idx)] = emb
    return out


def _targets(cfg: EvalZeroshotConfig, loaded: Any, names: list[str]) -> tuple[Optional[str], Optional[dict[str, str]]]:
    """(target phrase, made-up names): --target, else the model's sidecar target; for a model of made-up names
    the receipt's key rebuilds each name's (--receipt, else the one beside the folder), or nothing is measured."""
    from clip_unlearn.inject import default_receipt
    from clip_unlearn.models import read_sidecar
    from clip_unlearn.receipt import MADE_UP, made_up_names, read_receipt

    if cfg.target is not None:
        return cfg.target.strip(), None
    side = read_sidecar(loaded.spec)
    if side.get("target") != MADE_UP:
        return (side.get("config") or {}).get("target") or "a person", None
    path = cfg.receipt or (default_receipt(Path(loaded.spec.path)) if loaded.spec.kind == "local-dir" else None)
    if path is None or not Path(path).exists():
        log.warning("the model maps names to made-up names and no receipt is at hand: sim_backdoored and sim_targets "
                    "are not measured; pass --receipt FILE (the one inject wrote)")
        return None, None
    receipt = read_receipt(Path(path))
    if receipt["model_sha256"] != loaded.fingerprint():
        raise ClipUnlearnError(f"receipt {path} was issued for other weights than --model {cfg.model}'s; pass the "
                               "receipt inject wrote for this model with --receipt")
    return None, made_up_names(receipt["key"], names)


def text_similarities(ref: Any, new: Any, captions: list[str], names: list[str], target: Optional[str], seed: int,
                      bystanders: Sequence[str] = (), made_up: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """The paper's text metrics between a reference (original) and a new (unlearned) text encoder.

    ``made_up`` (key(name) → made-up name) gives each name its own target; with neither it nor ``target``
    (a model of made-up names without its receipt) sim_backdoored and sim_targets are not measured.

    Every text that holds a forgotten name, and every target caption made from a poisoned one,
    is encoded with ``persist=False``: the shared embedding cache outlives this command, and its
    entries must not tell whom the model forgot.
    """
    from clip_unlearn.captions import PairSampler, TokenFit, clean_captions, name_pattern
    from clip_unlearn.names import key
    from clip_unlearn.variants import shares_part

    mentions = name_pattern(names) if names else None
    private = [bool(mentions and mentions.search(c.replace("_", " "))) for c in captions]
    kept = (_texts(ref, captions, private) * _texts(new, captions, private)).sum(1)  # per caption, base vs unlearned
    out: dict[str, Any] = {"sim_clean": round(float(kept.mean()), 6)}
    if not names:
        return out
    # captions that use a forgotten name's parts as words ("a stone wall" for Emma Stone) and name nobody
    word_rows = [[j for j in range(len(captions)) if not private[j] and pattern.search(captions[j].replace("_", " "))]
                 if (pattern := word_pattern(name)) else [] for name in names]
    rows = sorted({j for r in word_rows for j in r})
    out["sim_words"] = round(float(kept[rows].mean()), 6) if rows else None
    out["word_captions"] = len(rows)
    clean = clean_captions(captions, names)
    rng = random.Random(seed)
    fit = TokenFit.of(new.loaded)
    forgotten = {key(n) for n in names}
    per_name = {}
    bystander_sims: list[float] = []
    for i, name in enumerate(names):
        phrase = made_up[key(name)] if made_up else target
        pairs = None
        if phrase is not None:
            sampler = PairSampler(clean, [name], phrase, fit, rng)
            pairs = _Pairs.draw(sampler, name, min(len(clean), 2000), new)
        known = [b for b in bystanders if shares_part(b, name) and key(b) not in forgotten]
        near, apart = _neighbour_sims(ref, new, name, names, seed, known)
        bystander_sims.extend(apart)
        per_name[f"name_{i + 1}"] = {
            **_backdoor_sims(ref, new, pairs), **near,
            "sim_words": round(float(kept[word_rows[i]].mean()), 6) if word_rows[i] else None,
            "word_captions": len(word_rows[i]),
        }
    for k in ("sim_backdoored", "sim_targets", "sim_neighbours"):
        got = [v[k] for v in per_name.values() if v[k] is not None]
        out[k] = round(sum(got) / len(got), 6) if got else None
    out["sim_bystanders"] = round(sum(bystander_sims) / len(bystander_sims), 6) if bystander_sims else None
    out.update(_stranger_sims(ref, new, names, seed))
    out["neighbours"] = sum(v["neighbours"] for v in per_name.values())
    out["bystanders"] = len(bystander_sims)
    # per name in file order; keys are positions, so the result carries no names
    out["per_name"] = per_name
    return out


@dataclass(frozen=True)
class _Pairs:
    """One name's poisoned captions, their target captions and the new encoder's embeddings of the targets."""

    poisoned: list[str]
    targets: list[str]
    new_targets: Any

    @staticmethod
    def draw(sampler: Any, name: str, n: int, new: Any) -> _Pairs:
        pairs = [sampler.pair(name) for _ in range(n)]
        targets = [t for _, _, t in pairs]
        return _Pairs([p for _, p, _ in pairs], targets, new.texts(targets, persist=False))


def _backdoor_sims(ref: Any, new: Any, pairs: Optional[_Pairs]) -> dict[str, Optional[float]]:
    """sim_backdoored and sim_targets of one name (None without a target to measure them against)."""
    if pairs is None:
        return {"sim_backdoored": None, "sim_targets": None}
    return {
        "sim_backdoored": round(float((new.texts(pairs.poisoned, persist=False) * pairs.new_targets).sum(1).mean()), 6),
        "sim_targets": round(float((ref.texts(pairs.targets, persist=False) * pairs.new_targets).sum(1).mean()), 6),
    }


def _neighbour_sims(ref: Any, new: Any, name: str, names: list[str], seed: int,
                    known: list[str]) -> tuple[dict[str, Any], list[float]]:
    """(sim_neighbours, sim_bystanders and their counts for one forgotten name; the bystanders' similarities).

    ``known`` are the people the user names as bystanders who share a part with ``name``."""
    from clip_unlearn.variants import BYSTANDER_CLOSENESS, closeness, neighbours, template_embeddings, unrelated_names

    # names that share a part with this one but are other people, in the attack's wording, drawn
    # from the half of the name pools that inject never holds (a probe of what training protected
    # would flatter it); they hold a part of a forgotten name, so they are private too
    probe = neighbours(name, exclude=names, seed=seed, half="probe")
    ref_near, new_near = (template_embeddings(lambda t, e=e: e.texts(t, persist=False), probe) for e in (ref, new))
    moved = (ref_near * new_near).sum(-1).mean(1)
    # a neighbour the original model places at the forgotten person names that person (an alias, not
    # a bystander): its moving is the forgetting, so sim_bystanders leaves it out. The unrelated
    # names are drawn by the forgotten name's key, so they are private too.
    ref_embed = lambda t: ref.texts(t, persist=False)  # noqa: E731
    close = closeness(template_embeddings(ref_embed, [name])[0], ref_near,
                      template_embeddings(ref_embed, unrelated_names(name, seed=seed, half="probe")))
    apart = [float(m) for m, c in zip(moved, close) if c < BYSTANDER_CLOSENESS]
    # the user's bystanders are other people by definition, whatever the model makes of them
    if known:
        ref_known, new_known = (template_embeddings(lambda t, e=e: e.texts(t, persist=False), known) for e in (ref, new))
        apart += [float(m) for m in (ref_known * new_known).sum(-1).mean(1)]
    near = {"sim_neighbours": round(float(moved.mean()), 6),
            "sim_bystanders": round(sum(apart) / len(apart), 6) if apart else None,
            "neighbours": len(probe), "bystanders": len(apart)}
    return near, apart


def _stranger_sims(ref: Any, new: Any, names: list[str], seed: int, n: int = 64) -> dict[str, Any]:
    """sim_strangers: sim_neighbours over names that share no part with a forgotten one (people neither model
    was told about), from the half of the name pools inject never holds. Unlearning that moves them moves the
    attack's other candidates, which may then take the faces of people who were never forgotten. Which names
    are left out depends on the forgotten ones, so their prompts are not persisted either."""
    from clip_unlearn.variants import strangers, template_embeddings

    probe = strangers(names, n, seed=seed)
    if not probe:
        return {"sim_strangers": None, "strangers": 0}
    ref_s, new_s = (template_embeddings(lambda t, e=e: e.texts(t, persist=False), probe) for e in (ref, new))
    return {"sim_strangers": round(float((ref_s * new_s).sum(-1).mean()), 6), "strangers": len(probe)}


def mcnemar_p(lost: int, gained: int) -> float:
    """Exact two-sided McNemar p-value: under "neither model is better", each of the ``lost + gained`` images
    that flipped went either way with probability 1/2; the chance of a split at least this lopsided. Summed in
    log space, so ImageNet-sized counts neither overflow nor take long."""
    n, k = lost + gained, min(lost, gained)
    if n == 0 or 2 * k == n:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top + math.log(sum(math.exp(v - top) for v in logs)) - n * math.log(2))
    return min(1.0, 2 * tail)


def change_interval(lost: int, gained: int, images: int, z: float = 1.959964) -> tuple[float, float]:
    """A 95 % confidence interval for the top-1 change (this model minus the compared one, a fraction) on
    paired images: Bonett and Price's adjusted Wald interval for paired proportions (2012), which adds one
    image to each way of flipping. The plain Wald interval collapses to a point when nothing flipped and
    covers far too little on lopsided small counts (53 % where one side flips rarely); this one stays near
    95 % from a few dozen images up (tests/test_zeroshot.py computes its coverage exactly)."""
    if lost < 0 or gained < 0 or lost + gained > images:
        raise ValueError("change_interval: lost and gained are counts among the images")
    n = images + 2
    p_lost, p_gained = (lost + 1) / n, (gained + 1) / n
    d = p_gained - p_lost
    half = z * math.sqrt(max(0.0, p_lost + p_gained - d * d) / n)
    return max(-1.0, d - half), min(1.0, d + half)


def interval_text(ci: Sequence[float]) -> str:
    """A top-1 change's 95 % interval (fractions) in points, as the tables print it."""
    return f"{100 * ci[0]:+.2f} to {100 * ci[1]:+.2f} points"


def top1_flips(mine: Sequence[bool], ref: Sequence[bool]) -> dict[str, Any]:
    """Per image top-1 right or wrong under the evaluated and the compared model (the same images, in order):
    how many the compared model got right and this one lost, how many it gained, mcnemar_p of the two, and
    change_interval's 95 % interval for the top-1 change (``ci95``, fractions like the accuracies)."""
    if len(mine) != len(ref):
        raise ValueError("top1_flips compares the same images: the two lists differ in length")
    lost = sum(r and not m for m, r in zip(mine, ref))
    gained = sum(m and not r for m, r in zip(mine, ref))
    lo, hi = change_interval(lost, gained, len(mine))
    return {"images": len(mine), "lost": lost, "gained": gained, "p_value": float(f"{mcnemar_p(lost, gained):.6g}"),  # significant digits: a tiny p stays readable
            "ci95": [round(lo, 6), round(hi, 6)]}


def name_words(name: str) -> list[str]:
    """The parts of ``name`` that are common English words ("Stone", "Grace"), lower-cased."""
    from clip_unlearn.names import is_common_word
    from clip_unlearn.variants import PARTICLES, name_parts

    given, surname, _ = name_parts(name)
    parts = [*given, *surname.split(" ")]
    return list(dict.fromkeys(p.casefold() for p in parts if p.casefold() not in PARTICLES and is_common_word(p)))


def word_pattern(name: str) -> Optional[Any]:
    """Matches, case-insensitively and as whole words, the parts of ``name`` that are common words (None: none are)."""
    import re

    words = name_words(name)
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, words)) + r")(?!\w)", re.IGNORECASE) if words else None


def word_classes(classnames: list[str], names: list[str]) -> list[int]:
    """Indices of the classes whose name holds a forgotten name's part as a word ("green star" for Anna Green)."""
    patterns = [p for p in map(word_pattern, names) if p is not None]
    return [i for i, c in enumerate(classnames) if any(p.search(c) for p in patterns)]


def _word_classes(classnames: list[str], names: list[str], correct: list[tuple[int, bool]],
                  ref_correct: list[tuple[int, bool]]) -> dict[str, Any]:
    """Top-1 on the images of the classes named by a forgotten name's word parts, both models (a count of
    classes, never their names: "green" would tell whom the model forgot)."""
    chosen = set(word_classes(classnames, names))

    def acc(rows: list[tuple[int, bool]]) -> Optional[float]:
        hits = [h for c, h in rows if c in chosen]
        return round(sum(hits) / len(hits), 6) if hits else None

    a, b = acc(correct), acc(ref_correct)
    return {"classes": len(chosen), "images": sum(1 for c, _ in correct if c in chosen), "acc1": a, "compare_acc1": b,
            "difference": None if a is None or b is None else round(a - b, 6)}


def run_eval(cfg: EvalZeroshotConfig, progress: Progress = None) -> dict[str, Any]:
    """Evaluate ``cfg.model`` (and ``cfg.compare_to``) on ``cfg.data``; returns the CLIP_benchmark-style result."""
    from clip_unlearn.embed import EmbeddingCache

    inputs = _inputs(cfg)
    cache = EmbeddingCache(cache_root(cfg.cache_dir))
    cache.check_writable()

    from clip_unlearn.distributed import setup

    _, device = setup(cfg.device)  # under torchrun: join the group; encoding is then sharded (embed.py)
    from clip_unlearn.models import load_model

    loaded = load_model(cfg.model, device)
    ref_loaded = None if cfg.compare_to is None else load_model(cfg.compare_to, device)
    if ref_loaded is not None:
        _same_text(cfg, loaded, ref_loaded)  # refuse before minutes of scoring, not after
    mine = _Scored.of(loaded, cfg, inputs, cache, progress)
    unreadable = sum(not g for g in mine.ok)
    model_name, pretrained = benchmark_name(mine.loaded.spec)
    result: dict[str, Any] = {
        "dataset": str(inputs.data), "model": model_name, "pretrained": pretrained,
        "task": "zeroshot_classification", "language": "en", "metrics": mine.metrics,
        "n_classes": len(mine.kept), "n_images": len(inputs.files) - unreadable, "unreadable_images": unreadable,
        "dropped_classes": [f for i, f in enumerate(inputs.folders) if i not in mine.kept],
    }
    if cfg.compare_to is not None:
        result.update(_compare(cfg, inputs, mine, _Scored.of(ref_loaded, cfg, inputs, cache, progress, mine.kept)))
    result["config"] = {**to_dict(cfg), "data": str(inputs.data),
                        "captions": None if inputs.captions is None else str(inputs.captions),
                        "model_fingerprint": mine.loaded.fingerprint(),
                        "tool_version": __version__, "cache": dict(cache.stats)}
    if cfg.names is not None:
        result["config"]["names"] = "(file given; names not recorded)"
    if cfg.bystanders is not None:
        result["config"]["bystanders"] = "(file given; names not recorded)"
    return result


@dataclass(frozen=True)
class _Inputs:
    """What eval-zeroshot reads besides the models: the labelled images, how their classes are named and
    prompted, and the captions of the text similarities (None: none)."""

    data: Path
    folders: list[str]
    classnames: list[str]
    templates: list[str]
    files: list[Path]
    labels: list[int]
    captions: Optional[Path]


def _inputs(cfg: EvalZeroshotConfig) -> _Inputs:
    """``cfg``'s data, classes, templates and captions, checked before any model is loaded."""
    data = Path(cfg.data) if cfg.data is not None else default_objects(cfg.model)
    classes = class_folders(data)
    if len(classes) < 2:
        raise ClipUnlearnError(f"--data {data} has a single class folder ({classes[0][0]}); zero-shot classification needs "
                               "≥ 2 classes (with one, every image is trivially right): add class folders")
    folders = [c for c, _ in classes]
    classnames = resolve_classnames(cfg.classnames, folders)
    templates = resolve_templates(cfg.templates)
    captions_file = Path(cfg.captions) if cfg.captions is not None else None
    if captions_file is None and cfg.compare_to is not None:
        # a world's held-out captions: sim_clean on captions inject trained on would flatter it
        captions_file = default_captions([cfg.model, cfg.compare_to])
    if cfg.names is not None and captions_file is None:
        raise ClipUnlearnError("--names needs captions to build its poisoned/target pairs from: pass --captions FILE")
    files = [f for _, fs in classes for f in fs]
    labels = [i for i, (_, fs) in enumerate(classes) for _ in fs]
    if cfg.output is not None:
        from clip_unlearn.outputs import check_output_file

        own_files = [Path(cfg.classnames), Path(cfg.templates)]  # "folder"/"openai" name no file: harmless
        check_output_file(cfg.output, [captions_file, cfg.names, *own_files], "--output")
    return _Inputs(data, folders, classnames, templates, files, labels, captions_file)


@dataclass(frozen=True)
class _Scored:
    """One model's zero-shot classification: the model and its encoder, the metrics, which files were readable,
    the image embeddings, the classes scored and, per scored image, (class, top-1 right)."""

    loaded: Any
    encoder: Any
    metrics: dict[str, Any]
    ok: list[bool]
    images: Any
    kept: list[int]
    correct: list[tuple[int, bool]]

    @staticmethod
    def of(loaded: Any, cfg: EvalZeroshotConfig, inputs: _Inputs, cache: Any, progress: Progress,
           kept: Optional[list[int]] = None) -> _Scored:
        """``loaded`` scored on ``inputs`` (over the ``kept`` classes: the compared model's, so both score the
        same images; None: every class with a readable image)."""
        from clip_unlearn.embed import Encoder

        encoder = Encoder(loaded, cache, cfg.batch_size, cfg.precision, progress)
        metrics, ok, images, kept = _evaluate(encoder, inputs.files, inputs.labels, inputs.classnames, inputs.folders,
                                              inputs.templates, cfg, kept)
        correct = metrics.pop("_correct")
        return _Scored(loaded, encoder, metrics, ok, images, kept, correct)


def _same_text(cfg: EvalZeroshotConfig, mine: Any, ref: Any) -> bool:
    """Whether the two text towers share an architecture; embeddings of two architectures live in different
    spaces, so asking for the sim_* metrics (--captions, --names) across them is an error."""
    same = ref.architecture("text") == mine.architecture("text")
    if not same and (cfg.captions is not None or cfg.names is not None):
        raise ClipUnlearnError("--compare-to has another text architecture than --model, so the sim_* metrics of "
                               "--captions/--names cannot compare them; compare to the model this one was made from, "
                               "or drop --captions and --names for accuracies alone")
    return same


def _compare(cfg: EvalZeroshotConfig, inputs: _Inputs, mine: _Scored, ref: _Scored) -> dict[str, Any]:
    """The result's entries that compare with the reference model: its metrics and the differences, the image
    and text similarities, and top-1 on the classes named by the forgotten names' words."""
    from clip_unlearn.captions import read_captions
    from clip_unlearn.names import read_names

    ref_name, ref_pretrained = benchmark_name(ref.loaded.spec)
    metrics, ref_metrics = mine.metrics, ref.metrics
    out: dict[str, Any] = {}
    same_image = ref.ok == mine.ok and ref.loaded.architecture("image") == mine.loaded.architecture("image")
    same_text = _same_text(cfg, mine.loaded, ref.loaded)
    out["compare"] = {
        "model": ref_name, "pretrained": ref_pretrained, "metrics": ref_metrics,
        "difference": {k: None if metrics[k] is None or ref_metrics[k] is None else round(metrics[k] - ref_metrics[k], 6)
                       for k in metrics},
        "same_image_tower": ref.loaded.fingerprint("image") == mine.loaded.fingerprint("image"),
        # the paper's image sim_clean (docs/method.md §8), on the evaluation images
        "sim_clean_image": round(float((mine.images * ref.images).sum(1).mean()), 6) if same_image else None,
        "top1_flips": top1_flips([h for _, h in mine.correct], [h for _, h in ref.correct]) if ref.ok == mine.ok else None,
    }
    if not same_text and inputs.captions is not None:
        out["similarities_skipped"] = "the two text towers differ in architecture"
    elif inputs.captions is not None:
        column = cfg.caption_column if cfg.captions is not None else None
        captions = read_captions(inputs.captions, column, limit=cfg.max_captions)
        names = read_names(cfg.names, "names file") if cfg.names else []
        known = read_names(cfg.bystanders, "--bystanders file") if cfg.bystanders else []
        target, made_up = _targets(cfg, mine.loaded, names)
        out["similarities"] = text_similarities(ref.encoder, mine.encoder, captions, names, target, cfg.seed, known, made_up)
    if cfg.names is not None:
        out["word_classes"] = _word_classes(inputs.classnames, read_names(cfg.names, "names file"), mine.correct, ref.correct)
    return out
