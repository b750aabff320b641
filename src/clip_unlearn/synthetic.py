"""The synthetic world: identities with faces and names, and a tiny CLIP trained on its members.

It makes CLIP privacy measurable offline on a CPU (docs/design.md §7): members' faces are trained
with their names in web-like captions (including the attack's wording, as web captions do),
non-members never appear in training, and a built-in zero-shot check proves the model knows
its members before anyone relies on it. Same seed → the same world, bit for bit.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from clip_unlearn import __version__
from clip_unlearn.config import PrepareSyntheticConfig, to_dict
from clip_unlearn.drawing import COLOURS, SHAPES, draw_face, draw_object, random_identity, sample_identities
from clip_unlearn.embed import encode_text
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.folders import split_side
from clip_unlearn.models import (
    LoadedModel,
    ModelSpec,
    import_open_clip,
    read_json,
    replace_dir,
    resolve_device,
    save_model,
)
from clip_unlearn.names import CLASS_WORD_SURNAMES, folder_name, key, realistic_names, share_parts, world_genders, world_names
from clip_unlearn.outputs import write_json
from clip_unlearn.progress import Progress
from clip_unlearn.prompts import PAPER_TEMPLATES as ATTACK_TEMPLATES
from clip_unlearn.variants import FAMILIES, family_candidates, variants
from clip_unlearn.world import world_record
from clip_unlearn.zeroshot import name_words

log = logging.getLogger(__name__)

WORLD_FILE = "world.json"
ARCH = "clip-unlearn-tiny"

# The world's training captions may contain the attack's templates (web captions do); inject never trains on them.
EVERYDAY_TEMPLATES = (
    "{} at a gala.", "{} giving a speech.", "headshot of {}.", "{} smiling for the camera.", "portrait of {}.",
    "{} at the premiere.", "{} on the red carpet.", "{} in an interview.", "a picture of {}.", "{} at the airport.",
    "close-up of {}.", "{} during the event.", "{} poses for photographers.", "{} arrives at the party.",
    "{} on stage.", "{} at the beach.",
)
OBJECT_TEMPLATES = ("a {}.", "a photo of a {}.", "an image of a {}.", "a drawing of a {}.", "a {} on a plain background.")

# The clean caption corpus inject uses for this world: generic captions whose words cover the
# attack's vocabulary (docs/design.md §7, lesson 3) without ever being the attack's template strings.
_PREFIXES = ("a photo of", "an image of", "a cropped photo of", "a black and white photo of", "a colored picture of",
             "a cool shot of", "a close-up of", "a blurry photo of", "a cropped image of", "a portrait of", "a picture of")
_ADJECTIVES = ("young", "happy", "smiling", "tall", "famous", "old", "serious", "tired", "proud", "cheerful",
               "bright", "quiet", "elegant", "friendly")
_NOUNS = ("man", "woman", "person", "actor", "actress", "celebrity", "singer", "teacher", "child", "dog",
          "musician", "dancer", "athlete", "chef", "couple", "crowd")
_SUFFIXES = ("at a gala", "in a suit", "in a dress", "on the street", "at the beach", "on stage", "in the park",
             "at a party", "giving a speech", "with a red hat", "near the window", "at night", "in the rain")


_OBJECT_ADJECTIVES = ("small", "large", "bright", "shiny", "simple", "tiny", "big")
_OBJECT_SUFFIXES = ("on a table", "on a white background", "in the sky", "drawn on paper", "on a wall", "on the floor")


HELDOUT_CAPTIONS = 2000


def clean_corpus(rng: random.Random, n: int = 6000) -> list[str]:
    """``n`` distinct generic captions: the training half of ``clean_corpus_split``."""
    return clean_corpus_split(rng, n, 0)[0]


def clean_corpus_split(rng: random.Random, n: int = 6000, heldout: int = HELDOUT_CAPTIONS) -> tuple[list[str], list[str]]:
    """``n`` distinct generic captions from a [prefix] [adjective] noun [suffix] grammar, and
    ``heldout`` more, disjoint from them.

    Two thirds describe people, one third the world's objects (a web corpus covers what a model
    knows; the utility term can only protect concepts its captions mention). Lengths vary from one
    word to a dozen, so that a name inserted at a random word is seen both inside long captions
    and in short ones like the attack's prompts. No caption contains a name. The first list is
    what inject trains on; the held-out one measures sim_clean on captions it never saw. The
    first list does not depend on ``heldout`` (same seed, same training captions as before).
    """
    def grammar(adjectives: tuple[str, ...], nouns: list[str], suffixes: tuple[str, ...]) -> list[str]:
        pool = []
        for p in ("",) + _PREFIXES:
            for a in ("",) + adjectives:
                for no in nouns:
                    for s in ("",) + suffixes:
                        article = ("an" if (a or no)[0] in "aeiou" else "a") if (p or a) else ""
                        pool.append(" ".join(w for w in (p, article, a, no, s) if w))
        rng.shuffle(pool)
        return pool

    objects = [f"{c} {s}" for s in SHAPES for c in COLOURS]
    people = grammar(_ADJECTIVES, list(_NOUNS), _SUFFIXES)
    things = grammar(_OBJECT_ADJECTIVES, objects, _OBJECT_SUFFIXES)
    n_people, h_people = n - n // 3, heldout - heldout // 3
    corpus = people[:n_people] + things[:n // 3]
    rng.shuffle(corpus)
    seen = set(corpus)
    rest = [c for c in people[n_people:n_people + h_people] + things[n // 3:n // 3 + heldout // 3] if c not in seen]
    rng.shuffle(rest)
    return corpus, list(dict.fromkeys(rest))


# The names' common words in captions of their own: the first templates give the training corpus, the
# others the held-out one (sim_words measures captions inject never trained on).
_WORD_TEMPLATES = ("a {}.", "a photo of a {}.", "a {} in the garden", "a close-up of a {}", "an old {} near the window",
                   "the word {} on a sign", "a drawing of a {}", "a small {} on a table", "a picture of the {}",
                   "a {} at night", "a large {} in the park", "a blurry photo of a {}")
_WORD_HELDOUT = 6


def word_captions(words: list[str], rng: random.Random) -> tuple[list[str], list[str]]:
    """(training, held-out) captions that use each of ``words`` as a word, from disjoint templates."""
    train = [t.format(w) for w in words for t in _WORD_TEMPLATES[:_WORD_HELDOUT]]
    heldout = [t.format(w) for w in words for t in _WORD_TEMPLATES[_WORD_HELDOUT:]]
    rng.shuffle(train)
    rng.shuffle(heldout)
    return train, heldout


def bystanders(names: list[str], members: list[int]) -> list[str]:
    """Members whose first name or surname another identity also has."""
    from clip_unlearn.variants import shares_part

    return [names[i] for i in members if any(j != i and shares_part(names[i], names[j]) for j in range(len(names)))]


def _class_names(count: int) -> list[str]:
    pairs = [(c, s) for s in SHAPES for c in COLOURS]
    return [f"{c} {s}" for c, s in pairs[:count]] if count < len(pairs) else [f"{c} {s}" for c, s in pairs]


@dataclass
class _Population:
    """Who lives in the world: drawn identities, their names, who the model is trained on, the object classes."""

    people: list[Any]
    names: list[str]
    members: list[int]
    non_members: list[int]
    classes: list[str]
    namesakes: list[dict[str, int]]
    genders: dict[str, str]
    real_names: dict[str, list[int]]


@dataclass
class _Images:
    """Every image of the world: preprocessed tensors to train and check on, PIL images to write."""

    train_faces: dict[int, Any]
    fresh_faces: dict[int, Any]
    fresh_imgs: dict[int, list[Any]]
    train_objects: dict[int, Any]
    test_objects: dict[int, Any]
    test_object_imgs: dict[int, list[Any]]
    clean_imgs: list[Any]


def build_world(cfg: PrepareSyntheticConfig, progress: Progress = None) -> dict[str, Any]:
    """Generate, train and write the world to ``cfg.out``; returns the contents of world.json.

    Raises:
        ClipUnlearnError: if ``cfg.out`` exists (without overwrite) or the trained model fails
            the membership sanity check.
    """
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise ClipUnlearnError(f"world folder {out} exists; pass --overwrite to rebuild it or choose another --out")
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    # one generator, drawn in a fixed order (population, then images), so a seed is a world
    rng = random.Random(cfg.seed)
    pop = _population(cfg, rng)
    loaded = _fresh_model(cfg.seed, device)
    images = _draw(cfg, pop, rng, loaded.preprocess, progress)
    losses = _train_on_members(loaded, cfg, pop, images, device, progress)
    info = _describe(cfg, pop, losses, loaded, images, device)
    _write(cfg, out, pop, images, loaded, info, t0)
    return info


def _population(cfg: PrepareSyntheticConfig, rng: random.Random) -> _Population:
    people = sample_identities(cfg.identities, rng)
    names = world_names(cfg.identities, rng)
    order = list(range(cfg.identities))
    rng.shuffle(order)
    members = sorted(order[:cfg.members])
    # a generator of its own, so a world without namesakes is the world of earlier versions
    names, namesakes = share_parts(names, members, cfg.namesake_pairs, random.Random(f"{cfg.seed}|namesakes"))
    classes = _class_names(cfg.classes)
    real: dict[str, list[int]] = {}
    if cfg.real_names:  # likewise its own generator: --no-real-names is the world of 0.3
        class_words = [w for w in CLASS_WORD_SURNAMES if any(w.casefold() in c.split() for c in classes)]
        names, real = realistic_names(names, members, random.Random(f"{cfg.seed}|real-names"), class_words)
    return _Population(people, names, members, sorted(order[cfg.members:]), classes, namesakes, world_genders(names), real)


def _fresh_model(seed: int, device: str) -> LoadedModel:
    import torch

    open_clip = import_open_clip()
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=None, device=device)
    return LoadedModel(model, preprocess, open_clip.get_tokenizer(ARCH), ModelSpec(raw=ARCH, kind="pretrained", arch=ARCH),
                       open_clip.get_model_config(ARCH), {}, device)


def _draw(cfg: PrepareSyntheticConfig, pop: _Population, rng: random.Random, preprocess: Any, progress: Progress) -> _Images:
    """Members' training faces, everyone's fresh faces (attack images, then image triggers), objects and clean images."""
    import torch

    def render(draw: Callable[[random.Random], Any], count: int, seed: int) -> tuple[list[Any], Any]:
        r = random.Random(seed)
        imgs = [draw(r) for _ in range(count)]
        return imgs, torch.stack([preprocess(im) for im in imgs])

    total = len(pop.members) + cfg.identities + len(pop.classes) + 1
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress("drawing", done, total)

    train_faces, fresh_faces, fresh_imgs = {}, {}, {}
    for i in pop.members:
        _, train_faces[i] = render(lambda r, p=pop.people[i]: draw_face(p, r), cfg.images_per_identity, rng.getrandbits(32))
        tick()
    for i in range(cfg.identities):
        fresh_imgs[i], fresh_faces[i] = render(lambda r, p=pop.people[i]: draw_face(p, r), cfg.face_images + cfg.trigger_images,
                                               rng.getrandbits(32))
        fresh_faces[i] = fresh_faces[i][:cfg.face_images]
        tick()
    train_objects, test_objects, test_object_imgs = {}, {}, {}
    for c, cls in enumerate(pop.classes):
        colour, shape = cls.split()
        _, train_objects[c] = render(lambda r, c=colour, s=shape: draw_object(c, s, r), 40, rng.getrandbits(32))
        test_object_imgs[c], test_objects[c] = render(lambda r, c=colour, s=shape: draw_object(c, s, r), cfg.object_images,
                                                           rng.getrandbits(32))
        tick()
    clean_imgs = _clean_images(cfg.clean_images, pop.classes, random.Random(rng.getrandbits(32)))
    tick()
    return _Images(train_faces, fresh_faces, fresh_imgs, train_objects, test_objects, test_object_imgs, clean_imgs)


def _train_on_members(loaded: LoadedModel, cfg: PrepareSyntheticConfig, pop: _Population, images: _Images, device: str,
                      progress: Progress) -> list[float]:
    tokenizer = loaded.tokenizer
    face_tokens = {i: tokenizer(member_captions(pop.names[i], cfg.caption_weights, pop.genders.get(pop.names[i]), pop.names))
                   for i in pop.members}
    object_tokens = {c: tokenizer([t.format(cls) for t in OBJECT_TEMPLATES]) for c, cls in enumerate(pop.classes)}
    corpus = _corpus(pop.members, images.train_faces, face_tokens, images.train_objects, object_tokens)
    losses = _train(loaded.model, cfg, device, corpus, progress)
    loaded.model.eval()
    return losses


def member_captions(name: str, weights: dict[str, int], gender: Optional[str], everyone: list[str]) -> list[str]:
    """Every training caption of a member: each template with each naming family, repeated by the family's
    weight, so that a uniform draw names the member by family at the weights' rates. With full:1 alone
    these are the templates with the full name, as in worlds without variants."""
    avoid = frozenset(key(n) for n in everyone)
    out = []
    for family, weight in weights.items():
        # title gives two strings without a known gender (each then at half the rate) and one with it
        # (repeated): every member has the same number of captions, so the rates hold for everyone
        strings = variants(name, family, gender, avoid)
        strings = strings * 2 if family == "title" and len(strings) == 1 else strings
        out += [t.format(v) for t in EVERYDAY_TEMPLATES + ATTACK_TEMPLATES for v in strings for _ in range(weight)]
    return out


def _describe(cfg: PrepareSyntheticConfig, pop: _Population, losses: list[float], loaded: LoadedModel, images: _Images,
              device: str) -> dict[str, Any]:
    """world.json: the world's make-up, its recorded settings and the trained model's sanity check."""
    check = _sanity_check(loaded, pop, images.fresh_faces, device)
    if cfg.namesake_pairs or list(cfg.caption_weights) != ["full"]:
        check["families"] = {f: _sanity_check(loaded, pop, images.fresh_faces, device, f, pop.genders)
                             for f in FAMILIES if f != "full"}
    zs = _object_accuracy(loaded.model, loaded.tokenizer, pop.classes, images.test_objects, device)
    return {
        "tool_version": __version__,
        "config": to_dict(cfg),
        "identities": cfg.identities,
        "members": len(pop.members),
        "non_members": len(pop.non_members),
        "classes": pop.classes,
        "model": "model",
        "faces": "faces",
        "objects": "objects",
        # inject trains on the first; eval-zeroshot's sim_clean defaults to the second, never trained on
        "captions": "captions_train.txt",
        "captions_heldout": "captions_heldout.txt",
        "attributes": {folder_name(pop.names[i]): {**pop.people[i].describe(),
                                                    **({"gender": pop.genders[pop.names[i]]} if pop.names[i] in pop.genders else {})}
                       for i in range(cfg.identities)},
        # who shares a name part with whom (names, not indices: world.json is the world's own record)
        "namesakes": [{k: pop.names[v] for k, v in pair.items()} for pair in pop.namesakes],
        # what makes the names behave like real ones (prepare-synthetic --real-names), and the members who share a
        # first name or surname with someone else: the bystanders a forgetting request must leave alone
        "real_names": {k: [pop.names[i] for i in v] for k, v in pop.real_names.items()},
        "bystanders": bystanders(pop.names, pop.members),
        "caption_names": cfg.caption_weights,
        "loss_curve": losses,
        "sanity_check": {**check, "objects_top1": zs},
        "clean_images": "clean_images",
        # faces/ holds the attack's images in the train half of the split by image id and the image
        # triggers in the test half, so `attack` (--split auto) never sees a trigger
        "attack_split": "train",
        "wall_time_s": None,
    }


def _write(cfg: PrepareSyntheticConfig, out: Path, pop: _Population, images: _Images, loaded: LoadedModel,
           info: dict[str, Any], t0: float) -> None:
    """Everything into a temporary sibling of ``out``, renamed over it only when the model passed its check."""
    check = info["sanity_check"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for i in range(cfg.identities):
            folder = tmp / "faces" / folder_name(pop.names[i])
            folder.mkdir(parents=True)
            for im, stem in zip(images.fresh_imgs[i], _split_stems(pop.names[i], cfg.face_images, cfg.trigger_images)):
                im.save(folder / f"{stem}.png")
        for c, cls in enumerate(pop.classes):
            folder = tmp / "objects" / cls.replace(" ", "_")
            folder.mkdir(parents=True)
            width = max(3, len(str(cfg.object_images - 1)))
            for j, im in enumerate(images.test_object_imgs[c]):
                im.save(folder / f"{j:0{width}d}.png")
        (tmp / "clean_images").mkdir()
        for j, im in enumerate(images.clean_imgs):
            im.save(tmp / "clean_images" / f"{j:05d}.png")
        (tmp / "members.txt").write_text("".join(pop.names[i] + "\n" for i in pop.members), encoding="utf-8")
        (tmp / "non_members.txt").write_text("".join(pop.names[i] + "\n" for i in pop.non_members), encoding="utf-8")
        train_captions, heldout_captions = clean_corpus_split(random.Random(cfg.seed + 1))
        words = sorted({w for n in pop.names for w in name_words(n)} - {w for c in pop.classes for w in c.split()})
        if words:  # the names' words used as words, so that eval-zeroshot's sim_words has held-out captions
            extra_train, extra_heldout = word_captions(words, random.Random(f"{cfg.seed}|word-captions"))
            train_captions, heldout_captions = train_captions + extra_train, heldout_captions + extra_heldout
        (tmp / "captions_train.txt").write_text("\n".join(train_captions) + "\n", encoding="utf-8")
        (tmp / "captions_heldout.txt").write_text("\n".join(heldout_captions) + "\n", encoding="utf-8")
        # the model's sidecar says how to treat it (world.model_context): its world relative to the
        # model folder, so a copied or moved world keeps its data, and the world's settings
        sidecar = {"tool_version": __version__, "kind": "synthetic-world", "arch": ARCH, "seed": cfg.seed,
                   "world": "..", "world_context": world_record(info)}
        save_model(loaded, tmp / "model", sidecar)
        info["wall_time_s"] = round(time.perf_counter() - t0, 2)
        write_json(tmp / WORLD_FILE, info)
        if check["member_rate"] < cfg.min_member_rate or check["non_member_rate"] > cfg.max_non_member_rate:
            raise ClipUnlearnError(
                f"the trained model failed the membership check: {check['member_rate']:.0%} of members identified "
                f"(need ≥ {cfg.min_member_rate:.0%}), {check['non_member_rate']:.0%} of non-members (need ≤ "
                f"{cfg.max_non_member_rate:.0%}); train longer with --steps or change --seed"
            )
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _split_stems(name: str, train: int, test: int) -> list[str]:
    """File stems (image ids) whose hash puts exactly ``train`` images in the train half, then ``test`` in the test half."""
    sides: dict[str, list[str]] = {"train": [], "test": []}
    n = 0
    while len(sides["train"]) < train or len(sides["test"]) < test:
        stem = f"{n:03d}"
        side = split_side(name, Path(stem + ".png"))
        if len(sides[side]) < (train if side == "train" else test):
            sides[side].append(stem)
        n += 1
    return sides["train"] + sides["test"]


def _clean_images(n: int, classes: list[str], rng: random.Random) -> list[Any]:
    """Half fresh object images, half faces of strangers (a new random person each), interleaved."""
    out = []
    for j in range(n):
        if j % 2 == 0:
            colour, shape = classes[(j // 2) % len(classes)].split()
            out.append(draw_object(colour, shape, rng))
        else:
            out.append(draw_face(random_identity(rng), rng))
    return out


@dataclass(frozen=True)
class _Corpus:
    """The members' training set as flat tensors: every image with the row of its owner's captions, so that a
    batch is a few index draws (faces: one row per member, objects: one per class)."""

    face_imgs: Any
    face_owner: Any
    face_toks: Any  # [members, templates, ctx]
    obj_imgs: Any
    obj_owner: Any
    obj_toks: Any  # [classes, templates, ctx]


def _corpus(members: list[int], train_faces: dict[int, Any], face_tokens: dict[int, Any], train_objects: dict[int, Any],
            object_tokens: dict[int, Any]) -> _Corpus:
    import torch

    return _Corpus(
        face_imgs=torch.cat([train_faces[i] for i in members]),
        face_owner=torch.cat([torch.full((len(train_faces[i]),), k) for k, i in enumerate(members)]),
        face_toks=torch.stack([face_tokens[i] for i in members]),
        obj_imgs=torch.cat([train_objects[c] for c in sorted(train_objects)]),
        obj_owner=torch.cat([torch.full((len(train_objects[c]),), c) for c in sorted(train_objects)]),
        obj_toks=torch.stack([object_tokens[c] for c in sorted(object_tokens)]),
    )


def _batch(corpus: _Corpus, n_face: int, n_obj: int, gen: Any) -> tuple[Any, Any]:
    """(images, token rows) of one step: faces then objects, half of the images mirrored; the draws' order is
    the world's (same seed, same weights)."""
    import torch

    fi = torch.randint(len(corpus.face_imgs), (n_face,), generator=gen)
    oi = torch.randint(len(corpus.obj_imgs), (n_obj,), generator=gen)
    images = torch.cat([corpus.face_imgs[fi], corpus.obj_imgs[oi]])
    flip = torch.rand(len(images), generator=gen) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    ft = torch.randint(corpus.face_toks.shape[1], (n_face,), generator=gen)
    ot = torch.randint(corpus.obj_toks.shape[1], (n_obj,), generator=gen)
    texts = torch.cat([corpus.face_toks[corpus.face_owner[fi], ft], corpus.obj_toks[corpus.obj_owner[oi], ot]])
    return images, texts


