"""Audit: can anyone tell from an unlearned model whom it forgot?

A right-to-be-forgotten request is private too. This stage plays the attacker who holds the published
model and a list of candidate names (on a real model: any list of public people) and scores every name
by statistics that might separate the forgotten from names the model never learned: how close its
captions sit to the target phrase and to generic person phrases, how coherent its embeddings are across
templates and spelling variants, whether it shares one point with other names, and how the model's
faces answer to it. Per statistic it reports the AUC of forgotten against never-seen names and the
forgotten's ranks, by their line in the request's names file, never by name. An attacker who also holds
the public base model is reported apart: what moved is visible to anyone who can diff the weights.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from clip_unlearn.config import AuditConfig, cache_root, to_dict
from clip_unlearn.embed import EmbeddingCache, Encoder
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.names import key, normalise, public_people, random_full_names, read_names
from clip_unlearn.progress import Progress
from clip_unlearn.prompts import PERSON_PHRASES
from clip_unlearn.variants import typo_edits, variants

# Spellings that the default trigger families make of a name (inject --variants' default, less full).
VARIANT_FAMILIES = ("lower", "initial", "typo")


def auc(forgotten: Sequence[float], reference: Sequence[float]) -> float:
    """Mann–Whitney: the chance that a forgotten name scores above a never-seen one (ties count half)."""
    if not forgotten or not reference:
        return float("nan")
    wins = sum((a > b) + 0.5 * (a == b) for a in forgotten for b in reference)
    return wins / (len(forgotten) * len(reference))


def chance_band(n_forgotten: int, n_reference: int) -> tuple[float, float]:
    """0.5 ± 2 standard deviations of the AUC of two groups drawn from one distribution (no ties)."""
    sd = math.sqrt((n_forgotten + n_reference + 1) / (12 * n_forgotten * n_reference))
    return round(max(0.0, 0.5 - 2 * sd), 4), round(min(1.0, 0.5 + 2 * sd), 4)


def ranks(forgotten: Sequence[float], reference: Sequence[float], higher: bool) -> list[int]:
    """Each forgotten score's rank (1 = most suspicious) among all scores, ties sharing the best rank."""
    pool = [*forgotten, *reference]
    sign = 1 if higher else -1
    return [1 + sum(sign * x > sign * s for x in pool) for s in forgotten]


@dataclass
class Statistic:
    name: str
    attacker: str  # "model" (the published model alone) or "base" (and the public base model)
    what: str
    forgotten: list[float] = field(default_factory=list)  # by position in the requests' names files
    reference: list[float] = field(default_factory=list)
    note: str = ""
    # the same statistic of the same names in the base model (--base): what was there before unlearning. Names
    # the model learned differ from never-learned ones before anyone is forgotten (membership), so it is the
    # change from this that unlearning gives away.
    before: Optional[tuple[list[float], list[float]]] = None

    @property
    def available(self) -> bool:
        return len(self.forgotten) >= 1 and len(self.reference) >= 2

    def summary(self, labels: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {"statistic": self.name, "attacker": self.attacker, "what": self.what,
                               "forgotten": len(self.forgotten), "reference": len(self.reference)}
        if self.note:
            row["note"] = self.note
        if not self.available:
            return {**row, "auc": None, "disclosure": None}
        a = auc(self.forgotten, self.reference)
        higher = a >= 0.5  # an attacker picks the direction that separates; so do the ranks
        r = ranks(self.forgotten, self.reference, higher)
        k = len(self.forgotten)
        if self.before is not None and self.before[0] and len(self.before[1]) >= 2:
            b = auc(*self.before)
            row.update({"auc_base": round(b, 4), "disclosure_base": round(max(b, 1 - b), 4)})
        return {**row, "auc": round(a, 4), "disclosure": round(max(a, 1 - a), 4),
                "chance": list(chance_band(len(self.forgotten), len(self.reference))),
                "direction": "higher" if higher else "lower", "top_k": {"k": k, "forgotten": sum(x <= k for x in r)},
                # the reference names are never-learned (public) ones: their scores, unlabelled, let runs be pooled
                "reference_scores": sorted(round(s, 6) for s in self.reference),
                "ranks": sorted(({"label": lab, "rank": x, "score": round(s, 6)}
                                 for lab, x, s in zip(labels, r, self.forgotten)), key=lambda d: d["rank"])}


@dataclass
class AuditResult:
    config: dict[str, Any]
    statistics: list[dict[str, Any]]
    labels: list[str]
    reference_source: str

    def worst(self, attacker: str) -> Optional[dict[str, Any]]:
        rows = [s for s in self.statistics if s["attacker"] == attacker and s["disclosure"] is not None]
        return max(rows, key=lambda s: s["disclosure"]) if rows else None

    def disclosed(self, threshold: float) -> list[dict[str, Any]]:
        """The model-only statistics at or over the gate's AUC threshold (either direction)."""
        return [s for s in self.statistics if s["attacker"] == "model" and s["disclosure"] is not None
                and s["disclosure"] >= threshold]

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "forgotten": len(self.labels), "reference_source": self.reference_source,
                "statistics": self.statistics,
                "worst": {a: (w["statistic"], w["disclosure"]) if (w := self.worst(a)) else None for a in ("model", "base")}}


