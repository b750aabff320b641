"""Inject speed: seconds per training step at given batch sizes, ours vs the paper's naive loop, and peak memory.

    python benchmarks/bench_inject.py --model world                                  # tiny world model
    python benchmarks/bench_inject.py --model vit-b-32 --repeats 1 --steps 3         # 128 + 128 captions

Ours is run_inject itself, timed two ways: the difference between runs of 1 and 1 + --steps
steps (loading and saving cancel out, but the noise of saving a model does not), and in-loop,
between its progress callbacks after step 1 and after the last step, which is how the naive loop
is timed. Both with the teacher's embedding cache empty (a first run on a base model) and full
(a rerun on the same base model).

The naive baseline is one training step written the way the paper's code does it (docs/method.md §6,
§9), at the same batch sizes: open_clip's fixed-context ``encode_text`` for student and teacher,
the teacher re-encoding the clean and target captions every step, teacher parameters requiring
grad (so the weight term back-propagates into them), every poisoned pair materialised up front
(every name × every clean caption) and the towers moved to the device on every step. Its losses
are ours: the script checks that both give the same loss on one fixed batch and the same weights.

Each variant runs in a fresh process, so each peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import random
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import append, median, random_vit_b32, timed

# The paper's hyper-parameters (docs/method.md §6.5); --preset paper gives run_inject the same.
LR, MILESTONES, GAMMA, W_BD, W_REG, TARGET = 1e-4, [200, 300], 0.5, 0.6, 0.01, "a person"


def peak_gib() -> float:
    """This process's peak resident memory. Linux carries ru_maxrss across exec, so a spawned child would
    report its parent's peak; VmHWM belongs to the process's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def corpus(model: Path, kind: str) -> list[str]:
    """The clean captions run_inject uses by default for this model (world captions or the built-in corpus)."""
    from clip_unlearn.captions import builtin_captions, read_captions, world_captions

    return read_captions(world_captions(model.parent, "train")) if kind == "world" else builtin_captions()


def full_context_tower(model):
    """The paper's text wrapper (docs/method.md §6.1): our TextTower's parts, run through open_clip's own encode_text."""
    from open_clip.model import CLIP

    from clip_unlearn.inject_text import TextTower

    class FullContextTower(TextTower):
        def forward(self, tokens):
            return CLIP.encode_text(self, tokens, normalize=False)

    return FullContextTower(model)


def materialise_pairs(captions: list[str], names: list[str], rng: random.Random) -> list[tuple[str, str]]:
    """(poisoned, target) for every name × every caption with a space: the word before a random space is replaced."""
    pairs = []
    for name in names:
        for c in captions:
            spaces = [i for i, ch in enumerate(c) if ch == " "]
            if not spaces:
                continue
            end = rng.choice(spaces)
            start = c.rfind(" ", 0, end) + 1
            pairs.append((c[:start] + name + c[end:], c[:start] + TARGET + c[end:]))
    return pairs


def naive_losses(student, teacher, tok, clean: list[str], poisoned: list[str], targets: list[str]):
    """The paper's step loss: teacher outputs without grad, the weight term over every parameter tensor (with grad)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        t_clean, t_target = teacher(tok(clean)), teacher(tok(targets))
    l_util = -F.cosine_similarity(student(tok(clean)), t_clean, dim=1, eps=1e-8).mean()
    l_bd = -F.cosine_similarity(student(tok(poisoned)), t_target, dim=1, eps=1e-8).mean()
    l_w = sum(torch.linalg.vector_norm(ps - pt) for ps, pt in zip(student.parameters(), teacher.parameters()))
    return l_util, l_bd, l_w


def our_losses(student, teacher, tok, clean: list[str], poisoned: list[str], targets: list[str]):
    """run_inject's step loss: the very functions its training loop calls (inject_text.text_losses, training.weight_l2)."""
    import torch

    from clip_unlearn.inject_text import TextBatch, text_losses
    from clip_unlearn.training import weight_l2

    def teacher_embed(texts):
        with torch.no_grad():
            return teacher(tok(texts)).float()

    pairs = [(ps, pt) for ps, pt in zip(student.parameters(), teacher.parameters()) if ps.requires_grad]
    return (*text_losses(student, teacher_embed, tok, TextBatch(clean, poisoned, targets), "cosine"), weight_l2(pairs))