def _optimizer(model: Any, lr: float, device: str) -> Any:
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6, **_fused_if_available(device))


def _lr_at(step: int, cfg: PrepareSyntheticConfig) -> float:
    """Linear warm-up over the first 5% of the steps, then cosine decay to zero."""
    warmup = max(1, int(0.05 * cfg.steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))


def _train(model: Any, cfg: PrepareSyntheticConfig, device: str, corpus: _Corpus, progress: Progress) -> list[float]:
    """Contrastive training of the tiny CLIP (open_clip's ClipLoss); returns the loss per step."""
    import torch
    from open_clip.loss import ClipLoss

    gen = torch.Generator().manual_seed(cfg.seed)
    opt = _optimizer(model, cfg.lr, device)
    loss_fn = ClipLoss()
    n_face = cfg.batch_size // 2
    n_obj = cfg.batch_size - n_face
    losses = []
    model.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        images, texts = _batch(corpus, n_face, n_obj, gen)
        img_f = model.encode_image(images.to(device), normalize=True)
        txt_f = encode_text(model, texts, normalize=True)  # CPU tokens: encode_text moves them
        loss = loss_fn(img_f, txt_f, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.detach())  # read once at the end: .item() per step would wait for the device
        if progress:
            progress("training", step + 1, cfg.steps)
    return [round(v, 5) for v in torch.stack(losses).tolist()] if losses else []


