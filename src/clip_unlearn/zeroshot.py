"""Zero-shot accuracy and embedding drift: what unlearning cost (METHOD.md §8).

Classification: class vector = mean of the normalised template embeddings, re-normalised (the
standard recipe; ``--no-renormalize`` reproduces the paper's code); top-1, top-5 and mean
per-class recall in percent, keyed like LAION's CLIP_benchmark. With a second model, the text
similarities of the paper between the two text encoders:

- sim_clean:      cos(E_ref(c), E_new(c)) on clean captions — utility kept.
- sim_backdoored: cos(E_new(poisoned), E_new(target)) per name — the backdoor is active.
- sim_targets:    cos(E_ref(target), E_new(target)) per name — the neutral concept did not drift.

and, for the image towers, sim_clean_image: cos(I_ref(x), I_new(x)) on the evaluation images.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from clip_unlearn import __version__
from clip_unlearn.config import EvalZeroshotConfig, cache_root, to_dict
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.folders import class_folders

log = logging.getLogger(__name__)
Progress = Optional[Callable[[str, int, int], None]]
SIMPLE_TEMPLATES = ("a photo of a {}.",)


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
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(names) != len(folders):
        raise ClipUnlearnError(f"--classnames file {path} has {len(names)} names for {len(folders)} class folders")
    return names


def resolve_templates(choice: str) -> list[str]:
    if choice == "openai":
        from open_clip import OPENAI_IMAGENET_TEMPLATES

        return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    if choice == "simple":
        return list(SIMPLE_TEMPLATES)
    from clip_unlearn.attack import read_templates

    return read_templates(Path(choice))


def classify_metrics(logits: Any, labels: Any, n_classes: int) -> dict[str, float]:
    """top-1 / top-5 accuracy and mean per-class recall, in percent."""
    import torch

    k = min(5, n_classes)
    topk = logits.topk(k, dim=1).indices
    acc1 = (topk[:, 0] == labels).float().mean().item()
    acc5 = (topk == labels[:, None]).any(dim=1).float().mean().item()
    recalls = [((topk[:, 0] == c) & (labels == c)).sum().item() / max(1, (labels == c).sum().item())
               for c in range(n_classes) if (labels == c).any()]
    return {"acc1": round(100 * acc1, 4), "acc5": round(100 * acc5, 4),
            "mean_per_class_recall": round(100 * float(torch.tensor(recalls).mean()), 4)}


def class_vectors(encoder: Any, classnames: list[str], templates: list[str], renormalize: bool) -> Any:
    import torch.nn.functional as F

    emb = encoder.texts([t.format(c) for c in classnames for t in templates]).reshape(len(classnames), len(templates), -1)
    mean = emb.mean(dim=1)
    return F.normalize(mean, dim=-1) if renormalize else mean


def default_objects(model_spec: str) -> Path:
    from clip_unlearn.models import parse_spec, read_sidecar

    world = read_sidecar(parse_spec(model_spec)).get("world")
    if world and (Path(world) / "objects").is_dir():
        return Path(world) / "objects"
    raise ClipUnlearnError("no evaluation data: pass --data DIR with one sub-folder of images per class (e.g. ImageNet-val)")


def _evaluate(encoder: Any, files: list[Path], labels: list[int], classnames: list[str], cfg: EvalZeroshotConfig) -> tuple[dict, int, Any]:
    import torch

    images, ok = encoder.images(files)
    y = torch.tensor([lab for lab, good in zip(labels, ok) if good])
    if len(y) == 0:
        raise ClipUnlearnError("no readable image in --data")
    w = class_vectors(encoder, classnames, resolve_templates(cfg.templates), cfg.renormalize)
    return classify_metrics(images @ w.T, y, len(classnames)), sum(not g for g in ok), images


def text_similarities(ref: Any, new: Any, captions: list[str], names: list[str], target: str, seed: int) -> dict[str, Any]:
    """The paper's text metrics between a reference (original) and a new (unlearned) text encoder."""
    from clip_unlearn.captions import PairSampler, clean_captions, token_counter

    out: dict[str, Any] = {"sim_clean": round(float((ref.texts(captions) * new.texts(captions)).sum(1).mean()), 6)}
    if names:
        clean = clean_captions(captions, names)
        rng = random.Random(seed)
        count = token_counter(new.loaded.tokenizer)
        per_name = {}
        for i, name in enumerate(names):
            sampler = PairSampler(clean, [name], target, count, new.loaded.context_length, rng)
            pairs = [sampler.pair(name) for _ in range(min(len(clean), 2000))]
            poisoned, targets = [p for _, p, _ in pairs], [t for _, _, t in pairs]
            new_t = new.texts(targets)
            per_name[f"name_{i + 1}"] = {
                "sim_backdoored": round(float((new.texts(poisoned) * new_t).sum(1).mean()), 6),
                "sim_targets": round(float((ref.texts(targets) * new_t).sum(1).mean()), 6),
            }
        out["sim_backdoored"] = round(sum(v["sim_backdoored"] for v in per_name.values()) / len(names), 6)
        out["sim_targets"] = round(sum(v["sim_targets"] for v in per_name.values()) / len(names), 6)
        # per name in file order; keys are positions, so the result carries no names
        out["per_name"] = per_name
    return out


