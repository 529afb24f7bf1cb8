"""Peak resident memory (RSS) of each stage of one study unit, for each model of the study grid, on CPU.

A study worker (``_worker`` in ``robust_mnv1/evaluation/study.py``) runs one unit in a spawned
process on one torch thread, with glibc told to keep freed memory (``infra/malloc.py``, which holds
the resident set at its peak): standard training, PGD-AT fine-tuning, then on each model FGSM, PGD
(+ the margin loss), APGD (+ the Square check), C&W and the gradient-masking sanity checks. Here
each (model, stage) runs through the project's own code (``training.fit.fit`` with its step,
optimizer and objectives; ``evaluation.protocol``'s ``run_*`` and ``sanity``, with the specs of
``config.spec.attack_spec``) in a fresh child process set up as that worker is: the unit's config
as a plain container, the same imports, allocator settings and thread count. The child's peak RSS
at its end is the cell, so no stage's peak mixes with another's. The baseline child only imports
the code and builds the model: a stage's peak minus the baseline is what the stage itself adds.

Every stage runs at the study's batch size (``experiments/study.yaml`` over ``robust_mnv1/conf``)
on exactly one batch: ``train.batch_size`` for standard training, ``finetune.batch_size`` with
``finetune.steps``-step PGD for PGD-AT (each with fit's test pass over one ``eval_batch_size``
batch), ``attack.<family>.batch_size`` images for FGSM, PGD and APGD, ``min(eval.n_cw,
attack.cw.batch_size)`` for C&W and ``eval.sanity.n`` for the sanity checks. The images are
CIFAR-shaped uint8 noise as floats in [0, 1], labelled with the model's own predictions, so none is
skipped as misclassified and the first step of every attack works on the whole batch. Step counts
are cut to seconds (:data:`STEP_CUTS`, two training steps): peak memory depends on the shapes, not
on the content or the number of steps, because the attacks and the training loop keep one batch's
activations at a time (each step builds a batch's graph and frees it before the next) and their
per-sample state (iterate, best point, step sizes, Adam moments) is sized by the batch. Checked at
alpha 0.25: PGD at 2, 8 and 20 steps, APGD at 2+2 and 8+4, C&W from 10 x 1 to 30 x 3 steps moved
the peak by less than the run-to-run spread (30-50 MiB); C&W at 2 x 1 peaked some 30 MiB lower,
hence its 10 steps. The sanity checks keep their own fixed 10-step budget (``protocol.sanity``
takes none).

Not in the cells: the decoded CIFAR-10 every worker holds (computed, not loaded; the unit peak adds
it), and what ``run_fgsm`` and ``run_pgd`` keep over the whole evaluation subset beside the batch:
the study attacks all 10,000 test images in one call, which holds them as floats, the survivors'
copy, and every eps's adversarial images and distances until it returns. That grows with the number
of images, not with the batch or the model, and it is large: measured once at alpha 0.25 with this
bench's stage code on 10,000 images, FGSM peaked at 2596 MiB against 1200 MiB for one batch of 500,
and PGD (2 steps) at 2135 against 1280 MiB. So the unit peak is a lower bound of a worker's.

Run from the repository root: ``OMP_NUM_THREADS=1 python bench/memory_bench.py --device cpu``
(every grid model; ``--models 0.25,1.0@0.75`` picks alpha[@rho] points of the grid). ``--quick``
measures alpha 0.25 at batch 32 only, to show that the bench still runs; its numbers are not the
study's. Every cell is a fresh process that pays the imports (about 6 CPU seconds), so a model
takes eight of them: alpha 0.25 took 2 minutes, and ``--quick`` 1.5-2 minutes, on 2 cores shared
with a running study.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import IMAGE_SIZE, NUM_CLASSES, peak_memory_mib, synthetic_split
from omegaconf import DictConfig, OmegaConf
from study_bench import TEST_IMAGES, eval_inputs

from robust_mnv1.config.compose import compose_config
from robust_mnv1.config.spec import attack_spec
from robust_mnv1.evaluation import protocol as ev
from robust_mnv1.evaluation.grid import unit_configs
from robust_mnv1.infra.envinfo import cpu_name
from robust_mnv1.infra.malloc import keep_freed_memory
from robust_mnv1.infra.units import eps
from robust_mnv1.models.mobilenet_v1 import MobileNetV1
from robust_mnv1.models.spec import ModelSpec
from robust_mnv1.training.fit import Objective, cross_entropy_objective, fit
from robust_mnv1.training.objectives import make_objective

CPU = torch.device("cpu")
MIB = 2**20
# CIFAR-10 as a study worker holds it decoded: 60,000 uint8 images and their int64 labels.
CIFAR_IMAGES = 60_000
CIFAR_BYTES = CIFAR_IMAGES * (3 * IMAGE_SIZE * IMAGE_SIZE + 8)
# Optimizer steps per training stage: the first allocates the momentum buffers, the second reuses them.
TRAIN_STEPS = 2
# Fewer steps, the same shapes (see the module docstring); every other setting is the study's.
STEP_CUTS = [
    "attack.pgd.steps=2",
    "attack.apgd.ce_steps=2",
    "attack.apgd.targeted_steps=2",
    "attack.apgd.square.queries=10",
    "attack.cw.steps=10",
    "attack.cw.binary_search_steps=1",
]
QUICK_BATCH = 32
QUICK = [
    f"{key}={QUICK_BATCH}"
    for key in (
        "train.batch_size",
        "train.eval_batch_size",
        "finetune.batch_size",
        "finetune.eval_batch_size",
        "attack.fgsm.batch_size",
        "attack.pgd.batch_size",
        "attack.apgd.batch_size",
        "attack.cw.batch_size",
        "eval.n_cw",
        "eval.sanity.n",
    )
] + ["finetune.steps=1", "attack.apgd.square.samples=8"]
QUICK_MODELS = [(0.25, 1.0)]


def _fit_steps(cfg: DictConfig, model: MobileNetV1, tcfg: DictConfig, objective: Objective) -> None:
    """``TRAIN_STEPS`` steps of ``fit`` at the recipe's batch size, then its test pass over one eval batch."""
    train = synthetic_split(TRAIN_STEPS * tcfg.batch_size, seed=cfg.seed)
    test = synthetic_split(tcfg.eval_batch_size, seed=cfg.seed + 1)
    with tempfile.TemporaryDirectory(prefix="robust-mnv1-memory-") as run_dir:
        fit(
            model,
            train,
            test,
            OmegaConf.merge(tcfg, {"epochs": 1}),
            device=CPU,
            seed=cfg.seed,
            run_dir=run_dir,
            objective=objective,
        )