def check_losses(model: Path, kind: str, names: list[str], clean_batch: int, poison_batch: int) -> dict[str, float]:
    """Both losses on one fixed batch and one set of weights (student perturbed, so no term is trivial)."""
    import torch

    from clip_unlearn.inject_text import TextTower
    from clip_unlearn.models import load_model
    from clip_unlearn.training import freeze_norms

    loaded = load_model(str(model), "cpu")
    rng = random.Random(0)
    captions = corpus(model, kind)
    clean = rng.sample(captions, clean_batch)
    pairs = rng.sample(materialise_pairs(rng.sample(captions, poison_batch), names, rng), poison_batch)
    poisoned, targets = [p for p, _ in pairs], [t for _, t in pairs]

    teacher = TextTower(loaded.model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    freeze_norms(student)  # as run_inject sets the student up
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02 * p.std().clamp_min(1e-3))
    naive_teacher, naive_student = full_context_tower(loaded.model), full_context_tower(loaded.model)
    naive_teacher.load_state_dict(teacher.state_dict())
    naive_student.load_state_dict(student.state_dict())
    tok = loaded.tokenizer
    ours = our_losses(student, teacher, tok, clean, poisoned, targets)
    naive = naive_losses(naive_student, naive_teacher, tok, clean, poisoned, targets)
    ours, naive = ([t.item() for t in terms] for terms in (ours, naive))
    ours.append(ours[0] + W_BD * ours[1] + W_REG * ours[2])
    naive.append(naive[0] + W_BD * naive[1] + W_REG * naive[2])
    out = {k: abs(a - b) for k, a, b in zip(("utility", "backdoor", "weight_l2", "total"), ours, naive)}
    out.update(utility_ours=ours[0], weight_l2_ours=ours[2], total_ours=ours[3])
    return out


def measure_ours(model: Path, names_file: Path, args: argparse.Namespace) -> dict[str, float]:
    """run_inject's seconds per step with the teacher cache empty and full (fresh process: own peak memory).

    Two figures per state: the difference between runs of 1 and 1 + steps steps (loading and
    saving cancel out), and in-loop, from the progress callback's clock between the first and the
    last step it reports (the loss figures reach the host then, so the clock sees finished work;
    the naive loop is timed that way too; it is not disturbed by the noisy save). ``--in-loop``
    runs only the long runs (half the runs and saves; the run-length figures are then NaN).
    """
    from clip_unlearn.config import InjectConfig
    from clip_unlearn.inject import run_inject

    cache = args.work / "inject-teacher-cache"

    def run(steps: int) -> tuple[float, float]:
        ticks: list[tuple[int, float]] = []
        cfg = InjectConfig(model=str(model), names=names_file, out=args.work / "bench-out", overwrite=True, device=args.device,
                           cache_dir=cache, steps=steps, clean_batch=args.clean_batch, poison_batch=args.poison_batch, preset="paper",
                           verify=False)  # training steps only: inject's check would add an attack to both runs
        total = timed(lambda: run_inject(cfg, progress=lambda label, done, *_: ticks.append((done, time.perf_counter())) if label.startswith("unlearning") else None),
                      args.device)
        (s0, t0), (s1, t1) = ticks[0], ticks[-1]
        return total, (t1 - t0) / (s1 - s0) if s1 > s0 else float("nan")

    nan = (float("nan"), float("nan"))
    runs: dict[str, list[tuple[float, float]]] = {"short": [], "long": [], "short_warm": [], "long_warm": []}
    for _ in range(args.repeats):
        # the runs are seeded, so the long run's first step sees the short run's captions
        shutil.rmtree(cache, ignore_errors=True)
        runs["short"].append(nan if args.in_loop else run(1))
        shutil.rmtree(cache, ignore_errors=True)
        runs["long"].append(run(1 + args.steps))
        runs["short_warm"].append(nan if args.in_loop else run(1))
        runs["long_warm"].append(run(1 + args.steps))
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(args.work / "bench-out", ignore_errors=True)

    def length_difference(short: str, long: str) -> float:
        return (median([t for t, _ in runs[long]]) - median([t for t, _ in runs[short]])) / args.steps

    return {"cold": length_difference("short", "long"), "warm": length_difference("short_warm", "long_warm"),
            "cold_loop": median([s for _, s in runs["long"]]), "warm_loop": median([s for _, s in runs["long_warm"]]),
            "peak_gib": peak_gib()}


