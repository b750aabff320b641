"""The device rule without a GPU: what comes out of a cache or a collective lands on the consumer's device and
dtype, the fast paths need no host sync yet equal the slow ones, and the training loop's batched logging
keeps every step's figures. tests/gpu runs the same paths on CUDA."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clip_unlearn.augment import jitter_factors, paste_faces, paste_geometry
from clip_unlearn.distributed import choose_backend, device_for
from clip_unlearn.embed import EmbeddingCache, supports_truncation
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.models import import_open_clip
from clip_unlearn.training import LOG_EVERY, Stage, TeacherCache, adamw_kwargs, train

# --- caches ----------------------------------------------------------------------------------------


def _computed(rows: int, dtype=torch.bfloat16):
    def compute(idx):
        return (torch.arange(len(idx) * 4, dtype=torch.float32).reshape(len(idx), 4) + 100 * torch.tensor(idx)[:, None]).to(dtype)
    return compute


def test_teacher_cache_returns_disk_hits_and_fresh_outputs_on_the_consumers_device_and_dtype(tmp_path):
    stored = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    EmbeddingCache(tmp_path).store("teacher-x", ["on disk"], stored)
    # "meta" stands for an accelerator: a row that skipped the move would fail the stack beside the others
    for device, dtype in (("meta", torch.float16), ("cpu", torch.float64)):
        cache = TeacherCache(EmbeddingCache(tmp_path), "teacher-x", "text", device=device, dtype=dtype)
        out = cache.get(["on disk", "fresh", "private"][:2], _computed(1))
        hidden = cache.get(["private", "on disk"], _computed(1), persist=False)
        for t in (out, hidden):
            assert t.device.type == device and t.dtype == dtype and t.shape == (2, 4)
        if device == "cpu":
            assert torch.equal(out[0], stored[0].double()) and torch.equal(hidden[1], stored[0].double())
        assert cache.get([], _computed(1)).device.type == device


def test_flushed_teacher_outputs_are_float32_on_the_cpu_and_read_back_equal(tmp_path):
    cache = TeacherCache(EmbeddingCache(tmp_path), "teacher-x", "text", dtype=torch.float64)
    first = cache.get(["a", "b"], _computed(2, torch.bfloat16))
    cache.flush()
    again = EmbeddingCache(tmp_path)
    found = again.lookup("teacher-x", ["a", "b"], "text")
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in found.values())
    assert torch.equal(torch.stack([found["a"], found["b"]]).double(), first)


def test_the_embedding_cache_holds_float32_cpu_whatever_it_is_given(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.store("ns", ["k"], torch.ones(1, 3, dtype=torch.bfloat16, requires_grad=False))
    assert cache.lookup("ns", ["k"], "text")["k"].dtype == torch.float32
    assert EmbeddingCache(tmp_path).lookup("ns", ["k"], "text")["k"].dtype == torch.float32


# --- collectives -----------------------------------------------------------------------------------


def test_nccl_collectives_take_cuda_tensors_and_gloo_cpu_ones():
    assert device_for("nccl").type == "cuda" and device_for("gloo") == torch.device("cpu")


@pytest.mark.parametrize("cuda, ranks, gpus, override, expected", [
    (True, 2, 2, "", "nccl"), (True, 1, 1, "", "nccl"), (True, 2, 1, "", "gloo"),  # two ranks on one GPU: gloo
    (False, 2, 0, "", "gloo"), (True, 2, 2, "gloo", "gloo"), (True, 2, 1, "nccl", "nccl"),
])
def test_backend_choice(cuda, ranks, gpus, override, expected):
    assert choose_backend(cuda, ranks, gpus, override) == expected


@pytest.mark.parametrize("override", ["mpi", "NCCL"])
def test_an_unknown_backend_override_is_refused(override):
    with pytest.raises(ClipUnlearnError, match="nccl or gloo"):
        choose_backend(True, 1, 1, override)
    with pytest.raises(ClipUnlearnError, match="needs CUDA"):
        choose_backend(False, 1, 0, "nccl")


# --- the fast text path's causality verdict ---------------------------------------------------------


def test_the_causal_verdict_follows_the_mask_tensor():
    open_clip = import_open_clip()
    model = open_clip.create_model("clip-unlearn-micro").eval()
    assert supports_truncation(model) and supports_truncation(model)  # the second from the kept verdict
    model.attn_mask[0, 1] = 0.0  # edited in place: a new version of the same tensor
    assert not supports_truncation(model)
    model.attn_mask[0, 1] = float("-inf")
    assert supports_truncation(model)
    twin = copy.deepcopy(model)
    twin.attn_mask.fill_(0.0)  # a copy's edit does not touch the original's verdict, nor the reverse
    assert not supports_truncation(twin) and supports_truncation(model)
    model.attn_mask = torch.zeros_like(model.attn_mask)  # a new tensor
    assert not supports_truncation(model)
    with torch.inference_mode():  # a mask made in inference mode has no version counter: checked every call
        inf_mask = torch.full_like(twin.attn_mask, float("-inf")).triu_(1)
    twin.attn_mask = inf_mask
    assert supports_truncation(twin) and supports_truncation(twin)


# --- the paste without a per-image loop equals the loop ---------------------------------------------


def _paste_per_image(bases, faces, geo, jitter=None):
    """The composition step as a loop over images (the code before it was batched), after the same warp."""
    import torch.nn.functional as F

    from clip_unlearn.augment import apply_jitter

    n, _, S, _ = bases.shape
    side = geo["side"]
    hi = int(side.max())
    buf = torch.zeros(n, 4, hi, hi)
    faces = torch.where(geo["flip"].view(-1, 1, 1, 1), faces.flip(-1), faces)
    for s in side.unique().tolist():
        rows = (side == s).nonzero().flatten()
        f = F.interpolate(faces[rows], size=(s, s), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        if jitter is not None:
            f = apply_jitter(f, jitter[rows])
        buf[rows, :3, :s, :s] = f
        buf[rows, 3, :s, :s] = 1.0
    box, x, y = geo["box"], geo["x"], geo["y"]
    W = int(box.max())
    ox, oy = x.clamp(max=S - W), y.clamp(max=S - W)
    theta = torch.deg2rad(geo["angle"].float())
    cos, sin = torch.cos(theta), torch.sin(theta)
    centre = torch.stack([(x - ox).float() + box.float() / 2, (y - oy).float() + box.float() / 2], -1)
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    A = rot * (W / hi)
    b = (2 / hi) * (torch.einsum("nij,nj->ni", rot, W / 2 - centre) + side.float().unsqueeze(-1) / 2) - 1
    grid = F.affine_grid(torch.cat([A, b.unsqueeze(-1)], -1), [n, 4, W, W], align_corners=False)
    rgb = F.grid_sample(buf[:, :3], grid, mode="bicubic", padding_mode="zeros", align_corners=False).clamp(0, 1)
    mask = F.grid_sample(buf[:, 3:], grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)
    u = torch.arange(W)
    inx = (u + ox.view(-1, 1) >= x.view(-1, 1)) & (u + ox.view(-1, 1) < (x + box).view(-1, 1))
    iny = (u + oy.view(-1, 1) >= y.view(-1, 1)) & (u + oy.view(-1, 1) < (y + box).view(-1, 1))
    mask = mask * (iny.unsqueeze(2) & inx.unsqueeze(1)).unsqueeze(1)
    out = bases.clone()
    full = torch.zeros(n, 1, S, S)
    for i, (a, c) in enumerate(zip(ox.tolist(), oy.tolist())):
        region = out[i, :, c:c + W, a:a + W]
        out[i, :, c:c + W, a:a + W] = region * (1 - mask[i]) + rgb[i] * mask[i]
        full[i, :, c:c + W, a:a + W] = mask[i]
    return (out * 255).round() / 255, full


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 7), size=st.sampled_from([32, 48, 64, 224]), seed=st.integers(0, 10_000),
       lo=st.integers(20, 112), span=st.integers(0, 120), jitter=st.booleans())
def test_batched_paste_equals_the_per_image_loop(n, size, seed, lo, span, jitter):
    gen = torch.Generator().manual_seed(seed)
    geo = paste_geometry(n, size, (lo, lo + span), gen)
    bases = torch.rand(n, 3, size, size, generator=gen)
    faces = torch.rand(n, 3, size, size, generator=gen)
    factors = jitter_factors(n, gen) if jitter else None
    ours, our_mask = paste_faces(bases, faces, geo, factors)
    ref, ref_mask = _paste_per_image(bases, faces, geo, factors)
    assert torch.equal(ours, ref) and torch.equal(our_mask, ref_mask)


# --- the training loop -----------------------------------------------------------------------------


class _Hyper:
    steps, lr, milestones, gamma, backdoor_weight, weight_reg = 23, 1e-2, (10, 20), 0.5, 0.6, 0.01


def _toy(nan_at: int = 0):
    torch.manual_seed(0)
    teacher = torch.nn.Linear(4, 3)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(1)

    def draw(step):
        return step, torch.randn(8, 4, generator=gen)

    def terms(batch, forward):
        step, x = batch
        utility = ((forward(x) - teacher(x)) ** 2).mean()
        backdoor = (forward(x) - 1).pow(2).mean()
        if nan_at and step + 1 == nan_at:
            backdoor = backdoor * float("nan")
        return utility, (0 if step == 4 else backdoor)  # a stage may hand back a plain 0 for an empty slice
    return Stage("text", "toy", teacher, student, draw, terms, lambda trained: None)


def test_train_keeps_one_row_per_step_and_reports_when_figures_reach_the_host():
    h = _Hyper()
    ticks = []
    history = train(_toy(), h, "cpu", False, lambda *a: ticks.append(a[1]))
    assert [r["step"] for r in history] == list(range(1, h.steps + 1))
    assert ticks == [1, *range(LOG_EVERY, h.steps, LOG_EVERY), h.steps]
    assert history[4]["backdoor"] == 0.0 and all(math.isfinite(r["loss"]) for r in history)
    # the rate the next step uses, as MultiStepLR sets it: halved after steps 10 and 20
    assert history[8]["lr"] == pytest.approx(1e-2) and history[9]["lr"] == pytest.approx(5e-3)
    assert history[19]["lr"] == pytest.approx(2.5e-3)
    for r in history:
        assert r["loss"] == pytest.approx(r["utility"] + 0.6 * r["backdoor"] + 0.01 * r["weight_l2"], abs=1e-12)
    # the figures are those of the step they name: replay the same steps and read every loss at once
    toy = _toy()
    student2, teacher2, draw2, terms2 = toy.student, toy.teacher, toy.draw, toy.terms
    opt = torch.optim.AdamW([p for p in student2.parameters() if p.requires_grad], lr=h.lr, weight_decay=0.0, **adamw_kwargs("cpu"))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(h.milestones), gamma=h.gamma)
    for step in range(3):
        u, b = terms2(draw2(step), student2)
        w = sum(torch.linalg.vector_norm(ps - pt) for ps, pt in zip(student2.parameters(), teacher2.parameters()))
        assert (history[step]["utility"], history[step]["weight_l2"]) == (float(u.detach()), float(w.detach()))
        (u + 0.6 * b + 0.01 * w).backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def test_train_names_the_step_a_loss_diverged_at():
    with pytest.raises(ClipUnlearnError, match="diverged at step 13"):
        train(_toy(nan_at=13), _Hyper(), "cpu", False)


def _text_stage_on_micro(micro_model_dir, tmp_path, seed: int):
    from clip_unlearn.config import InjectConfig
    from clip_unlearn.inject_text import TextJob, _plan, _stage
    from clip_unlearn.models import load_model
    from clip_unlearn.training import run_stage

    tmp_path.mkdir(parents=True)
    names = tmp_path / "n.txt"
    names.write_text("Zed Quux\n")
    captions = tmp_path / "c.txt"
    captions.write_text("".join(f"a photo of a red {w} on the table\n" for w in ("cup", "book", "lamp", "chair", "plate")))
    cfg = InjectConfig(model=str(micro_model_dir), names=names, captions=captions, steps=4, clean_batch=4, poison_batch=4,
                       neighbours=0, keep_public=False, seed=seed, device="cpu")
    loaded = load_model(str(micro_model_dir), "cpu")
    h = cfg.hyper({}, "text")
    stage = _stage(loaded, cfg, h, _plan(loaded, cfg, h, TextJob(["Zed Quux"])), EmbeddingCache(tmp_path / "cache"))
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    history = run_stage(stage, loaded, h, False)
    return loaded, stage, before, history


def test_run_stage_trains_the_text_stage_of_the_micro_model_and_writes_only_the_text_tower_back(micro_model_dir, tmp_path):
    loaded, stage, before, history = _text_stage_on_micro(micro_model_dir, tmp_path / "a", seed=0)
    after = loaded.model.state_dict()
    assert [r["step"] for r in history] == [1, 2, 3, 4] and {r["encoder"] for r in history} == {"text"}
    assert all(math.isfinite(r["loss"]) for r in history) and history[-1]["weight_l2"] > 0
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(not k.startswith("visual.") for k in changed)  # the image tower is untouched
    assert "token_embedding.weight" in changed and "positional_embedding" in changed  # written back whole (§6.6)
    assert not any(k.startswith("ln_final") or ".ln_" in k for k in changed)  # norms frozen
    # the teacher is the original, frozen; the student is what went back, in eval mode
    assert all(not p.requires_grad for p in stage.teacher.parameters()) and not stage.student.training
    assert torch.equal(stage.teacher.token_embedding.weight, before["token_embedding.weight"])
    assert torch.equal(stage.student.token_embedding.weight, after["token_embedding.weight"])
    # the same seed trains the same weights; another seed draws other batches
    again, _, _, _ = _text_stage_on_micro(micro_model_dir, tmp_path / "b", seed=0)
    other, _, _, _ = _text_stage_on_micro(micro_model_dir, tmp_path / "c", seed=1)
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in after.items())
    assert not torch.equal(after["token_embedding.weight"], other.model.state_dict()["token_embedding.weight"])
