"""The identity inference attack (IDIA; docs/method.md §4-5), faithful to the paper and cached.

For every template, a zero-shot classifier over all candidate names (no template averaging)
predicts each sampled image's name; per identity and template the *unique* plurality of its
images' predictions is the vote (a tie is not a hit); the score is the number of templates
that vote for the true name, and the identity is exposed iff score ≥ threshold.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

from clip_unlearn import __version__
from clip_unlearn.config import AttackConfig, cache_root, to_dict
from clip_unlearn.errors import ClipUnlearnError, ConfigError
from clip_unlearn.folders import IdentityFolder, face_folders, split_side
from clip_unlearn.names import key, random_full_names, read_names
from clip_unlearn.progress import Progress
from clip_unlearn.prompts import PAPER_TEMPLATES
from clip_unlearn.variants import FamilyCandidates, family_candidates, parse_families, pool_genders

log = logging.getLogger(__name__)

CSV_COLUMNS = ("name", "n_images", "score", "exposed", "top_prediction")


def csv_rows(result: AttackResult) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The rows and columns of ``attack --output X.csv``: CSV_COLUMNS, then ``<family>_score`` and
    ``<family>_exposed`` for each family when more than the full name was attacked."""
    families = list(result.summary.get("families", {}))
    if not families:
        return result.identities, CSV_COLUMNS
    columns = CSV_COLUMNS + tuple(f"{f}_{c}" for f in families for c in ("score", "exposed"))
    rows = [{**r, **{f"{f}_{c}": r["variants"][f][c] for f in families for c in ("score", "exposed")}} for r in result.identities]
    return rows, columns


@dataclass
class AttackResult:
    config: dict[str, Any]
    identities: list[dict[str, Any]]
    summary: dict[str, Any]
    compare: Optional[dict[str, Any]] = None
    # (--fail-on-exposed file, 1-based line) of each gate name still exposed
    gate_exposed: list[tuple[str, int]] = field(default_factory=list)
    # key(name) → "#line of --fail-on-exposed" for the gate's and --forgotten's names: the terminal
    # shows them by position only (CI logs), the --output report the user asked for by name
    protected: dict[str, str] = field(default_factory=dict)

    def label(self, name: str, show_names: bool = False) -> str:
        return name if show_names else self.protected.get(key(name), name)

    def to_json(self) -> dict[str, Any]:
        data = {"config": self.config, "identities": self.identities, "summary": self.summary}
        if self.compare is not None:
            data["compare"] = self.compare
        return data


def default_data(model_spec: str) -> Path:
    """The synthetic world's faces for a world model (or one unlearned from it), else FaceScrub's default folder."""
    from clip_unlearn.world import model_context

    faces = model_context(model_spec).path("faces")
    if faces is not None:
        return faces
    from clip_unlearn.facescrub import default_out

    default = default_out()
    if not default.is_dir():
        raise ClipUnlearnError(f"no face data: pass --data DIR, or run `clip-unlearn prepare-facescrub` (writes {default})")
    return default


def read_templates(path: Optional[Path]) -> list[str]:
    if path is None:
        return list(PAPER_TEMPLATES)
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8-sig").splitlines()]
    except UnicodeDecodeError:
        raise ClipUnlearnError(f"templates file {path} is not UTF-8 text; save it as UTF-8 with one template per line") from None
    except OSError as e:
        raise ClipUnlearnError(f"templates file {path} cannot be read ({e.strerror}); pass a text file with one template per line") from None
    templates = [ln for ln in lines if ln and not ln.startswith("#")]
    for t in templates:
        try:
            ok = ("{}" in t or "{0}" in t) and t.format("X") != t
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ClipUnlearnError(f"template {t!r} in {path} needs exactly one {{}} or {{0}} for the name")
    if not templates:
        raise ClipUnlearnError(f"templates file {path} is empty; write one template per line, e.g. 'a photo of {{}}'")
    return templates


def laion_counts() -> dict[str, int]:
    """LAION-400M occurrence counts of FaceScrub names (package data from "Does CLIP Know My Face?")."""
    from importlib.resources import files

    with (files("clip_unlearn") / "data" / "laion400m_name_counts.csv").open(encoding="utf-8") as f:
        return {key(row["name"]): int(row["count"]) for row in csv.DictReader(f)}