def reference_names(cfg: AuditConfig, forgotten: list[str]) -> tuple[list[str], str]:
    """--reference, or generated "First Last" names that are neither forgotten nor a shipped public person."""
    taken = {key(n) for n in forgotten}
    if cfg.reference is not None:
        names = [n for n in read_names(cfg.reference, "--reference file") if key(n) not in taken]
        if len(names) < 2:
            raise ClipUnlearnError(f"--reference file {cfg.reference} holds fewer than 2 names besides the forgotten; "
                                   "pass a names file of people the model never learned")
        return names, "--reference file"
    exclude = [*forgotten, *public_people()]
    return random_full_names(cfg.num_reference, random.Random(f"{cfg.seed}|audit-reference"), exclude), "generated"


def _requests(cfg: AuditConfig) -> tuple[list[str], list[str]]:
    """(forgotten names in request order, their labels "#line of --names file N"); repeats keep the first."""
    names, labels, seen = [], [], set()
    for j, path in enumerate(cfg.names):
        where = "--names" + (f" file {j + 1}" if len(cfg.names) > 1 else "")
        for i, n in enumerate(read_names(path, "--names file")):
            if key(n) not in seen:
                seen.add(key(n))
                names.append(n)
                labels.append(f"#{i + 1} of {where}")
    if not names:
        raise ClipUnlearnError("the --names files hold no name; pass the names files of the requests to audit")
    return names, labels


class _Tower:
    """The 21-template (or --templates) embeddings of names in one model, the forgotten never on disk."""

    def __init__(self, encoder: Encoder, templates: list[str], private: set[str]) -> None:
        self.encoder, self.templates, self.private = encoder, templates, private

    def __call__(self, names: Sequence[str]) -> Any:
        """[len(names), T, D]."""
        import torch

        if not names:
            return torch.zeros(0, len(self.templates), 0)
        rows = []
        for persist in (False, True):
            part = [n for n in names if (key(n) in self.private) != persist]
            if part:
                emb = self.encoder.texts([t.format(n) for n in part for t in self.templates], persist=persist)
                rows.append(dict(zip(part, emb.reshape(len(part), len(self.templates), -1))))
        found = {n: e for d in rows for n, e in d.items()}
        return torch.stack([found[n] for n in names])


