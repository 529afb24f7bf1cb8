"""Training throughput: the project's ``fit`` against a plain eager loop of the same model and batch.

Two workloads on MobileNet V1 (CIFAR profile, 32x32, 10 classes): a standard step (recipe
``conf/train/standard.yaml``) and a PGD-7 adversarial step (``conf/finetune/pgd_at.yaml``: L-inf eps
8/255, step 2/255, 7 steps, random start). "project" is the second epoch of a two-epoch
:func:`robust_mnv1.training.fit.fit` over a synthetic uint8 split, run as the suite runs it on the device
(CUDA graph replay on CUDA), so it pays for the device loader, on-device augmentation, the LR
schedule and bookkeeping; on CUDA "eager" is the same without graphs. "plain" is
:class:`_common.PlainLoop`. All use the same precision policy; each figure is the best of the
repeats. Only the ratios are meant to compare across machines.

Run from the repository root: ``python bench/train_bench.py --device cpu --quick``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import pandas as pd
import torch
from _common import (
    FIT_TEST_IMAGES,
    PGDSpec,
    bench_parser,
    compare_training,
    describe,
    print_table,
    reset_peak_memory,
    setup,
    synthetic_split,
)
from omegaconf import DictConfig, OmegaConf

from robust_mnv1.config.compose import compose_config
from robust_mnv1.models import build_model
from robust_mnv1.training.fit import cross_entropy_objective
from robust_mnv1.training.objectives import make_objective

WORKLOADS = ("standard", "pgd7")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How much to measure: widths, batch size, timed batches per workload, and repeats."""

    alphas: tuple[float, ...]
    batch: int
    batches: dict[str, int]
    repeats: int


def make_plan(device: torch.device, *, quick: bool, batch: int | None, repeats: int | None) -> Plan:
    """Sizes that give a stable figure in minutes (a smoke test in seconds with ``quick``)."""
    cuda = device.type == "cuda"
    if quick:
        return Plan(
            alphas=(0.25,),
            batch=batch or (512 if cuda else 32),
            batches={"standard": 10, "pgd7": 4} if cuda else {"standard": 3, "pgd7": 2},
            repeats=repeats or 1,
        )
    return Plan(
        alphas=(0.25, 1.0),
        batch=batch or (512 if cuda else 256),
        batches={"standard": 40, "pgd7": 12} if cuda else {"standard": 4, "pgd7": 2},
        repeats=repeats or (3 if cuda else 2),
    )


def measure(workload: str, alpha: float, plan: Plan, cfg: DictConfig, *, device: torch.device, seed: int):
    """Project and plain throughput of one workload; returns one table row."""
    if workload == "standard":
        tcfg = OmegaConf.merge(cfg.train, {"batch_size": plan.batch})
        objective, pgd = cross_entropy_objective(tcfg.label_smoothing), None
    else:
        tcfg = OmegaConf.merge(cfg.finetune, {"batch_size": plan.batch})
        objective, pgd = make_objective(tcfg, seed), PGDSpec.from_recipe(tcfg)
    split = synthetic_split(plan.batches[workload] * plan.batch, seed=seed)

    def fresh_model() -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(alpha=alpha, profile="cifar", num_classes=10)

    runs = compare_training(
        model=fresh_model(),
        baseline_model=fresh_model(),
        split=split,
        tcfg=tcfg,
        objective=objective,
        pgd=pgd,
        device=device,
        seed=seed,
        repeats=plan.repeats,
    )
    best = {name: max(r.img_per_s for r in path) for name, path in runs.items()}
    # Run i of each path sits next to run i of the other (ABBA order), so their ratio cancels most of
    # the machine's drift; the spread of those paired ratios is the noise of the comparison.
    paired = sorted(p.img_per_s / q.img_per_s for p, q in zip(runs["project"], runs["plain"], strict=True))
    row = {
        "workload": workload,
        "alpha": alpha,
        "batch": plan.batch,
        "timed batches": f"{plan.batches[workload]} x {plan.repeats}",
        "project img/s": round(best["project"], 1),
        "plain img/s": round(best["plain"], 1),
        "project/plain": round(best["project"] / best["plain"], 3),
        "paired ratios median [min, max]": (
            f"{statistics.median(paired):.3f} [{paired[0]:.3f}, {paired[-1]:.3f}]"
        ),
    }
    if "project eager" in best:
        row["eager img/s"] = round(best["project eager"], 1)
        row["project/eager"] = round(best["project"] / best["project eager"], 3)
    row["project peak MiB"] = round(max(r.peak_mib for r in runs["project"]))
    row["plain peak MiB"] = round(max(r.peak_mib for r in runs["plain"]))
    return row


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="batch size (default: 512 on CUDA, 256 on CPU, 32 --quick CPU)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per path (default: 3 CUDA, 2 CPU, 1 --quick)"
    )
    args = parser.parse_args(argv)
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    device = setup(parser, args)
    plan = make_plan(device, quick=args.quick, batch=args.batch, repeats=args.repeats)
    cfg = compose_config([])
    rows = [
        measure(workload, alpha, plan, cfg, device=device, seed=args.seed)
        for alpha in plan.alphas
        for workload in WORKLOADS
    ]
    memory = (
        "peak MiB: CUDA allocator peak (torch.cuda.max_memory_allocated) during the timed run"
        if device.type == "cuda"
        else "peak MiB: peak RSS of the whole process (interpreter, libraries, model, data)"
        + (
            ", reset before each timed run"
            if reset_peak_memory(device)
            else ", the process's peak so far (cannot be reset here)"
        )
    )
    notes = [
        "synthetic uint8 CIFAR-shaped data; MobileNet V1 cifar profile, 10 classes",
        "project: the second epoch of a two-epoch robust_mnv1.training.fit.fit, as the suite trains here"
        + (" (CUDA graph replay)" if device.type == "cuda" else "")
        + f" (includes augmentation, LR schedule, bookkeeping and a {FIT_TEST_IMAGES}-image test pass; "
        "excludes set-up, the first epoch's warm-up and the checkpoints)",
        *(["eager: the same fit without CUDA graphs"] if device.type == "cuda" else []),
        "plain: hand-written loop over uint8 data resident on the device, shuffled, random crop and flip "
        "on the device, "
        + ("bf16 autocast + channels_last" if device.type == "cuda" else "fp32 + channels_last"),
        "pgd7: 7 sign-gradient steps of 2/255 in the 8/255 L-inf ball from a random start, model in eval "
        "mode while crafting; img/s counts training images",
        f"img/s: best of {plan.repeats} timed run(s); plain after one untimed warm-up step; project/plain: "
        "ratio of the bests; paired ratios: project/plain of the runs made side by side (ABBA order)",
        memory,
    ]
    print_table(f"Training throughput, project vs plain loop; {describe(device)}", pd.DataFrame(rows), notes)


if __name__ == "__main__":
    main()