def resolve_split(cfg: AttackConfig, data: Path) -> str:
    """--split auto: the paper's train half, or the train half of a world whose test half holds triggers."""
    if cfg.split != "auto":
        return cfg.split
    if cfg.preset == "paper":
        return "train"
    from clip_unlearn.world import model_context, world_file_record

    try:
        ctx = model_context(cfg.model)
    except ClipUnlearnError:  # an old model whose world is gone: the split then comes from --data alone
        ctx = None
    if ctx is not None and ctx.is_world and ctx.path("faces") is not None and ctx.path("faces").resolve() == Path(data).resolve():
        return ctx.attack_split or "all"
    if Path(data).name == "faces" and (Path(data).parent / "world.json").is_file():
        # a world's faces attacked with another model: the world still says which half holds the triggers
        try:
            return world_file_record(Path(data).parent).get("attack_split") or "all"
        except ClipUnlearnError:
            return "all"
    return "all"


def select_identities(cfg: AttackConfig, folders: list[IdentityFolder], split: str = "all") -> list[IdentityFolder]:
    """Apply the split, --preset paper (0 < LAION count ≤ 300) and --identities."""
    if split != "all":
        folders = [IdentityFolder(f.name, tuple(p for p in f.files if split_side(f.name, p) == split), f.gender) for f in folders]
    if cfg.preset == "paper":
        counts = laion_counts()
        # a count, not the names: one of them may be a person to forget, and logs go to CI
        unknown = [f for f in folders if key(f.name) not in counts]
        if unknown:
            log.warning("%d identities have no LAION-400M count; not attacked under --preset paper", len(unknown))
        folders = [f for f in folders if 0 < counts.get(key(f.name), 0) <= 300]
    if cfg.identities is not None:
        wanted = read_names(cfg.identities, "identities file")
        by_key = {key(f.name): f for f in folders}
        missing = [n for n in wanted if key(n) not in by_key]
        if missing:
            raise ClipUnlearnError(f"--identities names not in the data: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
        folders = [by_key[key(n)] for n in wanted]
    return folders


def sample_images(encoder: Any, folders: list[IdentityFolder], cfg: AttackConfig) -> tuple[list, Any, dict[str, Any]]:
    """Seeded sample of ``images_per_identity`` readable images per identity (≥ ``min_images`` readable).

    Files are taken in a per-identity seeded order and encoded in rounds until each identity has
    enough readable ones, so unreadable images are replaced without decoding the whole folder.
    Returns (kept [(folder, [paths])], embeddings [M, D], skipped counts).
    """
    import torch

    need = max(cfg.min_images, cfg.images_per_identity)
    order = {}
    for f in folders:
        files = list(f.files)
        random.Random(f"{cfg.seed}|{key(f.name)}").shuffle(files)
        order[f.name] = files
    taken = {f.name: 0 for f in folders}
    good: dict[str, list[tuple[Path, Any]]] = {f.name: [] for f in folders}
    unreadable = 0
    while True:
        batch = []
        for f in folders:
            deficit = need - len(good[f.name])
            if deficit > 0 and taken[f.name] < len(order[f.name]):
                nxt = order[f.name][taken[f.name]:taken[f.name] + deficit]
                taken[f.name] += len(nxt)
                batch.extend((f.name, p) for p in nxt)
        if not batch:
            break
        emb, ok = encoder.images([p for _, p in batch])
        rows = iter(emb)
        for (name, p), readable in zip(batch, ok):
            if readable:
                good[name].append((p, next(rows)))
            else:
                unreadable += 1
    kept, embs = [], []
    too_few = []
    for f in folders:
        if len(good[f.name]) < need:
            too_few.append(f.name)
            continue
        chosen = good[f.name][:cfg.images_per_identity]
        kept.append((f, [p for p, _ in chosen]))
        embs.extend(e for _, e in chosen)
    skipped = {"unreadable_images": unreadable, "too_few_images": too_few}
    return kept, (torch.stack(embs) if embs else None), skipped


def predict_one(images: Any, text: Any, max_scores: int = 1 << 24) -> Any:
    """[M] index of the best of the N candidates ``text`` [N, D] per image [M, D]. At most ``max_scores``
    similarities exist at once (images in chunks), so memory does not grow with images x candidates."""
    import torch

    out = torch.empty(images.shape[0], dtype=torch.long)
    chunk = max(1, max_scores // max(1, text.shape[0]))
    for i in range(0, images.shape[0], chunk):
        out[i:i + chunk] = (images[i:i + chunk] @ text.T).argmax(dim=1)
    return out


def vote(preds: Any, owner: Any, true_idx: Any, n_names: int) -> tuple[Any, Any]:
    """Per identity and template, the unique plurality of its images' predictions (docs/method.md §4 item 8).

    Args:
        preds: [T, M] predicted candidate index per template and image.
        owner: [M] identity index of each image.
        true_idx: [I] candidate index of each identity's true name.
        n_names: number of candidates.
    Returns:
        scores [I] (templates whose unique plurality is the true name), winners [T, I] (-1 on ties).
    """
    import torch

    n_templates, n_ids = preds.shape[0], true_idx.shape[0]
    winners = torch.full((n_templates, n_ids), -1, dtype=torch.long)
    for t in range(n_templates):
        counts = torch.zeros(n_ids, n_names, dtype=torch.long)
        counts.index_put_((owner, preds[t]), torch.ones_like(owner), accumulate=True)
        top = counts.max(dim=1).values
        unique = (counts == top[:, None]).sum(dim=1) == 1
        # not torch.mode: it breaks ties toward the lowest index (docs/design.md §7, lesson 5)
        winners[t] = torch.where(unique, counts.argmax(dim=1), torch.full_like(top, -1))
    scores = (winners == true_idx[None, :]).sum(dim=0)
    return scores, winners


def build_candidates(cfg: AttackConfig, attacked: list[str], all_names: list[str]) -> list[str]:
    if cfg.candidates is not None:
        names = read_names(cfg.candidates, "candidates file")
        if len(names) < 2:
            raise ClipUnlearnError(f"candidates file {cfg.candidates} has {len(names)} name; a zero-shot attack over one "
                                   "candidate names everyone correctly and proves nothing; add candidate names")
        have = {key(n) for n in names}
        missing = [n for n in attacked if key(n) not in have]
        if missing:
            raise ClipUnlearnError(
                f"candidates file {cfg.candidates} lacks {len(missing)} attacked name(s): {', '.join(missing[:5])}"
                f"{' …' if len(missing) > 5 else ''}; add them or drop those identities with --identities"
            )
        return names
    extra = cfg.num_candidates - len(attacked)
    if extra < 0:
        raise ClipUnlearnError(f"--num-candidates {cfg.num_candidates} is below the {len(attacked)} attacked identities; raise it")
    rng = random.Random(cfg.seed)
    names = list(attacked) + random_full_names(extra, rng, exclude=all_names)
    rng.shuffle(names)
    return names


def run_attack(cfg: AttackConfig, progress: Progress = None) -> AttackResult:
    """Run the attack described by ``cfg`` (see the attack command's --help)."""

    from clip_unlearn.distributed import setup
    from clip_unlearn.embed import EmbeddingCache, Encoder
    from clip_unlearn.models import load_model

    data = Path(cfg.data) if cfg.data is not None else default_data(cfg.model)
    templates = _checked_templates(cfg)
    all_folders = face_folders(data, view="images")
    split = resolve_split(cfg, data)
    _warn_if_checked(cfg.model, data, split)
    folders = select_identities(cfg, all_folders, split)
    if not folders:
        raise ClipUnlearnError(f"no identities to attack in {data}; check --data, --identities and --preset")
    gates = read_gates(cfg)
    gate = [n for _, names in gates for n in names]
    forgotten = read_names(cfg.forgotten, "--forgotten file") if cfg.forgotten else gate
    previous = load_result(cfg.compare_to) if cfg.compare_to else None

    _, device = setup(cfg.device)  # under torchrun: join the group; encoding is then sharded (embed.py)
    cache = EmbeddingCache(cache_root(cfg.cache_dir))
    cache.check_writable()
    loaded = load_model(cfg.model, device)
    encoder = Encoder(loaded, cache, cfg.batch_size, cfg.precision, progress)
    kept, images, skipped = sample_images(encoder, folders, cfg)
    if not kept:
        raise ClipUnlearnError(
            f"no identity in {data} has {max(cfg.min_images, cfg.images_per_identity)} readable images; "
            "lower --min-images/--images-per-identity or add images"
        )
    candidates = build_candidates(cfg, [f.name for f, _ in kept], [f.name for f in all_folders])
    families = parse_families(cfg.variants)
    by_family = _by_family(cfg, encoder, kept, images, candidates, all_folders, templates)
    rows = _combine(kept, by_family)

    exposed = sum(r["exposed"] for r in rows)
    summary = {"identities": len(rows), "exposed": exposed, "tpr": round(exposed / len(rows), 4),
               "templates": len(templates), "candidates": len(candidates),
               "unreadable_images": skipped["unreadable_images"], "too_few_images": len(skipped["too_few_images"])}
    if families != ("full",):
        summary["families"] = {f: {"exposed": sum(r["variants"][f]["exposed"] for r in rows),
                                   "merged_candidates": sum(len(g) for g in fc.collisions),
                                   "prompts": len(templates) * len(fc.strings)}
                               for f, (fc, _) in by_family.items()}
    config = {**to_dict(cfg), "data": str(data), "split_applied": split, "precision_applied": encoder.precision,
              "variants_applied": list(families), "model_spec": loaded.spec.raw, "model_fingerprint": loaded.fingerprint(),
              "tool_version": __version__, "candidates": candidates, "templates": templates, "cache": dict(cache.stats)}
    log.info("embedding cache: %s", cache.stats)
    labels = {key(n): f"#{i + 1} of --forgotten" for i, n in enumerate(forgotten if cfg.forgotten else [])}
    for j, (_, names) in reversed(list(enumerate(gates))):  # a name in several files: its first file's label
        where = "--fail-on-exposed" + (f" file {j + 1}" if len(gates) > 1 else "")
        labels.update({key(n): f"#{i + 1} of {where}" for i, n in enumerate(names)})
    result = AttackResult(config, rows, summary, protected=labels)
    if gates:
        result.gate_exposed = _gate(gates, rows)
    if previous is not None:
        result.compare = compare(previous, result.to_json(), forgotten)
    return result


def _by_family(cfg: AttackConfig, encoder: Any, kept: list, images: Any, candidates: list[str],
               all_folders: list[IdentityFolder], templates: list[str], persist: bool = True) -> dict[str, tuple[FamilyCandidates, list[dict[str, Any]]]]:
    """Each family of ``cfg.variants``: its candidates and one scored row per kept identity."""
    import torch

    genders = _genders(cfg.model, candidates, all_folders)
    by_family = {}
    for family in parse_families(cfg.variants):
        fc = family_candidates(candidates, family, genders)
        # one template's prompts at a time: what is held is one [candidates, D] block and its scores,
        # never templates x candidates embeddings (10,000 candidates x 21 templates fit in a laptop)
        preds = torch.stack([predict_one(images, encoder.texts([t.format(c) for c in fc.strings], persist=persist,
                                                               span=(j * len(fc.strings), len(templates) * len(fc.strings))))
                             for j, t in enumerate(templates)])
        by_family[family] = (fc, _score(kept, preds, candidates, fc, cfg.threshold))
    return by_family


class Check(NamedTuple):
    """inject's check of a list of names, by 1-based line of that list."""

    exposed: list[int]  # the attack names them (some family's template plurality is the true name)
    near: list[int]  # not exposed, but their true name took at least margin x chance of their predictions
    unchecked: list[int]  # no folder in the data, or too few images


def near_miss(own_share: float, n_groups: int, margin: float) -> bool:
    """Whether a name that no template's plurality named was still predicted for its own images at least
    ``margin`` times as often as chance (one of ``n_groups`` candidates picked at random)."""
    return margin > 0 and own_share >= margin / n_groups


def check_names(loaded: Any, cfg: AttackConfig, names: list[str], cache: Any,
                progress: Progress = None, margin: float = 0.0) -> Check:
    """The attack ``cfg`` on ``loaded`` as it is in memory, on the images of ``names`` only, for inject's check.

    The candidates are those a full attack of ``cfg.data`` would draw (every identity with enough image files,
    then seeded random names), so a name competes with the same others as in the audit. ``margin`` > 0 also
    reports the near misses (``near_miss`` of the own_share the attack reports, in any family): the check sees
    one half of the faces, and a name that is nearly named there can be named on the other. No prompt reaches
    the on-disk cache: they spell the names to forget."""
    from clip_unlearn.embed import Encoder

    templates = _checked_templates(cfg)
    all_folders = face_folders(Path(cfg.data), view="images")
    folders = select_identities(cfg, all_folders, cfg.split)
    line = {key(n): i + 1 for i, n in enumerate(names)}
    encoder = Encoder(loaded, cache, cfg.batch_size, cfg.precision, progress)
    kept, images, _ = sample_images(encoder, [f for f in folders if key(f.name) in line], cfg)
    attacked = {key(f.name) for f, _ in kept}
    unchecked = [i + 1 for i, n in enumerate(names) if key(n) not in attacked]
    if not kept:
        return Check([], [], unchecked)
    need = max(cfg.min_images, cfg.images_per_identity)
    candidates = build_candidates(cfg, [f.name for f in folders if len(f.files) >= need], [f.name for f in all_folders])
    by_family = _by_family(cfg, encoder, kept, images, candidates, all_folders, templates, persist=False)
    rows = _combine(kept, by_family)
    near = [i for i, r in enumerate(rows) if not r["exposed"]
            and any(near_miss(scored[i]["own_share"], len(fc.groups), margin) for fc, scored in by_family.values())]
    return Check(sorted(line[key(r["name"])] for r in rows if r["exposed"]),
                 sorted(line[key(rows[i]["name"])] for i in near), unchecked)


def _warn_if_checked(model_spec: str, data: Path, split: str) -> None:
    """An audit on the images that inject's check used is not independent of them: they chose what was trained again."""
    from clip_unlearn.models import parse_spec, read_sidecar

    try:
        check = ((read_sidecar(parse_spec(model_spec)).get("text") or {}).get("verification")) or {}
    except ClipUnlearnError:
        return
    if check.get("data") and Path(check["data"]).resolve() == Path(data).resolve() and split in (check.get("split"), "all"):
        other = "train" if check.get("split") == "test" else "test"
        log.warning("inject checked this model on the %s half of %s and trained again the names it exposed there; an "
                    "audit of those images is not independent of that choice: attack --split %s", check.get("split"), data, other)


def _checked_templates(cfg: AttackConfig) -> list[str]:
    """The templates, once the threshold and --output are known to make sense with them (before any work)."""
    from clip_unlearn.outputs import check_output_file

    templates = read_templates(cfg.templates)
    if cfg.threshold > len(templates):
        raise ConfigError(f"--threshold {cfg.threshold} is above the {len(templates)} templates: nobody could be exposed "
                          f"and the gate would always pass; use a threshold between 1 and {len(templates)}")
    inputs = [p for p in (cfg.compare_to, cfg.candidates, cfg.templates, cfg.identities, *(cfg.fail_on_exposed or []), cfg.forgotten) if p]
    if cfg.output is not None:
        check_output_file(cfg.output, inputs, "--output", also=_meta_path(cfg.output))
    return templates


def _score(kept: list, predicted: Any, candidates: list[str], fc: FamilyCandidates, threshold: int) -> list[dict[str, Any]]:
    """Per attacked identity under one family, from ``predicted`` [T, M] (the best of ``fc.strings`` per template
    and image): score (templates whose unique plurality is the identity's candidate, merged with those that
    share its string), exposed, the most-voted candidate and whom it merges."""
    import torch

    index = {key(n): i for i, n in enumerate(candidates)}
    group_of = torch.tensor(fc.group_of, dtype=torch.long)
    owner = torch.cat([torch.full((len(paths),), i, dtype=torch.long) for i, (_, paths) in enumerate(kept)])
    true_group = torch.tensor([fc.group_of_candidate[index[key(f.name)]] for f, _ in kept])
    preds = group_of[predicted]
    scores, _ = vote(preds, owner, true_group, len(fc.groups))
    rows = []
    for i, (f, _) in enumerate(kept):
        own = preds[:, owner == i]
        overall = torch.bincount(own.reshape(-1), minlength=len(fc.groups))
        score = int(scores[i])
        mine = fc.groups[int(true_group[i])]
        rows.append({
            "score": score, "exposed": score >= threshold,
            "top_prediction": " / ".join(candidates[c] for c in fc.groups[int(overall.argmax())]),
            "own_share": round(float((own == true_group[i]).float().mean()), 4),
            "merged_with": [candidates[c] for c in mine if key(candidates[c]) != key(f.name)],
        })
    return rows


def _combine(kept: list, by_family: dict[str, tuple[FamilyCandidates, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per identity: exposed if any family exposes it; score, top prediction and own share from the
    family with the highest score (the first in FAMILIES order on a tie); every family's figures under "variants"."""
    rows = []
    for i, (f, paths) in enumerate(kept):
        per = {family: scored[i] for family, (_, scored) in by_family.items()}
        best = max(per, key=lambda fam: per[fam]["score"])  # max keeps the first of equal scores
        row = {"name": f.name, "n_images": len(paths), "score": per[best]["score"],
               "exposed": any(v["exposed"] for v in per.values()), "top_prediction": per[best]["top_prediction"],
               "own_share": per[best]["own_share"], "images": [str(p) for p in paths]}
        if list(per) != ["full"]:
            row["variants"] = per
        rows.append(row)
    return rows


def _genders(model_spec: str, candidates: list[str], folders: list[IdentityFolder]) -> dict[str, str]:
    """names.key → gender for the title family: the candidate pools, then the world's record, then the data's."""
    from clip_unlearn.world import model_context

    genders = pool_genders(candidates)
    try:
        genders.update(model_context(model_spec).genders())
    except ClipUnlearnError:
        pass
    genders.update({key(f.name): f.gender for f in folders if f.gender})
    return genders


def read_gates(cfg: AttackConfig) -> list[tuple[str, list[str]]]:
    """(file as given, its names) for each --fail-on-exposed file, in order."""
    return [(str(f), read_names(f, "--fail-on-exposed file")) for f in cfg.fail_on_exposed or []]


def _gate(gates: list[tuple[str, list[str]]], rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(file, 1-based line) of every gate name still exposed; a name that was not attacked fails the run."""
    attacked = {key(r["name"]) for r in rows}
    for path, names in gates:
        missing = [i + 1 for i, n in enumerate(names) if key(n) not in attacked]
        if missing:
            raise ClipUnlearnError(
                f"{len(missing)} name(s) of the --fail-on-exposed file were not attacked (no folder or too few images): "
                f"line(s) {_positions(missing)} of {path}; a name that was not tested cannot pass the gate"
            )
    exposed = {key(r["name"]) for r in rows if r["exposed"]}
    return [(path, i + 1) for path, names in gates for i, n in enumerate(names) if key(n) in exposed]


def gate_lines(exposed: list[tuple[str, int]]) -> str:
    """ "line(s) #2, #5 of a.txt; #1 of b.txt" """
    by_file: dict[str, list[int]] = {}
    for path, line in exposed:
        by_file.setdefault(path, []).append(line)
    return "line(s) " + "; ".join(f"{_positions(lines)} of {path}" for path, lines in by_file.items())


def _positions(positions: list[int], most: int = 20) -> str:
    shown = ", ".join(f"#{p}" for p in positions[:most])
    return shown + (f" and {len(positions) - most} more" if len(positions) > most else "")


def _meta_path(output: Path) -> Optional[Path]:
    return None if Path(output).suffix.lower() == ".json" else Path(output).with_suffix(".meta.json")


def load_result(path: Path) -> dict[str, Any]:
    """A previous attack result: the JSON, or a CSV with the ``.meta.json`` written beside it."""
    path = Path(path)
    src = path if path.suffix.lower() == ".json" else path.with_suffix(".meta.json")
    not_ours = ClipUnlearnError(f"--compare-to: {src} is not an attack result written by `attack --output`")
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClipUnlearnError(f"--compare-to: {src} does not exist; pass a result written by `attack --output`") from None
    except (OSError, ValueError):
        raise not_ours from None
    ok = (isinstance(data, dict) and isinstance(data.get("identities"), list) and isinstance(data.get("config"), dict)
          and isinstance(data["config"].get("candidates"), list)
          and all(isinstance(r, dict) and {"name", "exposed", "score", "images"} <= set(r) for r in data["identities"]))
    if not ok:
        raise not_ours
    return data


def _describe(value: Any) -> str:
    if isinstance(value, list):  # templates: their count and a digest, so equal counts still read as different
        digest = hashlib.sha256("\n".join(map(str, value)).encode()).hexdigest()[:8]
        return f"{len(value)} templates ({digest})"
    return repr(value)


# What must be equal for two attack runs to be comparable, with the flag that sets it; results
# written before a key existed are refused rather than assumed to match.
COMPARABLE = (("templates", "--templates"), ("threshold", "--threshold"), ("split_applied", "--split"),
              ("precision_applied", "--precision"), ("variants_applied", "--variants"))


def compare(before: dict[str, Any], after: dict[str, Any], forgotten: list[str]) -> dict[str, Any]:
    """Before/after categories of docs/method.md §5 over the identities both runs attacked, image for image."""
    if sorted(map(key, before["config"]["candidates"])) != sorted(map(key, after["config"]["candidates"])):
        raise ClipUnlearnError("--compare-to: the two runs used different candidate names; rerun with the same --seed/--candidates")
    for k, flag_name in COMPARABLE:
        was, now = before["config"].get(k, "(not recorded)"), after["config"].get(k)
        if was != now:
            old = (f" (the result of clip-unlearn {before['config'].get('tool_version', '?')} does not record it)"
                   if k not in before["config"] else "")
            raise ClipUnlearnError(f"--compare-to: the runs differ in {flag_name}: {_describe(was)} before, "
                                   f"{_describe(now)} now; rerun both with the same {flag_name}{old}")
    b = {key(r["name"]): r for r in before["identities"]}
    a = {key(r["name"]): r for r in after["identities"]}
    shared = [k for k in a if k in b]
    if not shared:
        raise ClipUnlearnError("--compare-to: the two runs share no identities")
    differ = [k for k in shared if sorted(a[k]["images"]) != sorted(b[k]["images"])]
    if differ:
        raise ClipUnlearnError(f"--compare-to: {len(differ)} identities were attacked with different images; rerun with the same --data/--seed")
    forget = {key(n) for n in forgotten}
    overall = _categories(shared, b, a, forget, lambda r: r["exposed"])
    families = after["config"].get("variants_applied", ["full"])
    before_exposed = sum(b[k]["exposed"] for k in shared)
    after_exposed = sum(a[k]["exposed"] for k in shared)
    return {
        "shared_identities": len(shared), "forgotten": sum(1 for k in shared if k in forget),
        "tpr_before": round(before_exposed / len(shared), 4), "tpr_after": round(after_exposed / len(shared), 4),
        **overall,
        "scores": {a[k]["name"]: [b[k]["score"], a[k]["score"]] for k in shared},
        **({"families": {f: _categories(shared, b, a, forget, lambda r, f=f: r["variants"][f]["exposed"]) for f in families}}
           if families != ["full"] else {}),
    }


def _categories(shared: list[str], b: dict[str, Any], a: dict[str, Any], forget: set[str],
                exposed: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """docs/method.md §5's categories and their rates, with ``exposed`` telling what counts as exposed in a row."""
    cats: dict[str, list[str]] = {"correctly_unlearned": [], "failed": [], "not_exposed_before": [],
                                  "wrongfully_unlearned": [], "newly_recalled": [], "unchanged": []}
    for k in shared:
        was, now = exposed(b[k]), exposed(a[k])
        name = a[k]["name"]
        if k in forget:
            cats["correctly_unlearned" if was and not now else "failed" if was else "not_exposed_before"].append(name)
        else:
            cats["wrongfully_unlearned" if was and not now else "newly_recalled" if now and not was else "unchanged"].append(name)
    n_forget = sum(1 for k in shared if k in forget)
    n_other = len(shared) - n_forget

    def share(cat: str, n: int) -> Optional[float]:
        return round(len(cats[cat]) / n, 4) if n else None

    rates = {"correctly_unlearned": share("correctly_unlearned", n_forget), "failed": share("failed", n_forget),
             "wrongfully_unlearned": share("wrongfully_unlearned", n_other), "newly_recalled": share("newly_recalled", n_other),
             "unchanged": share("unchanged", n_other)}
    return {"categories": cats, "rates": rates}