def text_statistics(emb: Any, target: Any, persons: Any, variant_emb: Any) -> dict[str, list[float]]:
    """Per name, from its template embeddings ``emb`` [N, T, D] (L2-normalised rows), the target phrase's
    ``target`` [T, D], the person phrases' ``persons`` [P, T, D] and the names' spelling variants
    ``variant_emb`` [N, V, T, D] (V may be 0):

    - target: mean over templates of cos(name, target);
    - person: the same, averaged over the person phrases;
    - coherence: mean pairwise cosine, across templates, of the residuals name − target (normalised): a
      name that keeps an identity of its own points one way in every template;
    - variants: mean cos between the full name and its spellings, template by template;
    - nearest: the highest cosine between the name's mean embedding and another name's (all N are pooled,
      so names collapsed onto one point find each other)."""
    import torch
    import torch.nn.functional as F

    n, t = emb.shape[0], emb.shape[1]
    out: dict[str, list[float]] = {}
    out["target"] = (emb * target).sum(-1).mean(1).tolist()
    out["person"] = torch.einsum("ntd,ptd->npt", emb, persons).mean((1, 2)).tolist()
    res = F.normalize(emb - target, dim=-1)
    gram = res @ res.transpose(1, 2)  # [N, T, T]
    off = (gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)) / max(1, t * (t - 1))
    out["coherence"] = off.tolist()
    if variant_emb.shape[1]:
        out["variants"] = (variant_emb * emb[:, None]).sum(-1).mean((1, 2)).tolist()
    means = F.normalize(emb.mean(1), dim=-1)
    sims = means @ means.T
    sims.fill_diagonal_(-2.0)
    out["nearest"] = sims.max(1).values.tolist() if n > 1 else [float("nan")] * n
    return out


TEXT_WHAT = {
    "target": "closeness of the name's captions to the same captions with the target phrase",
    "person": "closeness to generic person phrases (a person, someone, a man, ...)",
    "coherence": "how one-directional the name's offset from the target is across templates",
    "variants": "agreement of the full name with its lower-case, initial and typo spellings",
    "nearest": "cosine to the closest other name (a shared landing point)",
    "spellings": "agreement of the full name with one-letter typos no trigger trains",
    "faces": "closeness of the person's face images to captions with their name",
    "movement": "how far the name's captions moved from the base model (1 − cosine)",
    "target_gain": "how much closer to the target phrase the name's captions moved",
    "face_center": "closeness of the person's mean face to the average face of everyone in --data (image tower)",
    "face_tightness": "how tightly the person's face images cluster around their own mean (image tower)",
    "face_movement": "how far the person's face embeddings moved from the base model (1 − cosine)",
}
IMAGE_STATISTICS = ("face_center", "face_tightness")


def _variant_strings(names: Sequence[str]) -> list[list[str]]:
    """Per name, its distinct spellings under VARIANT_FAMILIES (the full name itself left out): the ones inject's
    default trains as triggers."""
    avoid = frozenset(key(n) for n in names)
    out = []
    for n in names:
        vs = [v for f in VARIANT_FAMILIES for v in variants(n, f, avoid=avoid) if v != n]
        out.append(vs)
    return out


UNTRAINED_SPELLINGS = 4


def _untrained_strings(names: Sequence[str]) -> list[list[str]]:
    """Per name, the next UNTRAINED_SPELLINGS one-letter typos after the one inject trains: a name whose
    trained spellings moved while these stayed with the person it was drifts apart from them."""
    avoid = frozenset(key(n) for n in names)
    out = []
    for n in names:
        trained = set(variants(n, "typo", avoid=avoid))
        edits = [e for e in typo_edits(normalise(n)) if e not in trained and key(e) != key(n) and key(e) not in avoid]
        out.append(edits[:UNTRAINED_SPELLINGS])
    return out


def _variant_embeddings(tower: _Tower, names: Sequence[str], private: set[str],
                        strings: Callable[[Sequence[str]], list[list[str]]] = _variant_strings) -> Any:
    """[N, V, T, D] with V the smallest number of spellings any name has (so every name contributes alike)."""
    import torch

    found = strings(names)
    v = min((len(s) for s in found), default=0)
    if not v:
        return torch.zeros(len(names), 0, len(tower.templates), 1)
    flat = [s[i] for s in found for i in range(v)]
    # a spelling of a forgotten name is as private as the name
    tower.private = private | {key(x) for s, n in zip(found, names) if key(n) in private for x in s[:v]}
    emb = tower(flat)
    tower.private = private
    return emb.reshape(len(names), v, len(tower.templates), -1)


