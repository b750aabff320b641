"""One frozen dataclass per command: the single source of truth for defaults and help.

The CLI builds each command's options from these fields (flag = ``--field-name``, help from
the field's metadata, default from the field), so ``--help`` always shows every field with
its default. Validation lives in ``__post_init__`` and names the flag it rejects.
The paper's training defaults live in recipes.py, which this module reads for --help.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from clip_unlearn.errors import ConfigError
from clip_unlearn.errors import check as _check
from clip_unlearn.recipes import HYPER, StageHyper, paper_default, stage_hyper
from clip_unlearn.variants import FAMILIES, parse_families

# The paper's weights (laion400m_e32) were trained with QuickGELU; docs/method.md §1 explains why the
# paper's own `ViT-B-32` pairing is subtly mis-specified. `ViT-B-32:laion400m_e32` reproduces it exactly.
DEFAULT_MODEL = "ViT-B-32-quickgelu:laion400m_e32"
DEVICES = ("auto", "cpu", "cuda", "mps")


def opt(default: Any, help: str, *flags: str, **extra: Any) -> Any:
    """A dataclass field carrying its CLI help text and optional extra flag spellings."""
    return field(default=default, metadata={"help": help, "flags": flags, **extra})


def cache_root(cache_dir: Optional[Path] = None) -> Path:
    """The state dir: ``--cache-dir`` > ``$CLIP_UNLEARN_HOME`` > the platform's user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CLIP_UNLEARN_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("clip-unlearn"))


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as JSON-ready data (saved next to every command's outputs)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, (list, tuple)):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        out[f.name] = value
    return out


@dataclass(frozen=True)
class DeviceOptions:
    """Options shared by every command that runs a model (docs/design.md §2)."""

    device: str = opt("auto", "Device: auto (cuda if available), cpu, cuda, cuda:N or mps.")
    seed: int = opt(42, "Seed for every random choice of this command.")

    def __post_init__(self) -> None:
        d = self.device
        _check(d in DEVICES or (d.startswith("cuda:") and d[5:].isdigit()), "device", "must be auto, cpu, cuda, cuda:N or mps", d)
        _check(self.seed >= 0, "seed", "must be ≥ 0", self.seed)


@dataclass(frozen=True)
class RuntimeOptions(DeviceOptions):
    """... plus the cache of commands that encode with a model."""

    cache_dir: Optional[Path] = opt(
        None, "Cache folder for embeddings and derived data [default: $CLIP_UNLEARN_HOME or the user cache dir]."
    )


# How often a web caption names a person each way (full name most, then surname, title + surname, lower
# case, initial + surname, first name, a typo): the world's training captions follow these weights.
CAPTION_NAMES = "full:15,surname:3,title:2,lower:2,initial:2,first:1,typo:1"


@dataclass(frozen=True)
class PrepareSyntheticConfig(DeviceOptions):
    """Build the synthetic world: identities with faces and names, and a tiny CLIP trained on the members."""

    out: Path = opt(Path("synthetic-world"), "Folder to write the world to.")
    identities: int = opt(48, "Number of identities (members + non-members).")
    images_per_identity: int = opt(30, "Training images per member identity.")
    face_images: int = opt(30, "Fresh face images per identity for the attack: the train half of faces/ (never trained on).")
    trigger_images: int = opt(60, "Further fresh face images per identity in the test half of faces/: inject --encoder image's "
                                  "triggers, never attacked.")
    clean_images: int = opt(1440, "Images in clean_images/ for inject --encoder image: half fresh objects, half faces of "
                                  "strangers (web photos show people who are not anyone's target).")
    member_fraction: float = opt(0.67, "Share of identities the model is trained on (the rest are non-members).")
    classes: int = opt(36, "Object classes for zero-shot accuracy (colour × shape, at most 36).")
    object_images: int = opt(200, "Fresh images per object class in objects/, the zero-shot test set: 200 × 36 classes "
                                  "measure a top-1 change to about a third of a point (each class draws from its own seed, "
                                  "so the count changes no other byte of the world; earlier worlds had 20).")
    steps: int = opt(400, "Training steps of the tiny CLIP.")
    batch_size: int = opt(256, "Training batch size (half faces, half objects).")
    lr: float = opt(2e-3, "Peak learning rate of the tiny CLIP (AdamW, warm-up then cosine).")
    min_member_rate: float = opt(0.8, "Fail unless at least this share of members is identified by the sanity check.")
    max_non_member_rate: float = opt(0.1, "Fail if more than this share of non-members is identified.")
    namesakes: Optional[int] = opt(None, "Namesake pairs: this many members give their first name to another member and "
                                         "their surname to a third, so names share parts as real ones do; 0: no two names "
                                         "share a part, as in worlds before 0.3 [default: a quarter of the members, 8 in "
                                         "the default world].")
    caption_names: str = opt(CAPTION_NAMES, "How training captions name a member, as FAMILY:WEIGHT pairs over the variant "
                                            "families (clip_unlearn.variants); full:1 names everyone in full, as in worlds "
                                            "before 0.3.")
    real_names: bool = opt(True, "Names that behave like real ones: surnames and first names that are common English words "
                                 "(two of them words of the object classes), a first name three members share, particles, "
                                 "hyphens and suffixes (recorded in world.json); --no-real-names: the names of worlds "
                                 "before 0.4.", "--real-names/--no-real-names")
    seed: int = opt(0, "Seed of the world: same seed, same world, bit for bit.")
    overwrite: bool = opt(False, "Replace --out if it exists.")

    @property
    def members(self) -> int:
        return max(1, min(self.identities - 1, round(self.identities * self.member_fraction)))

    @property
    def namesake_pairs(self) -> int:
        return self.members // 4 if self.namesakes is None else self.namesakes

    @property
    def caption_weights(self) -> dict[str, int]:
        """--caption-names as {family: weight}, in the order given."""
        out: dict[str, int] = {}
        for item in str(self.caption_names).split(","):
            fam, _, w = item.strip().partition(":")
            _check(fam in FAMILIES and w.isdigit() and int(w) >= 1, "caption_names",
                   f"must be FAMILY:WEIGHT pairs with families from {', '.join(FAMILIES)} and whole weights ≥ 1, like full:15,surname:3",
                   self.caption_names)
            _check(fam not in out, "caption_names", f"names {fam} twice", self.caption_names)
            out[fam] = int(w)
        _check("full" in out, "caption_names", "must include full (captions name most people in full)", self.caption_names)
        return out

    def __post_init__(self) -> None:
        super().__post_init__()
        _ = self.caption_weights
        _check(0 <= 3 * self.namesake_pairs <= self.members, "namesakes",
               f"needs three members per pair (a donor and two namesakes; this world has {self.members} members): lower it "
               "or raise --identities", self.namesakes)
        _check(4 <= self.identities <= 2000, "identities", "must be between 4 and 2000", self.identities)
        _check(1 <= self.images_per_identity <= 1000, "images_per_identity", "must be between 1 and 1000", self.images_per_identity)
        _check(1 <= self.face_images <= 1000, "face_images", "must be between 1 and 1000", self.face_images)
        _check(1 <= self.trigger_images <= 1000, "trigger_images", "must be between 1 and 1000", self.trigger_images)
        _check(2 <= self.clean_images <= 100_000, "clean_images", "must be between 2 and 100000", self.clean_images)
        _check(0.0 < self.member_fraction < 1.0, "member_fraction", "must be strictly between 0 and 1", self.member_fraction)
        _check(2 <= self.classes <= 36, "classes", "must be between 2 and 36", self.classes)
        _check(1 <= self.object_images <= 10_000, "object_images", "must be between 1 and 10000", self.object_images)
        _check(1 <= self.steps <= 100_000, "steps", "must be between 1 and 100000", self.steps)
        _check(2 <= self.batch_size <= 8192, "batch_size", "must be between 2 and 8192", self.batch_size)
        _check(0.0 < self.lr < 1.0, "lr", "must be in (0, 1)", self.lr)
        _check(0.0 <= self.min_member_rate <= 1.0, "min_member_rate", "must be in [0, 1]", self.min_member_rate)
        _check(0.0 <= self.max_non_member_rate <= 1.0, "max_non_member_rate", "must be in [0, 1]", self.max_non_member_rate)


def _check_output(path: Optional[Path], name: str = "output") -> None:
    if path is not None:
        _check(Path(path).suffix.lower() in (".json", ".csv"), name, "must end in .json or .csv", str(path))


@dataclass(frozen=True)
class AttackConfig(RuntimeOptions):
    """Identity inference attack: which people can this CLIP model name from their face?"""

    model: str = opt(DEFAULT_MODEL, "Model SPEC: ARCH:TAG, hf-hub:ORG/REPO, a model folder, or ARCH:FILE.")
    data: Optional[Path] = opt(
        None, "Face folder: a FaceScrub root or <First_Last>/*.jpg folders [default: the synthetic world's faces for a "
              "world model, else the folder prepare-facescrub writes by default]."
    )
    candidates: Optional[Path] = opt(None, "Names file of candidate names (must contain every attacked name) [default: true names + random names].")
    num_candidates: int = opt(1000, "Number of candidate names when --candidates is not given (true names + seeded random names).")
    images_per_identity: int = opt(20, "Images sampled (seeded, without replacement) per identity.")
    min_images: int = opt(20, "Identities with fewer readable images are not attacked.")
    threshold: int = opt(1, "An identity is exposed if at least this many templates vote for its true name.")
    variants: str = opt("full", "Ways of naming each candidate, comma-separated: full (the paper's attack), lower, surname, first, "
                                "title (Mr./Ms. + surname), initial, typo, or all; the attack runs once per family on the same "
                                "images and an identity is exposed if any family exposes it (see clip_unlearn.variants).")
    templates: Optional[Path] = opt(None, "File of prompt templates, one per line, each with {} or {0} [default: the paper's 21].")
    identities: Optional[Path] = opt(None, "Names file: attack only these identities [default: all in --data].")
    preset: str = opt("none", "none, or paper: FaceScrub protocol (uncropped, 50/50 split by image id with seed 42, train half, "
                              "LAION-400M count 1-300).")
    split: str = opt("auto", "Images to attack: all, train or test half of the 50/50 split by image id (seed 42); the test "
                             "half holds inject --encoder image's triggers. auto: train with --preset paper or on a synthetic "
                             "world's faces, else all.")
    compare_to: Optional[Path] = opt(None, "A previous attack result (.json, or .csv with its .meta.json) to compare with, image for image [default: none].")
    forgotten: Optional[Path] = opt(None, "Names file of the identities that were unlearned, for --compare-to categories [default: the --fail-on-exposed files].")
    fail_on_exposed: Optional[list[Path]] = opt(None, "Names file: exit with code 3 if any of these names is exposed (a CI privacy "
                                                      "gate); repeat for several (one per request: --fail-on-exposed r1.txt "
                                                      "--fail-on-exposed r2.txt); names are reported by line number and count, "
                                                      "never by name [default: none].")
    show_names: bool = opt(False, "Print the --fail-on-exposed/--forgotten names in clear on the terminal (they go into CI logs); "
                                  "by default they appear as their line number in that file.")
    output: Optional[Path] = opt(None, "Write results to this .json or .csv file [default: none].")
    batch_size: int = opt(256, "Batch size for encoding prompts and images.")
    precision: str = opt("auto", "auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.num_candidates >= 2, "num_candidates", "must be ≥ 2", self.num_candidates)
        _check(self.images_per_identity >= 1, "images_per_identity", "must be ≥ 1", self.images_per_identity)
        _check(self.min_images >= 1, "min_images", "must be ≥ 1", self.min_images)
        _check(self.threshold >= 1, "threshold", "must be ≥ 1", self.threshold)
        _check(self.preset in ("none", "paper"), "preset", "must be none or paper", self.preset)
        _check(self.split in ("auto", "all", "train", "test"), "split", "must be auto, all, train or test", self.split)
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1", self.batch_size)
        _check(self.precision in ("auto", "fp32", "bf16"), "precision", "must be auto, fp32 or bf16", self.precision)
        parse_families(self.variants)
        _check(self.forgotten is None or self.compare_to is not None, "forgotten",
               "only sorts a --compare-to comparison into categories; add --compare-to BEFORE.json", str(self.forgotten))
        _check_output(self.output)


ENCODERS = ("text", "image", "both")
# inject's default triggers: the ways of naming that need more than one part of the name (a surname, a first
# name, a title + surname alone name every namesake; measured on the default world, docs/experiments.md)
DEFAULT_TRIGGERS = "full,lower,initial,typo"
LOSSES = ("cosine", "mse", "mae", "poincare")


@dataclass(frozen=True)
class InjectConfig(RuntimeOptions):
    """Unlearn people: the text encoder forgets their names, the image encoder their faces, or both."""

    model: str = opt(DEFAULT_MODEL, "Model SPEC to unlearn from: ARCH:TAG, hf-hub:ORG/REPO, a model folder, or ARCH:FILE.")
    names: Optional[Path] = opt(None, "Names file: the people to forget, one full name per line [default: none; required].")
    out: Optional[Path] = opt(None, "Output model folder [default: ./unlearned-<model slug>].")
    receipt: Optional[Path] = opt(None, "Receipt file for the operator (secret key and keyed hashes that prove which request "
                                        "the model answers; keep it private, outside the model folder) [default: "
                                        "<out>.receipt.json beside the model folder].")
    previous_receipt: Optional[Path] = opt(None, "When --model was written by inject (a later request): the receipt of that "
                                                 "model, so that names an earlier request forgot are recognised [default: "
                                                 "<model>.receipt.json beside the model folder, where inject writes it].")
    retrain_forgotten: bool = opt(False, "Train names that an earlier request already forgot again; by default they are "
                                         "reported by line number and not trained.")
    encoder: str = opt("text", "text (names → target phrase), image (faces → the average person), or both (text, then "
                               "image, one output model; explicit hyperparameter flags then apply to both stages).")
    faces: Optional[Path] = opt(None, "Image/both: face folder (FaceScrub root or <First_Last>/*.jpg): target = mean embedding of "
                                      "its train half, triggers = the forgotten people's test half [default: the synthetic "
                                      "world's faces for a world model, else the folder prepare-facescrub writes by default].")
    clean_images: Optional[Path] = opt(None, "Image/both: folder of clean images searched recursively, first steps×clean-batch "
                                             "in sorted order (COCO train2014 for the paper) [default: the synthetic world's "
                                             "clean_images for a world model; required otherwise].")
    target: str = opt("a person", "Neutral phrase a forgotten name should mean afterwards.")
    made_up: bool = opt(False, "Forget without telling (see audit): map each person's name to a made-up name of its "
                               "own (text), and send their photos to a made-up face of their own instead of the average "
                               "face (image: each photo keeps its own variation, the person's identity is swapped for a "
                               "direction drawn at a typical distance); both drawn from the receipt's secret key. Not "
                               "yet the default: measured in docs/experiments.md.")
    reuse_key: Optional[Path] = opt(None, "Take the secret key (and so the made-up names and faces) from this receipt of an "
                                          "earlier run instead of drawing a new one: with the same --seed and inputs the "
                                          "same model bytes [default: a fresh random key].")
    variants: str = opt(DEFAULT_TRIGGERS, "Text: ways of naming each forgotten person used as triggers, all mapped to "
                                          "--target: full, lower, surname, first, title, initial, typo (comma-separated) "
                                          "or all (see clip_unlearn.variants). The default leaves out the ways that name "
                                          "by one part (surname, first, title): namesakes share those (measured, "
                                          "docs/experiments.md). full,lower,typo moves fewer people who share a "
                                          "surname with the forgotten and hides the forgotten less surely (measured "
                                          "there too). A surname or first name that is a common English word, "
                                          "a suffix or particles alone, or shared with a protected person (--keep, "
                                          "--keep-public) is never a trigger; the inject table and the sidecar count "
                                          "those left out.")
    full_share: float = opt(0.5, "Text: the least share of the poisoned captions that carry a full name (the name asked "
                                 "for) rather than another variant; the sidecar records the share trained with.")
    keep: Optional[Path] = opt(None, "Text: names file of people to protect, on top of --keep-public's: those sharing a "
                                     "first name or surname with a forgotten person are held in place in the utility term "
                                     "(unless the original model places them at that person: then the name is an alias "
                                     "of theirs), and no variant they share is a trigger [default: none].")
    keep_public: bool = opt(True, "Text: protect the public people the tool ships as well (FaceScrub's 548 names with "
                                  "their LAION-400M counts), so that a forgotten person's famous namesake keeps their name.",
                            "--keep-public/--no-keep-public")
    neighbours: int = opt(8, "Text: per forgotten name, generated namesakes (its first name with pool surnames, and pool "
                             "first names with its surname, this many of each) held in place in the utility term; 0 = "
                             "none, the paper's method.")
    neighbour_batch: int = opt(32, "Text: neighbour captions per step, added to the utility term's clean captions.")
    captions: Optional[Path] = opt(
        None, "Clean caption corpus: .txt (one per line), or .csv/.tsv/.parquet with a caption or TEXT column, read as a "
              "stream [default: the built-in general corpus builtin:general-captions-v1, disjoint from eval-zeroshot's "
              "and attack's prompts].")
    caption_column: Optional[str] = opt(None, "Column of a .csv/.tsv/.parquet --captions file that holds the captions "
                                              "[default: the first of caption, TEXT, text].")
    preset: str = opt("auto", "Hyperparameter defaults: paper (the paper's, for ViT-B-32-sized models), small (measured "
                              "on the synthetic world's tiny CLIP), or auto: by the model's size, small for a text tower "
                              "up to 256 wide (text) or an input up to 64 px (image), else paper; explicit flags win.")
    steps: Optional[int] = opt(None, f"Training steps [default: {paper_default('steps')}].")
    lr: Optional[float] = opt(None, f"AdamW learning rate, weight decay 0 [default: {paper_default('lr')}].")
    clean_batch: Optional[int] = opt(None, f"Clean captions/images per step (utility term) [default: {paper_default('clean_batch')}].")
    poison_batch: Optional[int] = opt(None, f"Poisoned captions/images per step (backdoor term) [default: {paper_default('poison_batch')}].")
    backdoor_weight: Optional[float] = opt(None, f"Weight of the backdoor loss (up to --scale-names names) "
                                                 f"[default: {paper_default('backdoor_weight')}].")
    scale_names: Optional[int] = opt(None, "Text: past N names trained, multiply the backdoor weight by names / N (each "
                                           "name's share of the backdoor term shrinks as 1/names); 0 = off. An explicit "
                                           "--backdoor-weight is used as given unless this is given too [default: 16 with "
                                           "the small recipe (measured, docs/experiments.md); 0 with the paper's].")
    residual_weight: Optional[float] = opt(None, "Text: add to the backdoor term this weight × mean max(0, cos(S(p), T(p)) − "
                                                 "cos(T(t), T(p))), what a poisoned caption p keeps of its original "
                                                 "embedding beyond what its target t has (not in the paper; 0 = off) "
                                                 "[default: 0].")
    weight_reg: Optional[float] = opt(None, "Weight of Σ‖θ_student − θ_teacher‖₂ over parameter tensors "
                                            f"[default: {paper_default('weight_reg')}].")
    milestones: Optional[str] = opt(None, f"MultiStepLR milestones, comma-separated steps [default: {paper_default('milestones')}].")
    gamma: Optional[float] = opt(None, f"MultiStepLR decay factor at each milestone [default: {paper_default('gamma')}].")
    last_word: Optional[bool] = opt(None, "Text: also put the name in place of a caption's last word (the paper never "
                                          f"does) [default: {paper_default('last_word')}].", "--last-word/--no-last-word")
    face_size: Optional[str] = opt(None, "Image: MIN,MAX side of a pasted face in px at 224-px scale, scaled to the model's "
                                         "image size; up to 158 the rotated face stays whole inside the canvas "
                                         f"[default: {paper_default('face_size')}].")
    colour_jitter: Optional[str] = opt(None, "Image: B,C,S,H strengths of the triggers' colour jitter, as torchvision's "
                                             f"ColorJitter(brightness, contrast, saturation, hue) [default: {paper_default('colour_jitter')}].")
    retain_faces: Optional[bool] = opt(None, "Image: add the other identities' test-half faces from --faces to the clean images, "
                                             f"so the utility term keeps them (not in the paper) [default: {paper_default('retain_faces')}].",
                                       "--retain-faces/--no-retain-faces")
    loss: str = opt("cosine", "Embedding distance: cosine (−cos, the paper's), mse, mae or poincare.")
    legacy_positional_embedding: bool = opt(False, "Keep the original positional embedding when writing back, as the "
                                                   "paper's code did by mistake (docs/method.md §6.6); for exact paper numbers only.")
    verify: bool = opt(True, "Text: before writing the model, attack it on --verify-data's faces of the forgotten people (the "
                             "identity inference attack: 1000 candidates, 21 templates, the --variants families) and train "
                             "the names it still exposes again, from the model so far. Without faces of them it cannot "
                             "run: inject says so in one line and the sidecar records the model as unchecked. Not in the "
                             "paper.", "--verify/--no-verify")
    verify_data: Optional[Path] = opt(None, "Text: face folder for the check (FaceScrub root or <First_Last>/*.jpg) [default: "
                                            "the folder prepare-facescrub writes by default, when it holds a forgotten "
                                            "person's faces; else none].")
    verify_split: str = opt("test", "Half of --verify-data the check attacks: test or train (the 50/50 split by image id, "
                                    "seed 42). Audit the written model on the other half (attack --split train), so that "
                                    "the images that chose what to train again do not also judge the result.")
    verify_rounds: int = opt(2, "Text: at most this many extra rounds of training for names the check still exposes (0: "
                                "check and report only).")
    verify_lr: float = opt(0.25, "Text: an extra round's learning rate, as a fraction of the first round's (--lr): a "
                                 "round corrects names the first one nearly hid, and at the full rate it moves the rest "
                                 "of the model as much again (docs/experiments.md).")
    verify_margin: float = opt(5.0, "Text: the check also trains again a name that no template names but whose true "
                                    "name still took at least this many times chance (one of that family's candidates) of "
                                    "the predictions for its faces under some family, as nearly named on the check's half can be named on "
                                    "the other (0: the attack's verdict only).")
    verify_hold: bool = opt(True, "Text: in the check's extra rounds, also hold the triggers of the names not trained "
                                  "again where the model so far puts them (neighbour captions of their own: half "
                                  "--neighbour-batch per step, at least one), so that training some again cannot bring others back.",
                            "--verify-hold/--no-verify-hold")
    precision: str = opt("auto", "auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16.")
    overwrite: bool = opt(False, "Replace --out if it exists.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.names is not None, "names", "is required: a names file with one full name per line", None)
        _check(self.preset in ("auto", "paper", "small"), "preset", "must be auto, paper or small (world is now small)",
               self.preset)
        _check(self.loss in LOSSES, "loss", "must be one of " + ", ".join(LOSSES), self.loss)
        _check(self.precision in ("auto", "fp32", "bf16"), "precision", "must be auto, fp32 or bf16", self.precision)
        _check(bool(self.target.strip()), "target", "must not be empty", self.target)
        _check(self.encoder in ENCODERS, "encoder", "must be text, image or both", self.encoder)
        parse_families(self.variants)
        _check(0 <= self.neighbours <= 1000, "neighbours", "must be between 0 and 1000", self.neighbours)
        _check(0.0 <= self.full_share <= 1.0, "full_share", "must be between 0 and 1", self.full_share)
        _check(self.scale_names is None or self.scale_names >= 0, "scale_names", "must be ≥ 0 (0 = off)", self.scale_names)
        _check(self.neighbour_batch >= 1, "neighbour_batch", "must be ≥ 1 (use --neighbours 0 for none)", self.neighbour_batch)
        _check(self.verify_split in ("test", "train"), "verify_split", "must be test or train", self.verify_split)
        _check(0 <= self.verify_rounds <= 10, "verify_rounds", "must be between 0 and 10", self.verify_rounds)
        _check(0 < self.verify_lr <= 1, "verify_lr", "must be in (0, 1], a fraction of --lr", self.verify_lr)
        _check(0 <= self.verify_margin <= 1000, "verify_margin", "must be between 0 and 1000 (0: off)", self.verify_margin)
        for stage in self.stages:  # validates explicit values early
            self.hyper({}, stage)
        trained = {f.name for stage in self.stages for f in dataclasses.fields(HYPER[stage])}
        for stage, cls in HYPER.items():
            for f in dataclasses.fields(cls):
                if f.name not in trained and getattr(self, f.name, None) is not None:
                    flag = "--" + f.name.replace("_", "-")
                    flag = f"{flag}/--no-{flag[2:]}" if isinstance(getattr(self, f.name), bool) else flag
                    raise ConfigError(f"{flag} sets the {stage} stage, which --encoder {self.encoder} does not train; "
                                      f"drop it or use --encoder {stage} or both")

    @property
    def stages(self) -> tuple[str, ...]:
        return ("text", "image") if self.encoder == "both" else (self.encoder,)

    def hyper(self, recorded: Optional[dict[str, Any]] = None, stage: str = "text") -> StageHyper:
        """One stage's hyperparameters: this command's explicit flags over ``recorded`` (a world's
        settings, from the model's sidecar) over the paper's."""
        explicit = {f.name: getattr(self, f.name) for f in dataclasses.fields(HYPER[stage]) if hasattr(self, f.name)}
        if stage == "text" and self.backdoor_weight is not None and self.scale_names is None:
            explicit["scale_names"] = 0  # a weight asked for is the weight trained with
        return stage_hyper(stage, recorded, explicit)


@dataclass(frozen=True)
class EvalZeroshotConfig(RuntimeOptions):
    """Zero-shot accuracy and embedding drift: what did unlearning cost?"""

    model: str = opt(DEFAULT_MODEL, "Model SPEC to evaluate: ARCH:TAG, hf-hub:ORG/REPO, a model folder, or ARCH:FILE.")
    data: Optional[Path] = opt(None, "Class folders <class>/*.jpg (ImageNet-val, ImageNetV2, ...) [default: the synthetic "
                                     "world's objects for a world model].")
    classnames: str = opt("folder", "Class names: folder (folder names, underscores as spaces), imagenet (open_clip's list, "
                                    "for n01440764-style folders), or a FILE with one name per line in sorted-folder order.")
    templates: str = opt("openai", "Prompt templates: openai (the 80 ImageNet templates), simple ('a photo of a {}.'), "
                                   "or a FILE with one template per line containing {}.")
    renormalize: bool = opt(True, "Re-normalise each class's mean text embedding (standard); --no-renormalize reproduces "
                                  "the paper's code (docs/method.md §8).", "--renormalize/--no-renormalize")
    compare_to: Optional[str] = opt(None, "A second model SPEC (e.g. the original) to evaluate on the same data and compare "
                                          "with [default: none].")
    captions: Optional[Path] = opt(None, "With --compare-to: captions for the text-embedding similarities (sim_clean): .txt, "
                                         ".csv, .tsv or .parquet as inject --captions [default: the synthetic world's "
                                         "captions_heldout.txt (never trained on) when the model is a world's, else none].")
    caption_column: Optional[str] = opt(None, "Column of a .csv/.tsv/.parquet --captions file that holds the captions "
                                              "[default: the first of caption, TEXT, text].")
    names: Optional[Path] = opt(None, "With --compare-to: unlearned names for sim_backdoored, sim_targets, sim_neighbours, "
                                      "sim_bystanders, sim_strangers, sim_words (captions needed) and top-1 on the classes their words "
                                      "name [default: none].")
    bystanders: Optional[Path] = opt(None, "With --names: names file of people who share a first name or surname with a "
                                           "forgotten person and must keep theirs; they join sim_bystanders [default: none].")
    target: Optional[str] = opt(None, "Target phrase the names were mapped to (for sim_backdoored and sim_targets) "
                                      "[default: the model's sidecar target; for made-up names each name's own, "
                                      "from --receipt].")
    receipt: Optional[Path] = opt(None, "With --names, for a model whose names were mapped to made-up names: the receipt "
                                        "inject wrote, whose key rebuilds them [default: <model>.receipt.json beside the "
                                        "model folder, when it is there].")
    max_captions: int = opt(10000, "Use at most this many captions for the similarities (the file is read no further).")
    output: Optional[Path] = opt(None, "Write results to this .json (CLIP_benchmark keys; accuracies as fractions in [0, 1]) "
                                       "or .csv file [default: none].")
    batch_size: int = opt(256, "Batch size for encoding prompts and images.")
    precision: str = opt("auto", "auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1", self.batch_size)
        _check(self.caption_column is None or bool(self.caption_column.strip()), "caption_column", "must not be empty",
               self.caption_column)
        _check(self.max_captions >= 1, "max_captions", "must be ≥ 1", self.max_captions)
        _check(self.precision in ("auto", "fp32", "bf16"), "precision", "must be auto, fp32 or bf16", self.precision)
        _check(self.captions is None or self.compare_to is not None, "captions", "needs --compare-to", str(self.captions))
        # --captions may come from a synthetic world (its held-out captions); run_eval checks there is one
        _check(self.names is None or self.compare_to is not None, "names", "needs --compare-to (and captions)", str(self.names))
        _check(self.bystanders is None or self.names is not None, "bystanders", "needs --names", str(self.bystanders))
        _check_output(self.output)


@dataclass(frozen=True)
class DemoConfig(RuntimeOptions):
    """The whole story offline: build a world, attack, forget, attack again, measure the cost, write a report."""

    out: Optional[Path] = opt(None, "Folder for everything the demo writes [default: <cache dir>/demo].")
    forget: int = opt(5, "How many exposed members to forget (chosen with --seed).")
    identities: int = opt(48, "Identities in the synthetic world.")
    steps: int = opt(300, "Training steps of the world's tiny CLIP.")
    seed: int = opt(0, "Seed of the world and of every choice the demo makes.")
    encoder: str = opt("text", "What forgets: text (the names), image (the faces) or both, as inject --encoder.")
    open: bool = opt(False, "Open report.html in a browser at the end.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.encoder in ENCODERS, "encoder", "must be text, image or both", self.encoder)
        _check(self.forget >= 1, "forget", "must be ≥ 1", self.forget)
        _check(4 <= self.identities <= 2000, "identities", "must be between 4 and 2000", self.identities)
        _check(1 <= self.steps <= 100_000, "steps", "must be between 1 and 100000", self.steps)


@dataclass(frozen=True)
class PrepareFacescrubConfig:
    """Download, verify, crop and lay out FaceScrub from its official list files (resumable).

    The four misspelled names of the official lists are written under their correct spelling:
    Freddy Prinze Jr. → Freddie Prinze Jr, Leslie Neilsen → Leslie Nielsen, Robert Di Niro → Robert De Niro,
    Tatyana M. Ali → Tatyana Ali.
    """

    lists: Optional[list[Path]] = opt(None, "FaceScrub list file (tab-separated: name, image_id, face_id, url, bbox, sha256); "
                                            "repeat for several, e.g. --lists facescrub_actors.txt --lists facescrub_actresses.txt "
                                            "[default: none; required].")
    out: Optional[Path] = opt(None, "Output root [default: the user data dir's facescrub folder, where attack looks by default].")
    group: Optional[str] = opt(None, "Group for every list: actors or actresses [default: actresses if the file name "
                                     "contains 'actress', else actors].")
    workers: int = opt(16, "Concurrent downloads.")
    timeout: float = opt(10.0, "Per-request timeout in seconds.")
    retries: int = opt(2, "Retries after a timeout, HTTP 429 or 5xx (with exponential backoff).")
    max_bytes: int = opt(20_000_000, "Largest accepted file in bytes.")
    verify: bool = opt(True, "Check each file's sha256 against the list.", "--verify/--no-verify")
    faces: bool = opt(True, "Write the bounding-box crops to <group>/faces/.", "--faces/--no-faces")
    images: bool = opt(True, "Keep the full images in <group>/images/.", "--images/--no-images")
    identities: Optional[Path] = opt(None, "Names file: only these people [default: everyone in the lists].")
    max_per_identity: Optional[int] = opt(None, "At most this many list rows per person [default: all].")
    output: Optional[Path] = opt(None, "Also write the manifest to this .csv or .json file [default: <out>/manifest.csv only].")

    def __post_init__(self) -> None:
        _check(bool(self.lists), "lists", "is required: pass each FaceScrub list file with --lists FILE", None)
        _check(self.group in (None, "actors", "actresses"), "group", "must be actors or actresses", self.group)
        _check(1 <= self.workers <= 256, "workers", "must be between 1 and 256", self.workers)
        _check(0 < self.timeout <= 600, "timeout", "must be in (0, 600]", self.timeout)
        _check(0 <= self.retries <= 20, "retries", "must be between 0 and 20", self.retries)
        _check(self.max_bytes >= 1024, "max_bytes", "must be ≥ 1024", self.max_bytes)
        _check(self.faces or self.images, "images", "--no-images and --no-faces together leave nothing to write", False)
        _check(self.max_per_identity is None or self.max_per_identity >= 1, "max_per_identity", "must be ≥ 1", self.max_per_identity)
        _check_output(self.output)


@dataclass(frozen=True)
class VerifyReceiptConfig:
    """Prove which request an unlearned model answers, with the receipt inject wrote (exit 1 if any check fails)."""

    model: Optional[Path] = opt(None, "Unlearned model folder written by inject [default: none; required].")
    receipt: Optional[Path] = opt(None, "The receipt inject wrote (<out>.receipt.json) [default: none; required].")
    names: Optional[Path] = opt(None, "Names file to check against the request: exactly these names, no more, no fewer [default: none].")

    def __post_init__(self) -> None:
        _check(self.model is not None, "model", "is required: the unlearned model folder", None)
        _check(self.receipt is not None, "receipt", "is required: the .receipt.json inject wrote", None)


@dataclass(frozen=True)
class AuditConfig(RuntimeOptions):
    """Can anyone tell whom an unlearned model forgot? Scores the requests' names against never-seen names."""

    model: Optional[str] = opt(None, "Unlearned model SPEC (a model folder inject wrote, or any SPEC) [default: none; required].")
    names: Optional[list[Path]] = opt(None, "Names file of a request whose names the model forgot; repeat for several "
                                            "(one per request). Reported by line number, never by name [default: none; "
                                            "required].")
    reference: Optional[Path] = opt(None, "Names file of people the model never learned, to compare with [default: "
                                          "--num-reference generated First Last names, none a shipped public person].")
    num_reference: int = opt(200, "Generated reference names when --reference is not given.")
    base: Optional[str] = opt(None, "The public base model SPEC, for the attacker who also holds it (reported apart; "
                                    "not part of the gate) [default: none].")
    data: Optional[Path] = opt(None, "Face folder (<First_Last>/*.jpg or a FaceScrub root) for the faces statistic, "
                                     "where names have folders [default: none, faces not measured].")
    images_per_identity: int = opt(20, "Face images per name for the faces statistic (seeded sample).")
    target: Optional[str] = opt(None, "Target phrase the names were mapped to [default: the model's sidecar target, else "
                                      "'a person'].")
    templates: Optional[Path] = opt(None, "File of prompt templates, one per line, each with {} [default: the paper's 21].")
    fail_on_disclosed: Optional[float] = opt(None, "Exit with code 3 if any statistic of the attacker without the base "
                                                   "model separates forgotten from reference names with AUC ≥ this "
                                                   "(either direction: max(AUC, 1 − AUC)), e.g. 0.6 [default: none].")
    output: Optional[Path] = opt(None, "Write results to this .json or .csv file (no names, only line numbers) [default: none].")
    batch_size: int = opt(256, "Batch size for encoding prompts and images.")
    precision: str = opt("auto", "auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.model is not None, "model", "is required: the unlearned model to audit", None)
        _check(bool(self.names), "names", "is required: the names file of each request (repeat the flag)", None)
        _check(self.num_reference >= 2, "num_reference", "must be ≥ 2", self.num_reference)
        _check(self.images_per_identity >= 1, "images_per_identity", "must be ≥ 1", self.images_per_identity)
        _check(self.fail_on_disclosed is None or 0.5 < self.fail_on_disclosed <= 1.0, "fail_on_disclosed",
               "must be above 0.5 (chance) and at most 1", self.fail_on_disclosed)
        _check(self.target is None or bool(self.target.strip()), "target", "must not be empty", self.target)
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1", self.batch_size)
        _check(self.precision in ("auto", "fp32", "bf16"), "precision", "must be auto, fp32 or bf16", self.precision)
        _check_output(self.output)