def _attack_batch(cfg: DictConfig, model: MobileNetV1, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images labelled by the model, after the clean-accuracy pass the study runs before each attack."""
    x, y = eval_inputs(model, n, device=CPU, seed=cfg.seed)
    ev.clean_accuracy(model, x, y)
    return x, y


def standard_training(cfg: DictConfig, model: MobileNetV1) -> None:
    _fit_steps(cfg, model, cfg.train, cross_entropy_objective(cfg.train.label_smoothing))


def finetuning(cfg: DictConfig, model: MobileNetV1) -> None:
    _fit_steps(cfg, model, cfg.finetune, make_objective(cfg.finetune, cfg.seed))


def fgsm(cfg: DictConfig, model: MobileNetV1) -> None:
    spec = attack_spec("fgsm", cfg.attack.fgsm)
    ev.run_fgsm(model, *_attack_batch(cfg, model, spec.batch_size), spec)


def pgd(cfg: DictConfig, model: MobileNetV1) -> None:
    spec = attack_spec("pgd", cfg.attack.pgd)
    ev.run_pgd(model, *_attack_batch(cfg, model, spec.batch_size), spec, cfg.seed)


def apgd(cfg: DictConfig, model: MobileNetV1) -> None:
    """APGD-CE and APGD-T, then the Square check on what they left, as one APGD record runs them."""
    spec = attack_spec("apgd", cfg.attack.apgd)
    x, y = _attack_batch(cfg, model, spec.batch_size)
    # As if FGSM and PGD had left every image robust: APGD's first step then takes the whole batch.
    before = {e: torch.ones(len(y), dtype=torch.bool) for e in spec.eps_255}
    headline = ev.run_apgd(model, x, y, spec, cfg.seed, before)[-1]
    robust = torch.from_numpy(headline.mask())
    ev.square_check(model, x, y, robust, headline.eps_255, spec.square, cfg.seed)


def cw(cfg: DictConfig, model: MobileNetV1) -> None:
    spec = attack_spec("cw", cfg.attack.cw)
    ev.run_cw(model, *_attack_batch(cfg, model, min(cfg.eval.n_cw, spec.batch_size)), spec, cfg.seed)


def sanity(cfg: DictConfig, model: MobileNetV1) -> None:
    # The study runs the checks straight on the first eval.sanity.n images, with no clean pass before.
    x, y = eval_inputs(model, cfg.eval.sanity.n, device=CPU, seed=cfg.seed)
    ev.sanity(model, x, y, eps=eps(cfg.eval.sanity.eps_255), seed=cfg.seed)


@dataclass(frozen=True)
class Stage:
    """A column of the table and what its child process runs after building the model."""

    label: str
    run: Callable[[DictConfig, MobileNetV1], None]


STAGES = {
    "train": Stage("train", standard_training),
    "finetune": Stage("PGD-AT", finetuning),
    "fgsm": Stage("FGSM", fgsm),
    "pgd": Stage("PGD", pgd),
    "apgd": Stage("APGD+Square", apgd),
    "cw": Stage("C&W", cw),
    "sanity": Stage("sanity", sanity),
}
BASELINE = "baseline"


def model_of(cfg: DictConfig) -> ModelSpec:
    return ModelSpec(
        alpha=cfg.model.alpha, rho=cfg.model.rho, profile=cfg.model.profile, num_classes=NUM_CLASSES
    )


def child(stage: str, threads: int) -> None:
    """The body of one measurement: the unit's config from stdin, one stage, its peak RSS (MiB) to stdout."""
    cfg = OmegaConf.create(json.load(sys.stdin))
    keep_freed_memory()  # as _worker: a spawned process does not inherit its parent's allocator settings
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    # fit() leaves its model channels_last, and the study attacks the model fit() returned.
    model = model_of(cfg).build().to(memory_format=torch.channels_last)
    if stage != BASELINE:
        STAGES[stage].run(cfg, model)
    print(peak_memory_mib(CPU))


def peak_mib(stage: str, unit: DictConfig, threads: int) -> float:
    """Peak RSS of a fresh child process running ``stage`` of ``unit``."""
    env = {**os.environ, "TQDM_DISABLE": "1"}  # fit's progress bars would only fill the captured stderr
    done = subprocess.run(
        [sys.executable, __file__, "--_child", stage, "--threads", str(threads)],
        input=json.dumps(OmegaConf.to_container(unit, resolve=True)),
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"memory_bench: the {stage} child of {model_of(unit).name} failed")
    return float(done.stdout.split()[-1])


def measure(units: list[DictConfig], threads: int) -> list[dict[str, float]]:
    """Peak RSS of the baseline and every stage of each unit, by stage key, one child after another."""
    return [{key: peak_mib(key, unit, threads) for key in (BASELINE, *STAGES)} for unit in units]


def parse_models(text: str) -> list[tuple[float, float]]:
    """``0.25,1.0@0.75`` -> ``[(0.25, 1.0), (1.0, 0.75)]``: alpha[@rho] points, rho 1 when left out."""
    points = []
    for token in text.split(","):
        alpha, _, rho = token.strip().partition("@")
        points.append((float(alpha), float(rho or 1.0)))
    return points


def select_units(
    parser: argparse.ArgumentParser, cfg: DictConfig, wanted: list[tuple[float, float]] | None
) -> list[DictConfig]:
    """The grid's unit configs of the ``wanted`` (alpha, rho) points, one per point (the first seed's)."""
    units: dict[tuple[float, float], DictConfig] = {}
    for unit in unit_configs(cfg):
        units.setdefault((unit.model.alpha, unit.model.rho), unit)
    if wanted is None:
        return list(units.values())
    missing = [p for p in wanted if p not in units]
    if missing:
        grid = ", ".join(f"{a}@{r}" for a, r in units)
        parser.error(f"--models: {', '.join(f'{a}@{r}' for a, r in missing)} not in the study grid ({grid})")
    return [units[p] for p in wanted]


def notes(cfg: DictConfig, dataset_mib: float) -> list[str]:
    """What the cells measured and what the unit peak adds to them."""
    ft, at = cfg.finetune, cfg.attack
    return [
        "each cell: peak RSS of a fresh process that imports the study's code, builds the model and runs "
        "that one stage on one batch (one torch thread, infra/malloc.py's glibc settings, as a study "
        "worker); baseline: the same process without the stage",
        f"batches: train {cfg.train.batch_size} and PGD-AT {ft.batch_size} ({ft.steps}-step PGD), "
        f"{TRAIN_STEPS} steps each + fit's test pass over {cfg.train.eval_batch_size}; FGSM "
        f"{at.fgsm.batch_size}, PGD {at.pgd.batch_size}, APGD {at.apgd.batch_size} (+ Square on up to "
        f"{at.apgd.square.samples}), C&W {min(cfg.eval.n_cw, at.cw.batch_size)}, sanity {cfg.eval.sanity.n}",
        f"steps cut to seconds ({' '.join(STEP_CUTS)}): the peak does not depend on them",
        f"decoded CIFAR-10 a study worker also holds: {CIFAR_IMAGES:,} x 3 x {IMAGE_SIZE} x {IMAGE_SIZE} "
        f"uint8 + int64 labels = {dataset_mib:.1f} MiB (computed, not loaded)",
        "unit peak: an estimate and a lower bound, the largest stage peak + the decoded dataset; in the "
        f"study FGSM and PGD attack all {TEST_IMAGES:,} test images in one call and hold whole-set tensors "
        "(inputs, each eps's adversarial images) beside the batch, which these cells leave out "
        "(see the module docstring: over 1 GB at alpha 0.25)",
    ]


def markdown(rows: list[dict[str, object]]) -> str:
    """The rows as a markdown table (the form docs/performance.md takes), numbers right-aligned."""
    header = list(rows[0])
    align = ["---" if isinstance(rows[0][c], str) else "---:" for c in header]
    lines = [header, align, *([str(row[c]) for c in header] for row in rows)]
    return "\n".join(f"| {' | '.join(cells)} |" for cells in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu",), default="cpu", help="peak RSS is a CPU figure")
    parser.add_argument("--quick", action="store_true", help=f"alpha 0.25, batch {QUICK_BATCH}: smoke test")
    parser.add_argument(
        "--models",
        type=parse_models,
        help="alpha[@rho] points of the grid, e.g. 0.25,1.0@0.75 (default: all)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (the study: 1)")
    parser.add_argument("--_child", choices=(BASELINE, *STAGES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args._child:
        child(args._child, args.threads)
        return
    cfg = compose_config(["experiment=study", *STEP_CUTS, *(QUICK if args.quick else [])])
    wanted = args.models or (QUICK_MODELS if args.quick else None)
    dataset_mib = CIFAR_BYTES / MIB
    units = select_units(parser, cfg, wanted)
    rows = []
    for unit, peaks in zip(units, measure(units, args.threads), strict=True):
        row = {"model": model_of(unit).name, BASELINE: peaks[BASELINE]}
        row.update({stage.label: peaks[key] for key, stage in STAGES.items()})
        row["unit peak"] = max(peaks[key] for key in STAGES) + dataset_mib
        rows.append({k: v if isinstance(v, str) else round(v) for k, v in row.items()})
    title = (
        f"Peak RSS (MiB) of each stage of one study unit; {cpu_name()}, "
        f"{args.threads} torch thread{'' if args.threads == 1 else 's'}"
        + (f"; --quick: batch {QUICK_BATCH}, not the study's numbers" if args.quick else "")
    )
    print(f"{title}\n\n{markdown(rows)}\n")
    for note in notes(cfg, dataset_mib):
        print(f"- {note}")


if __name__ == "__main__":
    main()