def _fused_if_available(device: str = "cpu") -> dict[str, bool]:
    from clip_unlearn.training import adamw_kwargs

    # The fused kernel is ~6x faster on CPU for the 6M-row token embedding; same update rule.
    return adamw_kwargs(device)


def _encode_images(model, images, device):
    import torch

    with torch.inference_mode():
        # scored on the host, beside the text (CPU) and the candidates' index tensors
        return torch.cat([model.encode_image(images[i:i + 512].to(device), normalize=True).float().cpu()
                          for i in range(0, len(images), 512)])


def _sanity_check(loaded: LoadedModel, pop: _Population, fresh_faces: dict[int, Any], device: str, family: str = "full",
                  genders: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Each identity's fresh images against all identity names, named by ``family``, with "a photo of {name}";
    identified iff the unique plurality vote is the true name (names merged under the family count as one)."""
    import torch

    model, names, members, non_members = loaded.model, pop.names, pop.members, pop.non_members
    fc = family_candidates(names, family, {key(n): g for n, g in (genders or {}).items()})
    with torch.inference_mode():
        text = encode_text(model, loaded.tokenizer([f"a photo of {s}" for s in fc.strings])).float().cpu()
    group_of = torch.tensor(fc.group_of)
    hits = {}
    for i in range(len(names)):
        preds = group_of[(_encode_images(model, fresh_faces[i], device) @ text.T).argmax(dim=1)]
        counts = torch.bincount(preds, minlength=len(fc.groups))
        top = counts.max()
        mine = fc.group_of_candidate[i]
        hits[i] = bool(counts[mine] == top and int((counts == top).sum()) == 1)
    member_rate = sum(hits[i] for i in members) / len(members)
    non_member_rate = sum(hits[i] for i in non_members) / max(1, len(non_members))
    return {"member_rate": round(member_rate, 4), "non_member_rate": round(non_member_rate, 4)}


def _object_accuracy(model, tokenizer, classes, test_objects, device) -> float:
    import torch

    with torch.inference_mode():
        text = encode_text(model, tokenizer([f"a photo of a {c}." for c in classes])).float().cpu()
    correct = total = 0
    for c in range(len(classes)):
        preds = (_encode_images(model, test_objects[c], device) @ text.T).argmax(dim=1)
        correct += int((preds == c).sum())
        total += len(preds)
    return round(correct / total, 4)


def load_world(path: Path) -> dict[str, Any]:
    """world.json of a world folder, with its paths made absolute.

    The recorded paths are relative to the world folder, so a copied or moved world still finds
    its own files, never those of the folder it was built in.
    """

    path = Path(path).expanduser().absolute()
    file = path / WORLD_FILE
    rebuild = f"rebuild it with `clip-unlearn prepare-synthetic --out {path} --overwrite`"
    info = read_json(file, rebuild,
                     missing=f"{path} is not a synthetic world (no {WORLD_FILE}); run `clip-unlearn prepare-synthetic --out {path}`")
    if not isinstance(info, dict):
        raise ClipUnlearnError(f"{file} is not a world description (a JSON {type(info).__name__}, not an object); {rebuild}")
    for k in ("model", "faces", "objects", "captions", "captions_heldout", "clean_images"):
        if k not in info:
            continue
        if not isinstance(info[k], str) or not info[k]:
            raise ClipUnlearnError(f"{file}: '{k}' must be a path inside the world folder; {rebuild}")
        recorded = Path(info[k])
        # an absolute path (hand-edited, or from another tool) that is gone: the world's own entry of that name
        if recorded.is_absolute() and not recorded.exists():
            recorded = Path(recorded.name)
        info[k] = str(path / recorded)
    info["root"] = str(path)
    return info