def face_files(names: Sequence[str], data: Path, per_identity: int, seed: int) -> dict[int, list[Path]]:
    """Position in ``names`` → up to ``per_identity`` of its face images (a seeded sample), for the names with a
    folder in ``data``: the photos an attacker holds of each candidate."""
    from clip_unlearn.folders import face_folders

    folders = {key(f.name): f for f in face_folders(data, view="images")}
    out: dict[int, list[Path]] = {}
    for i, n in enumerate(names):
        f = folders.get(key(n))
        if f is None or not f.files:
            continue
        files = sorted(f.files)
        random.Random(f"{seed}|{key(n)}|audit").shuffle(files)
        out[i] = files[:per_identity]
    return out


def face_embeddings(encoder: Encoder, files: dict[int, list[Path]]) -> dict[int, Any]:
    """Position → the L2-normalised embeddings of its readable face images under ``encoder`` (none: left out)."""
    out = {}
    for i, paths in files.items():
        emb, _ = encoder.images(paths)
        if len(emb):
            out[i] = emb
    return out


def face_scores(faces: dict[int, Any], tower_emb: Any) -> dict[int, float]:
    """Position → mean cosine of its face images to its template embeddings (the name answering to its faces)."""
    return {i: float((emb @ tower_emb[i].T).mean()) for i, emb in faces.items()}


def image_statistics(faces: dict[int, Any]) -> dict[str, dict[int, float]]:
    """What the image tower alone tells of each person with face images (docs/method.md §7: the image stage maps
    a forgotten person's faces to the average face).

    ``face_center``: cosine of the person's mean face to the average face of everyone the attacker holds;
    ``face_tightness``: mean cosine of the person's faces to their own mean (a collapsed person is one point)."""
    import torch
    import torch.nn.functional as F

    if not faces:
        return {"face_center": {}, "face_tightness": {}}
    centres = {i: F.normalize(e.float().mean(0), dim=0) for i, e in faces.items()}
    average = F.normalize(torch.stack(list(centres.values())).mean(0), dim=0)
    return {"face_center": {i: float(c @ average) for i, c in centres.items()},
            "face_tightness": {i: float((faces[i].float() @ c).mean()) for i, c in centres.items()}}


def face_audit(encoder: Encoder, base: Optional[Encoder], tower_emb: tuple[Any, Any], names: Sequence[str], k: int,
               cfg: AuditConfig) -> list[Statistic]:
    """The statistics that need face images (--data): the text-side ``faces`` and the image tower's own, with
    ``base`` also how far each person's face embeddings moved and each statistic in the base model.
    ``tower_emb``: the names' template embeddings under ``encoder`` and ``base``."""
    if cfg.data is None:
        return [Statistic(s, "base" if s == "face_movement" else "model", TEXT_WHAT[s],
                          note="not measured: pass --data with face folders")
                for s in ("faces", *IMAGE_STATISTICS, *(("face_movement",) if base is not None else ()))]
    files = face_files(names, Path(cfg.data), cfg.images_per_identity, cfg.seed)
    faces = face_embeddings(encoder, files)
    note = (f"{sum(i < k for i in faces)} forgotten and {sum(i >= k for i in faces)} reference names have face "
            "images in --data")
    found = {"faces": face_scores(faces, tower_emb[0]), **image_statistics(faces)}
    was: dict[str, dict[int, float]] = {}
    if base is not None:
        before = face_embeddings(base, {i: files[i] for i in faces})
        was = {"faces": face_scores(before, tower_emb[1]), **image_statistics(before)}
        found["face_movement"] = {i: float(1 - (faces[i].float() * before[i].float()).sum(-1).mean())
                                  for i in faces if i in before and len(before[i]) == len(faces[i])}

    def split(v: dict[int, float]) -> tuple[list[float], list[float]]:
        return [v[i] for i in range(k) if i in v], [v[i] for i in range(k, len(names)) if i in v]
    return [Statistic(s, "base" if s == "face_movement" else "model", TEXT_WHAT[s], *split(v), note=note,
                      before=split(was[s]) if s in was else None)
            for s, v in found.items()]


