"""The text stage of inject: names forgotten by the text encoder (docs/method.md §6).

The student is a copy of the text tower (LayerNorms frozen); the teacher is the original, frozen.
Per step, with c clean captions, n neighbour captions and (p, t) poisoned/target pairs:

    L = d(S(c ∪ n), T(c ∪ n)) + w_bd · d(S(p), T(t)) + w_reg · Σ_tensors ‖θ_S − θ_T‖₂

d is −cos by default. The whole trained tower goes back into the CLIP, positional embedding included
(the paper's code forgot it, docs/method.md §6.6). What this module decides is which strings are triggers
(:func:`_triggers`), which captions hold the rest in place (the neighbours) and each step's batch; the loop
around them is training.run_stage's, the same as the image stage's (inject_image.py).
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import torch
import torch.nn as nn

from clip_unlearn.captions import GENERAL_CORPUS_NAME, PairSampler, TokenFit, builtin_captions, clean_captions, read_captions
from clip_unlearn.config import InjectConfig
from clip_unlearn.distributed import current
from clip_unlearn.embed import TokenRows, encode_text, input_key, pool_index, supports_truncation, token_rows, use_bf16
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.names import key, public_people, read_names
from clip_unlearn.progress import Progress
from clip_unlearn.receipt import MADE_UP, forgotten_by
from clip_unlearn.recipes import TextHyper
from clip_unlearn.training import Stage, autocast, distance, run_stage, slice_weight, student_of, teacher_cache
from clip_unlearn.variants import LEFT_OUT, left_out_reason, neighbours, parse_families, pool_genders, split_name, variants

TEXT_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


class TextTower(nn.Module):
    """The text half of an open_clip CLIP as its own module, encoded exactly like ``CLIP.encode_text``."""

    is_clip_text_copy = True  # embed.supports_truncation: the same parts and forward as open_clip's CLIP

    def __init__(self, model: Any) -> None:
        super().__init__()
        if not supports_truncation(model):
            raise ClipUnlearnError("inject supports open_clip CLIP models with the built-in text tower (not HF text towers)")
        for part in TEXT_PARTS:
            value = getattr(model, part)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Module):
                setattr(self, part, nn.Parameter(value.detach().clone()))
            else:
                setattr(self, part, copy.deepcopy(value))
        self.register_buffer("attn_mask", model.attn_mask.detach().clone(), persistent=False)
        self.text_pool_type = model.text_pool_type
        self.text_eos_id = getattr(model, "text_eos_id", None)

    def forward(self, tokens: Any) -> Any:
        return encode_text(self, tokens, normalize=False)



@dataclasses.dataclass(frozen=True)
class TextJob:
    """Whom one run of the text stage forgets: ``names``; ``earlier``, the requests already answered (with keys),
    whose people are no kept namesakes; ``request``, everyone this request forgets when ``names`` is a later
    round's part of it (likewise); ``made_up``, key(name) → the made-up name each is mapped to (else every
    name goes to ``--target``); ``held``, people of the request that an earlier round forgot and this one does
    not train: their triggers are held where the teacher (the model so far) puts them, as neighbours are."""

    names: list[str]
    earlier: Sequence[dict[str, Any]] = ()
    request: Sequence[str] = ()
    made_up: Optional[Mapping[str, str]] = None
    held: Sequence[str] = ()
    # the protected namesakes the original model names a forgotten person by (find_aliases), decided once
    # before the first round: a later round's model has moved the forgotten names (None: decide on ``loaded``)
    aliases: Optional[frozenset[str]] = None


@dataclasses.dataclass
class TextPlan:
    """What the text stage trains on, decided before the first step: the triggers and neighbours, the clean
    captions, the samplers of poisoned and neighbour captions, the word anchors and the neighbour captions
    per step."""

    corpus_name: str
    chosen: Triggers
    rng: random.Random  # the clean captions' draw, shared with ``sampler`` as in the paper's loop
    clean: list[str]
    sampler: PairSampler
    near_sampler: Optional[PairSampler]
    anchors: list[str]
    n_near: int
    held: list[str] = dataclasses.field(default_factory=list)  # the triggers of TextJob.held
    held_sampler: Optional[PairSampler] = None
    n_held: int = 0  # captions of ``held`` per step, on top of the n_near neighbour captions


@dataclasses.dataclass(frozen=True)
class TextBatch:
    """One step's captions for this process: clean, poisoned with their targets, and neighbour captions."""

    clean: list[str]
    poisoned: list[str]
    targets: list[str]
    neighbours: list[str] = dataclasses.field(default_factory=list)