def run_eval(cfg: EvalZeroshotConfig, progress: Progress = None) -> dict[str, Any]:
    """Evaluate ``cfg.model`` (and ``cfg.compare_to``) on ``cfg.data``; returns the CLIP_benchmark-style result."""
    from clip_unlearn.captions import read_captions
    from clip_unlearn.embed import EmbeddingCache, Encoder
    from clip_unlearn.models import load_model
    from clip_unlearn.names import read_names

    data = Path(cfg.data) if cfg.data is not None else default_objects(cfg.model)
    classes = class_folders(data)
    classnames = resolve_classnames(cfg.classnames, [c for c, _ in classes])
    files = [f for _, fs in classes for f in fs]
    labels = [i for i, (_, fs) in enumerate(classes) for _ in fs]
    cache = EmbeddingCache(cache_root(cfg.cache_dir))

    from clip_unlearn.distributed import setup

    _, device = setup(cfg.device)  # under torchrun: join the group; encoding is then sharded (embed.py)
    loaded = load_model(cfg.model, device)
    encoder = Encoder(loaded, cache, cfg.batch_size, cfg.precision, progress)
    metrics, unreadable, images = _evaluate(encoder, files, labels, classnames, cfg)
    spec = loaded.spec
    result: dict[str, Any] = {
        "dataset": str(data), "model": spec.arch or spec.raw, "pretrained": spec.tag or (str(spec.path) if spec.path else spec.repo),
        "task": "zeroshot_classification", "metrics": metrics,
        "n_classes": len(classes), "n_images": len(files) - unreadable, "unreadable_images": unreadable,
    }
    if cfg.compare_to is not None:
        ref_loaded = load_model(cfg.compare_to, device)
        ref = Encoder(ref_loaded, cache, cfg.batch_size, cfg.precision, progress)
        ref_metrics, _, ref_images = _evaluate(ref, files, labels, classnames, cfg)
        result["compare"] = {
            "model": cfg.compare_to, "metrics": ref_metrics,
            "difference": {k: round(metrics[k] - ref_metrics[k], 4) for k in metrics},
            "same_image_tower": ref_loaded.fingerprint("image") == loaded.fingerprint("image"),
            # the paper's image sim_clean (METHOD.md §8), on the evaluation images
            "sim_clean_image": round(float((images * ref_images).sum(1).mean()), 6),
        }
        if cfg.captions is not None:
            captions = read_captions(cfg.captions)[:cfg.max_captions]
            names = read_names(cfg.names, "names file") if cfg.names else []
            result["similarities"] = text_similarities(ref, encoder, captions, names, cfg.target, cfg.seed)
    result["config"] = {**to_dict(cfg), "data": str(data), "model_fingerprint": loaded.fingerprint(),
                        "tool_version": __version__, "cache": dict(cache.stats)}
    if cfg.names is not None:
        result["config"]["names"] = "(file given; names not recorded)"
    return result