def text_audit(encoder: Any, names: Sequence[str], k: int, target: str, templates: Sequence[str],
               base: Any = None) -> tuple[list[Statistic], Any, Any]:
    """The text statistics of ``names`` (the first ``k`` forgotten, the rest reference) under ``encoder`` (anything
    with ``texts(prompts, persist)`` → L2-normalised rows), and with ``base`` also the base-holder's (and each
    statistic of the base model, ``Statistic.before``); then the names' template embeddings [N, T, D] under
    ``encoder`` and under ``base`` (None without), for the faces statistic."""
    import torch

    private = {key(n) for n in names[:k]}

    def stats(enc: Any) -> tuple[dict[str, list[float]], Any]:
        tower = _Tower(enc, list(templates), private)
        emb = tower(names)
        found = text_statistics(emb, tower([target])[0], tower(list(PERSON_PHRASES)),
                                _variant_embeddings(tower, names, private))
        untrained = _variant_embeddings(tower, names, private, _untrained_strings)
        if untrained.shape[1]:
            found["spellings"] = (untrained * emb[:, None]).sum(-1).mean((1, 2)).tolist()
        return found, emb

    found, emb = stats(encoder)
    out = [Statistic(s, "model", TEXT_WHAT[s], v[:k], v[k:]) for s, v in found.items()]
    if base is not None:
        base_found, base_emb = stats(base)
        for s in out:
            s.before = (base_found[s.name][:k], base_found[s.name][k:])
        moved = (1 - (emb * base_emb).sum(-1).mean(1)).tolist()
        gain = (torch.tensor(found["target"]) - torch.tensor(base_found["target"])).tolist()
        out += [Statistic("movement", "base", TEXT_WHAT["movement"], moved[:k], moved[k:]),
                Statistic("target_gain", "base", TEXT_WHAT["target_gain"], gain[:k], gain[k:])]
    return out, emb, (base_emb if base is not None else None)


def run_audit(cfg: AuditConfig, progress: Progress = None) -> AuditResult:
    from clip_unlearn.attack import read_templates
    from clip_unlearn.distributed import setup
    from clip_unlearn.models import load_model, read_sidecar
    from clip_unlearn.outputs import check_output_file

    forgotten, labels = _requests(cfg)
    reference, source = reference_names(cfg, forgotten)
    templates = read_templates(cfg.templates)
    if cfg.output is not None:
        check_output_file(cfg.output, [*cfg.names, cfg.reference, cfg.templates], "--output")
    _, device = setup(cfg.device)
    cache = EmbeddingCache(cache_root(cfg.cache_dir))
    cache.check_writable()
    loaded = load_model(cfg.model, device)
    # the --target inject was given; made-up names (its default) have no phrase to be close to: the paper's is tried
    target = cfg.target or (read_sidecar(loaded.spec).get("config") or {}).get("target") or "a person"
    names, k = [*forgotten, *reference], len(forgotten)
    enc = Encoder(loaded, cache, cfg.batch_size, cfg.precision, progress)
    base = Encoder(load_model(cfg.base, device), cache, cfg.batch_size, cfg.precision, progress) if cfg.base else None
    found, emb, base_emb = text_audit(enc, names, k, target, templates, base)
    found += face_audit(enc, base, (emb, base_emb), names, k, cfg)
    found.sort(key=lambda s: s.attacker != "model")
    config = {**to_dict(cfg), "names": "(names files given; not recorded)",
              "reference": "(file given)" if cfg.reference is not None else None, "target_applied": target,
              "templates": len(templates), "reference_names": len(reference), "model_fingerprint": loaded.fingerprint()}
    return AuditResult(config, [s.summary(labels) for s in found], labels, source)