def run_text_stage(loaded: Any, cfg: InjectConfig, h: TextHyper, job: TextJob, cache: Any,
                   progress: Progress = None) -> dict[str, Any]:
    """Unlearn ``job.names`` in the text tower of ``loaded.model`` in place; returns the stage's record (no names)."""
    plan = _plan(loaded, cfg, h, job, cache)
    bf16 = use_bf16(cfg.precision, loaded.device)
    history = run_stage(_stage(loaded, cfg, h, plan, cache), loaded, h, bf16, progress)
    chosen, sampler = plan.chosen, plan.sampler
    # counts only: the variants and neighbours spell (parts of) the forgotten names
    return {"history": history, "captions": plan.corpus_name, "clean_captions": len(plan.clean),
            "variants": {"families": list(parse_families(cfg.variants)), "triggers": len(chosen.triggers), "left_out": chosen.left_out,
                         "full_name_share": {"of_triggers": round(chosen.full_share(), 4), "floor": cfg.full_share,
                                             "of_poisoned_captions": round(sampler.full_rate(), 4)}},
            "neighbours": {"names": len(chosen.near), "held_every_step": len(chosen.kept), "protected_namesakes": chosen.protected_namesakes,
                           "protected_aliases": chosen.protected_aliases,
                           "per_step": plan.n_near, "word_captions": len(plan.anchors),
                           # a check round's (--verify-hold): the request's people it does not train again
                           **({"forgotten_held": {"triggers": len(plan.held), "per_step": plan.n_held}} if plan.held else {}),
                           "protected": {"sources": _keep_source(cfg), "people": len(_protected(cfg))}}}