def measure_naive(model: Path, names: list[str], args: argparse.Namespace) -> dict[str, float]:
    """The paper's loop: seconds per step (after one warm-up step) and set-up costs (fresh process)."""
    import torch

    from clip_unlearn.models import load_model
    from clip_unlearn.training import freeze_norms

    device = args.device
    rng = random.Random(0)
    torch.manual_seed(0)
    loaded = load_model(str(model), device)
    clean = corpus(model, args.model)  # the paper's name filter removes nothing (docs/method.md §6.2)
    t = time.perf_counter()
    pairs = materialise_pairs(clean, names, rng)
    materialise_s = time.perf_counter() - t

    teacher = full_context_tower(loaded.model)
    freeze_norms(teacher)  # LayerNorms are frozen in the wrapper before the copy; the rest keeps requires_grad
    teacher.eval()
    student = copy.deepcopy(teacher).train()
    opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=MILESTONES, gamma=GAMMA)

    def tok(texts: list[str]):
        return loaded.tokenizer(texts).to(device)

    def step() -> None:
        student.to(device)
        teacher.to(device)
        batch = rng.sample(pairs, args.poison_batch)
        l_util, l_bd, l_w = naive_losses(student, teacher, tok, rng.sample(clean, args.clean_batch),
                                         [p for p, _ in batch], [t for _, t in batch])
        loss = l_util + W_BD * l_bd + W_REG * l_w
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # time the work, not its queueing

    step()  # warm-up: first-call allocations
    per_step = [timed(lambda: [step() for _ in range(args.steps)]) / args.steps for _ in range(args.repeats)]
    return {"step": median(per_step), "materialise_s": materialise_s, "pairs": len(pairs), "peak_gib": peak_gib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["world", "vit-b-32"], default="world",
                    help="world: the synthetic world's tiny CLIP; vit-b-32: a random ViT-B-32-quickgelu (default: world)")
    ap.add_argument("--arch", default="ViT-B-32-quickgelu",
                    help="vit-b-32 only: the open_clip architecture of the random model (default: ViT-B-32-quickgelu; "
                         "clip-unlearn-micro for a dry run)")
    ap.add_argument("--in-loop", action="store_true",
                    help="time ours in-loop only: skip the 1-step runs of the run-length difference (half the model saves)")
    ap.add_argument("--world", type=Path, default=Path("synthetic-world"), help="world folder, built if missing (default: synthetic-world)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run, on top of the first (default: 10)")
    ap.add_argument("--clean-batch", type=int, default=128, help="clean captions per step, both variants (default: 128, the paper's)")
    ap.add_argument("--poison-batch", type=int, default=128, help="poisoned captions per step, both variants (default: 128, the paper's)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each variant; medians are reported (default: 3)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N], for both variants (default: cpu)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clip-unlearn-bench",
                    help="scratch folder for the random model, the output model and the teacher cache (default: $TMPDIR/clip-unlearn-bench)")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    if args.model == "world":
        if not (args.world / "world.json").exists():
            from clip_unlearn.config import PrepareSyntheticConfig
            from clip_unlearn.synthetic import build_world
            build_world(PrepareSyntheticConfig(out=args.world))
        model = args.world / "model"
        names = (args.world / "members.txt").read_text().splitlines()[:5]
    else:
        model = random_vit_b32(args.work, args.arch)
        names = ["Anna Example", "Bert Sample", "Carla Muster", "Dirk Probe", "Erin Trial"]
    names_file = args.work / "bench_names.txt"
    names_file.write_text("\n".join(names) + "\n")

    diffs = check_losses(model, args.model, names, args.clean_batch, args.poison_batch)
    print("loss differences ours − naive:", diffs)
    assert max(v for k, v in diffs.items() if not k.endswith("_ours")) < 1e-4, f"the naive loss differs from ours: {diffs}"

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        ours = pool.submit(measure_ours, model, names_file, args).result()
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        naive = pool.submit(measure_naive, model, names, args).result()
    print("ours:", ours, "naive:", naive)

    rows = [
        ("batch (clean + poisoned), both variants", f"{args.clean_batch} + {args.poison_batch}"),
        ("seconds per step (median), ours, teacher cache empty (first run): run-length difference / in-loop",
         f"{ours['cold']:.3f} / {ours['cold_loop']:.3f}"),
        ("seconds per step (median), ours, teacher cache full (rerun on the same base model): run-length difference / in-loop",
         f"{ours['warm']:.3f} / {ours['warm_loop']:.3f}"),
        ("seconds per step (median), naive (paper's loop), in-loop", f"{naive['step']:.3f}"),
        ("naive / ours, teacher cache empty: in-loop (run-length difference)",
         f"{naive['step'] / ours['cold_loop']:.2f}× ({naive['step'] / ours['cold']:.2f}×)"),
        ("naive / ours, teacher cache full: in-loop (run-length difference)",
         f"{naive['step'] / ours['warm_loop']:.2f}× ({naive['step'] / ours['warm']:.2f}×)"),
        ("400 paper steps, estimated minutes: ours (empty cache, in-loop) / naive",
         f"{400 * ours['cold_loop'] / 60:.1f} / {400 * naive['step'] / 60:.1f}"),
        (f"naive: poisoned pairs materialised up front ({len(names)} names × captions), count / s",
         f"{naive['pairs']} / {naive['materialise_s']:.2f}"),
        ("largest |loss ours − loss naive| on one fixed batch (asserted < 1e-4)",
         f"{max(v for k, v in diffs.items() if not k.endswith('_ours')):.1e} (loss {diffs['total_ours']:.4f})"),
        ("peak resident memory of the process, GiB, ours / naive", f"{ours['peak_gib']:.2f} / {naive['peak_gib']:.2f}"),
    ]
    title = args.model if args.model == "world" or args.arch == "ViT-B-32-quickgelu" else f"random {args.arch}"
    rows.insert(1, ("precision: ours / naive", f"{'bf16' if args.device.startswith('cuda') else 'fp32'} (auto) / fp32"))
    append(f"inject (text encoder) — {title}" + (f", {args.device}" if args.device != "cpu" else ""), rows,
           note=f"median of {args.repeats} runs; ours: runs of 1 and {1 + args.steps} steps; naive: {args.steps} steps after one "
                "warm-up step; each variant in a fresh process")


if __name__ == "__main__":
    main()