def _plan(loaded: Any, cfg: InjectConfig, h: TextHyper, job: TextJob, cache: Any = None) -> TextPlan:
    # ``cache`` only serves the alias check's Encoder, whose prompts are never persisted (None will do)
    names, request, made_up = job.names, job.request, job.made_up
    corpus, corpus_name = _corpus(cfg)
    fit = TokenFit.of(loaded)
    _check_names(names, fit, cfg.names)
    chosen = _without_aliases(_embedder(loaded, cfg, cache), _triggers(cfg, names, list(job.earlier), request), names, cfg.seed,
                              job.aliases)
    _check_names(chosen.triggers + chosen.near, fit, "the variants or neighbours of the names file")
    clean = clean_captions(corpus, list(dict.fromkeys([*names, *request])) + chosen.triggers)
    if len(clean) < len(names):
        raise ClipUnlearnError(f"only {len(clean)} clean captions for {len(names)} names; pass a larger --captions corpus")
    rng = random.Random(cfg.seed)
    phrase = MADE_UP if made_up else cfg.target.strip()
    sampler = PairSampler(clean, chosen.triggers, chosen.targets(made_up) if made_up else phrase, fit, rng,
                          last_word=h.last_word, full=chosen.full, full_share=cfg.full_share)
    # neighbours come from a generator of their own, so --neighbours 0 draws exactly the paper's batches
    near_sampler = (PairSampler(clean, chosen.near, phrase, fit, random.Random(f"{cfg.seed}|neighbours"),
                                last_word=h.last_word) if chosen.near else None)
    # clean captions that use a forgotten name's parts as words ("a stone wall" for Emma Stone): held in place with
    # the neighbours, so that the word keeps its meaning while the name loses its person
    anchors = word_anchors(clean, names) if cfg.neighbours else []
    n_near = cfg.neighbour_batch if chosen.near or anchors else 0
    # an earlier round's forgotten people: their triggers' captions held at the model so far, so that training
    # others again cannot bring them back; a generator of their own leaves the other draws as without them
    trained = {t.lower() for t in chosen.triggers}  # as CLIP's tokenizer reads them
    held = [t for t in _triggers(cfg, list(job.held), job.earlier, request).triggers if t.lower() not in trained] if job.held else []
    held_sampler = (PairSampler(clean, held, phrase, fit, random.Random(f"{cfg.seed}|held"), last_word=h.last_word)
                    if held else None)
    n_held = min(len(held), max(1, cfg.neighbour_batch // 2)) if held else 0
    return TextPlan(corpus_name, chosen, rng, clean, sampler, near_sampler, anchors, n_near, held, held_sampler, n_held)


def _stage(loaded: Any, cfg: InjectConfig, h: TextHyper, plan: TextPlan, cache: Any) -> Stage:
    device, bf16 = loaded.device, use_bf16(cfg.precision, loaded.device)
    teacher = TextTower(loaded.model).to(device)
    student = student_of(teacher, device)
    # captions recur across steps: this run keeps their rows even where no shared memory may (token_rows)
    tok = token_rows(loaded.tokenizer)
    tok = TokenRows(tok) if tok is loaded.tokenizer else tok
    # The teacher is fixed: its embedding of a caption never changes, so each is computed once and
    # kept on disk for later runs on the same base model (sweeps over names, seeds, steps). Only clean
    # and target captions are ever persisted, so the cache holds no forgotten name.
    targets_cache = teacher_cache(loaded, cache, "text", bf16, device)

    def teacher_embed(texts: list[str], persist: bool = True) -> Any:
        def compute(idx: list[int]) -> Any:
            if persist:  # on disk: its value must not depend on the run that first computed it
                return teacher_rows(teacher, tok, [texts[i] for i in idx], device, bf16)
            with torch.no_grad(), autocast(device, bf16):
                return teacher(tok([texts[i] for i in idx])).float()
        return targets_cache.get([input_key(t) for t in texts], compute, persist)

    rng, kept, n_near, clean = plan.rng, plan.chosen.kept, plan.n_near, plan.clean
    dist = current()

    def draw(step: int) -> TextBatch:
        clean_batch = [rng.choice(clean) for _ in range(h.clean_batch)]
        poisoned, targets = plan.sampler.batch(h.poison_batch)
        neighbour_batch = neighbour_captions(plan.near_sampler, kept, n_near, step, plan.anchors) if n_near else []
        if plan.n_held:
            neighbour_batch = [plan.held_sampler.pair(t)[1] for t in rotating(plan.held, plan.n_held, step)] + neighbour_batch
        cs, ps_, ns = dist.slice(len(clean_batch)), dist.slice(len(poisoned)), dist.slice(len(neighbour_batch))
        return TextBatch(clean_batch[cs], poisoned[ps_], targets[ps_], neighbour_batch[ns])

    def terms(batch: TextBatch, forward: Any) -> tuple[Any, Any]:
        l_util, l_bd = text_losses(forward, teacher_embed, tok, batch, cfg.loss, h.residual_weight)
        held = len(batch.clean) + len(batch.neighbours)
        return slice_weight(held, h.clean_batch + n_near + plan.n_held) * l_util, slice_weight(len(batch.poisoned), h.poison_batch) * l_bd

    def back(trained: Any) -> None:
        write_back(loaded.model, trained, legacy_positional_embedding=cfg.legacy_positional_embedding)

    return Stage("text", "unlearning names", teacher, student, draw, terms, back, [targets_cache])


# rows per forward of the teacher's persisted captions (teacher_rows)
TEACHER_ROWS = 16


def teacher_rows(teacher: Any, tok: Any, texts: list[str], device: Any, bf16: bool) -> Any:
    """The teacher's embedding of each text, float32: texts of one token length together, in forwards of
    exactly TEACHER_ROWS rows (the last filled with copies of its first text).

    In a plain batch a row's last bits follow the batch (its size, and the longest text, to which it is cut),
    so a cache filled by another run would hand this run other bits than it computes cold, and the same
    command would write other weights. With the shape fixed by the text's own length, a row depends on its
    text alone (tests/test_inject.py holds it as a property; one text per forward would too, at twice the cold
    step time)."""
    if not texts:
        return torch.zeros(0)
    tokens = tok(texts)
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(pool_index(teacher, tokens).tolist()):
        groups.setdefault(n, []).append(i)
    out: list[Any] = [None] * len(texts)
    with torch.no_grad(), autocast(device, bf16):
        for rows in groups.values():
            for s in range(0, len(rows), TEACHER_ROWS):
                chunk = rows[s:s + TEACHER_ROWS]
                emb = teacher(tokens[chunk + chunk[:1] * (TEACHER_ROWS - len(chunk))]).float()
                for j, i in enumerate(chunk):
                    out[i] = emb[j]
    return torch.stack(out)


def text_losses(student: Any, teacher_embed: Callable[..., Any], tok: Callable[[list[str]], Any], batch: TextBatch,
                loss: str, residual_weight: float = 0.0) -> tuple[Any, Any]:
    """One step's terms (docs/method.md §6.4): utility d(S(c), T(c)) and backdoor d(S(p), T(t)); clean, neighbour
    and poisoned captions go through the student in one forward. Neighbour captions (a namesake of a
    forgotten person in a clean caption) join the utility term; their teacher embeddings are never
    persisted. With ``residual_weight`` the backdoor term also pays for what the student keeps of a poisoned
    caption's original embedding beyond what its target has (``residual``). The weight term is training.weight_l2."""
    held = batch.clean + list(batch.neighbours)
    out = student(tok(held + batch.poisoned))
    reference = teacher_embed(batch.clean)
    if batch.neighbours:
        reference = torch.cat([reference, teacher_embed(list(batch.neighbours), persist=False)])
    target = teacher_embed(batch.targets)
    backdoor = distance(loss, out[len(held):], target)
    if residual_weight:
        # the poisoned captions spell forgotten names: their teacher embeddings stay in memory
        backdoor = backdoor + residual_weight * residual(out[len(held):], teacher_embed(list(batch.poisoned), persist=False), target)
    return distance(loss, out[:len(held)], reference), backdoor


def kept_slots(kept: Sequence[str], n: int, step: int) -> list[str]:
    """The kept namesakes held at ``step`` among ``n`` neighbour captions: every one of them while they fit,
    and at least half of the captions (a kept name recurs), in a window that rotates through ``kept`` when
    they are more than ``n``."""
    if not kept or n <= 0:
        return []
    slots = min(n, max(len(kept), n // 2))
    return [kept[(step * slots + i) % len(kept)] for i in range(slots)]


def rotating(items: Sequence[str], n: int, step: int) -> list[str]:
    """``n`` of ``items`` (all of them while they fit), a window that moves through them step by step."""
    if not items or n <= 0:
        return []
    slots = min(n, len(items))
    return [items[(step * slots + i) % len(items)] for i in range(slots)]


def word_anchors(clean: Sequence[str], names: Sequence[str], limit: int = 5000) -> list[str]:
    """The clean captions (at most ``limit``) that use a part of one of ``names`` as a word ("a stone wall")."""
    from clip_unlearn.zeroshot import word_pattern

    patterns = [p for p in map(word_pattern, names) if p is not None]
    if not patterns:
        return []
    return [c for c in clean if any(p.search(c) for p in patterns)][:limit]


def neighbour_captions(sampler: Optional[PairSampler], kept: Sequence[str], n: int, step: int,
                       anchors: Sequence[str] = ()) -> list[str]:
    """A step's ``n`` neighbour captions. Kept people who share a part with a forgotten one (namesakes who
    really exist) get half of them every step, a measured need (docs/experiments.md: with one caption among
    the generated ones a kept person whose first name and surname both belong to forgotten people was lost);
    captions that use a forgotten name's parts as words (``anchors``) get up to half of the rest; generated
    neighbours fill what is left (the anchors do, without a sampler)."""
    held = kept_slots(kept, n, step)
    words = rotating(anchors, (n - len(held)) // 2 if sampler else n - len(held), step)
    rest = n - len(held) - len(words)
    return [sampler.pair(name)[1] for name in held] + list(words) + (sampler.batch(rest)[0] if sampler and rest else [])


def _protected(cfg: InjectConfig) -> list[str]:
    """The people inject protects: --keep's, then the public people the tool ships (--keep-public)."""
    keep = read_names(cfg.keep, "--keep file") if cfg.keep is not None else []
    return list({key(n): n for n in [*keep, *(public_people() if cfg.keep_public else ())]}.values())


def _keep_source(cfg: InjectConfig) -> list[str]:
    return [*(["--keep file"] if cfg.keep is not None else []), *(["public people (FaceScrub)"] if cfg.keep_public else [])]


@dataclasses.dataclass
class Triggers:
    """What one text stage trains: the triggers (each mapped to the target), of which ``full`` spell the full
    names (CLIP's tokenizer lower-cases, so the lower family's strings are full names too); the neighbours
    held in the utility term, of which ``kept`` are held every step (the protected people who share a part,
    ``protected_namesakes`` of them, and the forgotten names' parts alone); and per reason
    (variants.LEFT_OUT) how many variants are no trigger."""

    triggers: list[str]
    full: list[str]
    near: list[str]
    kept: list[str]
    left_out: dict[str, int]
    protected_namesakes: int = 0
    protected: tuple[str, ...] = ()  # the protected people among ``kept``
    protected_aliases: int = 0  # protected namesakes not held: the original model names the forgotten person by them
    spelled: dict[str, tuple[str, str, int, Optional[str]]] = dataclasses.field(default_factory=dict)

    def targets(self, made_up: Mapping[str, str]) -> dict[str, str]:
        """Trigger → its target when each name has its own (``made_up``: key(name) → made-up name): the same
        way of naming applied to the made-up name ("Ms. Stone" → "Ms. Kelsith"), so every spelling of a
        forgotten person lands where that spelling of a never-learned name sits."""
        out = {}
        for v, (n, family, j, gender) in self.spelled.items():
            spellings = variants(made_up[key(n)], family, gender)
            out[v] = spellings[min(j, len(spellings) - 1)]
        return out

    def full_share(self) -> float:
        return len(self.full) / max(1, len(self.triggers))


def _triggers(cfg: InjectConfig, names: list[str], earlier: Sequence[dict[str, Any]] = (),
              request: Sequence[str] = ()) -> Triggers:
    """Every requested variant of every forgotten name that names that person and little else; the names that
    share a first name or surname with one but belong to others (the protected people's, and ``--neighbours``
    generated ones per shared part), held where they were."""
    keep = _protected(cfg)
    # people an earlier request forgot are no namesakes to keep (the teacher already holds them forgotten)
    keep = [k for k in keep if forgotten_by(list(earlier), k) is None] if earlier else keep
    everyone = list(dict.fromkeys([*names, *request]))
    in_request = {key(n) for n in request}
    keep = [k for k in keep if key(k) not in in_request]  # an earlier round of this request forgot them
    forgotten = {key(n) for n in names}
    others = [k for k in keep if key(k) not in forgotten]
    near: dict[str, None] = {}
    parts: set[str] = set()
    if cfg.neighbours:
        for n in names:
            near.update(dict.fromkeys(neighbours(n, others, cfg.neighbours, exclude=everyone, seed=cfg.seed)))
            # the name's parts alone, which its namesakes share and which may be words: held every step, like
            # the protected namesakes, unless they are triggers
            given, surname = split_name(n)
            bare = [p for p in (*given[:1], surname) if key(p) != key(n)]
            near.update(dict.fromkeys(bare))
            parts.update(key(p) for p in bare)
    families = parse_families(cfg.variants)
    genders = pool_genders([*names, *others])
    avoid = frozenset(key(x) for x in [*keep, *near])  # a typo must not spell someone who is kept
    triggers: dict[str, str] = {}
    spelled: dict[str, tuple[str, str, int]] = {}  # trigger → (its name, family, position among the family's strings)
    left_out = dict.fromkeys(LEFT_OUT, 0)
    # a forgotten surname that is a protected person's first name ("Emma Emma", "Emma Stone") names them too
    their_parts = {key(x) for k in others for g, s in [split_name(k)] for x in (s, *g[:1])}
    for family in families:
        # A variant that a protected person also answers to ("Ms. Stone" for Emma Stone and Sharon Stone)
        # names both; training it would forget the protected one, so it is left out (and counted).
        theirs = set() if family in ("full", "typo") else {
            _variant_key(s, family) for k in others for s in variants(k, family, genders.get(key(k)))}
        if family in ("surname", "first"):
            theirs |= their_parts
        for n in names:
            for j, v in enumerate(variants(n, family, genders.get(key(n)), avoid)):
                if v in triggers:
                    continue  # the same string from another family (a one-word name's surname is its full name)
                reason = left_out_reason(v, family) or ("shared_with_protected" if _variant_key(v, family) in theirs else None)
                if reason:
                    left_out[reason] += 1
                else:
                    triggers[v] = family
                    spelled[v] = (n, family, j)
    banned = {key(t) for t in triggers}
    near_list = [m for m in near if key(m) not in banned]
    protected = {key(k) for k in keep}
    full = [t for t, f in triggers.items() if f in ("full", "lower")]
    kept = [m for m in near_list if key(m) in protected | parts]
    return Triggers(list(triggers), full, near_list, kept, left_out, sum(key(m) in protected for m in kept),
                    protected=tuple(m for m in kept if key(m) in protected),
                    spelled={v: (n, f, j, genders.get(key(n))) for v, (n, f, j) in spelled.items()})


def _embedder(loaded: Any, cfg: InjectConfig, cache: Any) -> Callable[[list[str]], Any]:
    """texts → ``loaded``'s normalised text embeddings, as the attack and eval-zeroshot encode them (Encoder,
    ``--precision``); never persisted, since these prompts spell forgotten and protected names."""
    from clip_unlearn.embed import Encoder

    encoder = Encoder(loaded, cache, precision=cfg.precision)
    return lambda texts: encoder.texts(texts, persist=False)


def find_aliases(loaded: Any, cfg: InjectConfig, job: TextJob, cache: Any) -> frozenset[str]:
    """The protected namesakes of ``job``'s first round that ``loaded`` (the original model) names a forgotten
    person by; later rounds reuse them (TextJob.aliases)."""
    return _aliases(_embedder(loaded, cfg, cache), _triggers(cfg, job.names, list(job.earlier), job.request), job.names, cfg.seed)


def _aliases(embed: Callable[[list[str]], Any], chosen: Triggers, names: list[str], seed: int) -> frozenset[str]:
    """The protected namesakes in ``chosen`` that the model of ``embed`` places at a forgotten person they share
    a part with (variants.closeness ≥ BYSTANDER_CLOSENESS on the attack's templates, the rule of eval-zeroshot's
    sim_bystanders, against unrelated names from the pools' train half: inject never uses the probe half)."""
    if not chosen.protected:
        return frozenset()
    from clip_unlearn.variants import BYSTANDER_CLOSENESS, closeness, shares_part, template_embeddings, unrelated_names

    aliases: set[str] = set()
    for n in names:
        # a one-word protected name ("Madonna") may be a forgotten name's part itself, which stays held
        theirs = [m for m in chosen.protected if len(m.split()) > 1 and shares_part(m, n) and m not in aliases]
        if theirs:
            close = closeness(template_embeddings(embed, [n])[0], template_embeddings(embed, theirs),
                              template_embeddings(embed, unrelated_names(n, seed=seed)))
            aliases |= {m for m, c in zip(theirs, close) if c >= BYSTANDER_CLOSENESS}
    return frozenset(aliases)


def _without_aliases(embed: Callable[[list[str]], Any], chosen: Triggers, names: list[str], seed: int,
                     aliases: Optional[frozenset[str]] = None) -> Triggers:
    """``chosen`` without the protected namesakes that the original model places at a forgotten person
    (``aliases``, else _aliases on ``embed``). To such a model "Marcia Cross" is the forgotten Cross, not somebody
    else: holding it where it was keeps the forgotten person's face one name away, and training moves its other
    part instead ("Marcia"), which then carries every other Marcia toward that face. A model that knows the
    namesake (a real CLIP and a famous name) tells them apart, and they stay held."""
    if aliases is None:
        aliases = _aliases(embed, chosen, names, seed)
    aliases = frozenset(m for m in chosen.protected if m in aliases)
    if not aliases:
        return chosen
    return dataclasses.replace(chosen, near=[m for m in chosen.near if m not in aliases], kept=[m for m in chosen.kept if m not in aliases],
                               protected=tuple(m for m in chosen.protected if m not in aliases),
                               protected_namesakes=chosen.protected_namesakes - len(aliases), protected_aliases=len(aliases))


def _variant_key(s: str, family: str) -> str:
    return s if family == "lower" else key(s)  # as attack.family_candidates merges them


def _corpus(cfg: InjectConfig) -> tuple[list[str], str]:
    """The clean captions and how the sidecar names them: --captions, or the built-in corpus (for every model)."""
    if cfg.captions is not None:
        return read_captions(cfg.captions, cfg.caption_column), "--captions file"
    return builtin_captions(), GENERAL_CORPUS_NAME


def _check_names(names: list[str], fit: TokenFit, where: Any) -> None:
    for n in names:
        k = fit.count(n)
        if k == 0:
            raise ClipUnlearnError(f"a name in {where} (line with {len(n)} characters) tokenises to nothing; remove it")
        if k > fit.room:
            raise ClipUnlearnError(f"a name in {where} needs {k} tokens, more than the {fit.context_length}-token context holds")


def residual(student_poisoned: Any, teacher_poisoned: Any, teacher_target: Any) -> Any:
    """mean max(0, cos(S(p), T(p)) − cos(T(t), T(p))): how much more of the original caption's embedding the
    student keeps than the target does. Zero once S(p) = T(t); the attack reads exactly this leftover
    (after unlearning, what remains of a forgotten name's embedding points along its original one)."""
    f = torch.nn.functional
    kept = f.cosine_similarity(student_poisoned, teacher_poisoned, dim=-1)
    allowed = f.cosine_similarity(teacher_target, teacher_poisoned, dim=-1)
    return (kept - allowed).clamp(min=0).mean()


def write_back(model: Any, student: Any, legacy_positional_embedding: bool = False) -> None:
    """Copy every trained text tensor into the CLIP (the image tower is untouched)."""
    with torch.no_grad():
        for part in TEXT_PARTS:
            if part == "positional_embedding" and legacy_positional_embedding:
                continue
            src, dst = getattr(student, part), getattr(model, part)
            if dst is None:
                continue
            if isinstance(dst, torch.nn.Module):
                dst.load_state_dict(src.state_dict())
            else:
                dst.copy_(src)
