"""Wall time of each stage of one study unit (``pgd_alpha100`` with every attack), scaled to the full budget.

A unit standard-trains a model, PGD-AT fine-tunes it, and for each of the two models runs FGSM,
PGD-20 (+ the margin loss at 8/255) and C&W with the protocol's gradient-masking sanity checks, plus
one CPU latency measurement. Each stage runs here, through the project's own code, on a small
synthetic CIFAR-shaped subset; its seconds per image are then scaled linearly to the budget the
configs give (epochs from ``conf/train/standard.yaml`` and ``conf/finetune/pgd_at.yaml``, the 50k
CIFAR-10 training images, the 10k test images for FGSM/PGD, ``eval.n_cw`` for C&W, ``eval.sanity.n``),
then to the study's grid points (``experiments/study.yaml``) by each model's mult-adds. The training
stages also run the plain loop of ``train_bench`` as a baseline. APGD is not timed: it attacks only
what FGSM and PGD left robust, which synthetic images do not predict; the records' ``timing`` has it.

Run from the repository root: ``python bench/study_bench.py --device cpu --quick``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from _common import (
    PGDSpec,
    Throughput,
    bench_parser,
    compare_training,
    describe,
    print_table,
    setup,
    synchronize,
    synthetic_split,
)
from omegaconf import DictConfig, OmegaConf

from robust_mnv1.config.compose import compose_config
from robust_mnv1.config.spec import attack_spec
from robust_mnv1.cost import layer_costs
from robust_mnv1.evaluation import protocol as ev
from robust_mnv1.evaluation import specs
from robust_mnv1.models import build_model
from robust_mnv1.training.fit import cross_entropy_objective, evaluate_accuracy
from robust_mnv1.training.objectives import make_objective

# CIFAR-10, the dataset of pgd_alpha100 and the study.
TRAIN_IMAGES = 50_000
TEST_IMAGES = 10_000


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """Images (or batches) measured per stage; the budget comes from the configs, not from here."""

    train_batch: int | None  # None: the recipe's batch size
    std_batches: int
    ft_batches: int
    test_eval: int
    fgsm: int
    pgd: int
    cw: int
    sanity: int


SIZES = {
    ("cpu", True): Sizes(
        train_batch=64, std_batches=2, ft_batches=1, test_eval=256, fgsm=32, pgd=16, cw=4, sanity=16
    ),
    ("cpu", False): Sizes(
        train_batch=None, std_batches=2, ft_batches=1, test_eval=1024, fgsm=256, pgd=64, cw=16, sanity=32
    ),
    ("cuda", True): Sizes(
        train_batch=None, std_batches=10, ft_batches=4, test_eval=4096, fgsm=1024, pgd=512, cw=128, sanity=128
    ),
    ("cuda", False): Sizes(
        train_batch=None,
        std_batches=40,
        ft_batches=12,
        test_eval=10_000,
        fgsm=4096,
        pgd=2048,
        cw=512,
        sanity=256,
    ),
}


def evaluations(epochs: int, every: int) -> int:
    """How many test evaluations ``fit`` runs: every ``every`` epochs and always after the last."""
    return sum(1 for e in range(1, epochs + 1) if e % every == 0 or e == epochs)


def timed(device: torch.device, fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes, synchronised at both ends."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def eval_inputs(model: torch.nn.Module, n: int, *, device: torch.device, seed: int):
    """``n`` synthetic test images labelled with the model's own predictions.

    The attacks skip misclassified samples; with these labels every sample is clean-correct, so
    none is skipped and the timing covers all ``n``.
    """
    x, _ = ev.eval_subset(synthetic_split(n, seed=seed), None, device)
    model.eval()
    with torch.no_grad():
        y = torch.cat([model(chunk).argmax(1) for chunk in x.split(512)])
    return x, y


class PassCounter(torch.nn.Module):
    """Wraps a model and counts the images it sees in passes that build a graph (forward + backward)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's logits; reads only the batch size, so it never synchronises."""
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_images += x.shape[0]
        return self.model(x)


def max_grad_passes(attack: str, acfg: specs.PGDSpec | specs.CWSpec) -> int | None:
    """Gradient passes per image when no sample leaves early, for the attacks that drop samples.

    PGD drops a sample once it is broken, C&W once its loss or (adversarial) its distance stalls, so
    each runs at most every step: PGD ``steps x restarts`` per eps (twice at the margin-loss eps, as
    ``run_pgd`` does), C&W ``steps x binary_search_steps``. FGSM has one step and drops nothing: None.
    """
    if attack == "pgd":
        runs = sum(1 + acfg.adds_margin(e) for e in acfg.eps_255)
        return runs * acfg.steps * acfg.restarts
    if attack == "cw":
        return acfg.steps * acfg.binary_search_steps
    return None


def grid_mult_adds(cfg: DictConfig, grid: list) -> list[int]:
    """Mult-adds per image of each model of the study grid."""
    return [
        int(layer_costs(build_model(alpha=p["alpha"], rho=p["rho"], profile=cfg.model.profile))["macs"].sum())
        for p in grid
    ]


def _row(
    stage: str,
    n: int,
    seconds: float,
    budget: str,
    budget_images: int,
    *,
    baseline: Throughput | None = None,
    passes: float | None = None,
    max_passes: int | None = None,
) -> dict:
    full = seconds / n * budget_images
    return {
        "stage": stage,
        "measured imgs": n,
        "measured s": round(seconds, 2),
        "img/s": round(n / seconds, 1),
        "plain img/s": round(baseline.img_per_s, 1) if baseline else None,
        "project/plain": round(n / seconds / baseline.img_per_s, 3) if baseline else None,
        "grad passes/img": round(passes, 1) if passes is not None else None,
        "max passes/img": max_passes,
        "budget / unit": budget,
        "full s / unit": round(full),
        # Early exit saved (max / measured) passes here; a model that resists every step saves none.
        "no-early-exit s / unit": round(full * max_passes / passes) if max_passes and passes else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    device = setup(parser, args)
    seed = args.seed
    overrides = ["experiment=pgd_alpha100", "attack=all", f"seed={seed}"]
    if args.quick:
        overrides.append("model.alpha=0.25")
    cfg = compose_config(overrides)
    sizes = SIZES[(device.type, args.quick)]
    grid = compose_config(["experiment=study"]).study.grid

    def fresh_model() -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(
            alpha=cfg.model.alpha, rho=cfg.model.rho, profile=cfg.model.profile, num_classes=10
        )

    rows: list[dict] = []
    batch = sizes.train_batch or cfg.train.batch_size
    # drop_last: a full epoch trains on whole batches of the recipe's batch size only.
    std_epoch = TRAIN_IMAGES // cfg.train.batch_size * cfg.train.batch_size
    ft_epoch = TRAIN_IMAGES // cfg.finetune.batch_size * cfg.finetune.batch_size

    def train_stage(model, recipe, n_batches, objective, pgd):
        """(project, plain) throughput of one timed run of ``recipe``, as the suite trains here."""
        runs = compare_training(
            model=model,
            baseline_model=fresh_model(),
            split=synthetic_split(n_batches * batch, seed=seed),
            tcfg=recipe,
            objective=objective,
            pgd=pgd,
            device=device,
            seed=seed,
            eager=False,
        )
        return runs["project"][0], runs["plain"][0]

    tcfg = OmegaConf.merge(cfg.train, {"batch_size": batch})
    model = fresh_model()
    project, base = train_stage(
        model, tcfg, sizes.std_batches, cross_entropy_objective(tcfg.label_smoothing), None
    )
    rows.append(
        _row(
            "standard training",
            project.images,
            project.seconds,
            f"{cfg.train.epochs} ep x {std_epoch:,}",
            cfg.train.epochs * std_epoch,
            baseline=base,
        )
    )

    test = synthetic_split(sizes.test_eval, seed=seed + 3)
    seconds = timed(device, lambda: evaluate_accuracy(model, test, device, cfg.train.eval_batch_size))
    n_evals = evaluations(cfg.train.epochs, cfg.train.eval_every) + evaluations(
        cfg.finetune.epochs, cfg.finetune.eval_every
    )
    rows.append(
        _row("per-epoch test eval", len(test), seconds, f"{n_evals} x {TEST_IMAGES:,}", n_evals * TEST_IMAGES)
    )

    fcfg = OmegaConf.merge(cfg.finetune, {"batch_size": batch})
    tuned = fresh_model()
    tuned.load_state_dict(model.state_dict())
    project, base = train_stage(
        tuned, fcfg, sizes.ft_batches, make_objective(fcfg, seed), PGDSpec.from_recipe(fcfg)
    )
    rows.append(
        _row(
            f"{cfg.finetune.regime} fine-tuning",
            project.images,
            project.seconds,
            f"{cfg.finetune.epochs} ep x {ft_epoch:,}",
            cfg.finetune.epochs * ft_epoch,
            baseline=base,
        )
    )

    n_test = min(cfg.eval.n_examples or TEST_IMAGES, TEST_IMAGES)
    n_cw = min(cfg.eval.n_cw, n_test)
    regimes = 2  # every attack runs on the standard and on the fine-tuned model
    x, y = eval_inputs(
        tuned, max(sizes.fgsm, sizes.pgd, sizes.cw, sizes.sanity), device=device, seed=seed + 4
    )
    # Untimed: the first attack call pays one-off costs (kernel loading, allocator growth).
    fgsm, pgd, cw = (attack_spec(a, cfg.attack[a]) for a in ("fgsm", "pgd", "cw"))
    ev.run_fgsm(tuned, x[:8], y[:8], fgsm)

    def attack_row(stage: str, n: int, run: Callable, budget_images: int, max_passes: int | None = None):
        counter = PassCounter(tuned)

        def work() -> None:
            ev.clean_accuracy(counter, x[:n], y[:n])
            run(counter, x[:n], y[:n])

        seconds = timed(device, work)
        budget = f"{regimes} x {budget_images // regimes:,}"
        passes = counter.grad_images / n
        return _row(stage, n, seconds, budget, budget_images, passes=passes, max_passes=max_passes)

    eps = ",".join(str(e) for e in fgsm.eps_255)
    rows.append(
        attack_row(
            f"FGSM eval (eps {eps}/255)",
            sizes.fgsm,
            lambda m, a, b: ev.run_fgsm(m, a, b, fgsm),
            regimes * n_test,
        )
    )
    margin = ",".join(str(e) for e in pgd.margin_at_255)
    rows.append(
        attack_row(
            f"PGD-{pgd.steps} eval (+margin@{margin})",
            sizes.pgd,
            lambda m, a, b: ev.run_pgd(m, a, b, pgd, seed),
            regimes * n_test,
            max_grad_passes("pgd", pgd),
        )
    )
    rows.append(
        attack_row(
            f"C&W eval ({cw.steps} x {cw.binary_search_steps} steps)",
            sizes.cw,
            lambda m, a, b: ev.run_cw(m, a, b, cw, seed),
            regimes * n_cw,
            max_grad_passes("cw", cw),
        )
    )
    if cfg.eval.sanity.enabled:
        rows.append(
            attack_row(
                "sanity checks",
                sizes.sanity,
                lambda m, a, b: ev.sanity(m, a, b, eps=8 / 255, seed=seed),
                regimes * cfg.eval.sanity.n,
            )
        )
    if cfg.eval.latency.enabled:
        reps = cfg.eval.latency.reps
        latency: list[float] = []
        s = timed(device, lambda: latency.append(ev.cpu_latency_ms(tuned, tuned.input_resolution, reps)))
        # cpu_latency_ms runs 5 untimed forwards, then `reps` timed ones.
        rows.append(_row(f"CPU latency (b1, {latency[0]:.1f} ms)", reps + 5, s, "1 run", reps + 5))

    unit_s = sum(row["full s / unit"] for row in rows)
    bound_s = sum(row["no-early-exit s / unit"] or row["full s / unit"] for row in rows)
    macs = grid_mult_adds(cfg, grid)
    measured_macs = grid_mult_adds(cfg, [{"alpha": cfg.model.alpha, "rho": cfg.model.rho}])[0]
    study_scale = sum(macs) / measured_macs
    name = fresh_model().name
    notes = [
        f"model measured: {name}"
        + (" (--quick: alpha 0.25 stands in for pgd_alpha100's alpha 1.0)" if args.quick else ""),
        f"train stages: batch {batch}, {sizes.std_batches} (standard) / {sizes.ft_batches} (fine-tuning) "
        "timed batches of synthetic CIFAR-shaped noise; project = the second epoch of a two-epoch "
        "robust_mnv1.training.fit.fit (the first is its warm-up), plain = the hand-written loop of "
        "train_bench "
        "after one untimed batch",
        "eval stages: synthetic images labelled with the fine-tuned model's own predictions (none skipped "
        "as misclassified); each stage = clean accuracy + the attack over its eps grid, as a unit runs it",
        "full s / unit: measured seconds per image scaled linearly to the budget (CIFAR-10: "
        f"{TRAIN_IMAGES:,} train, {TEST_IMAGES:,} test images; epochs, n_cw, sanity.n and latency reps "
        "from the composed pgd_alpha100 config)",
        "PGD and C&W drop samples early (broken / converged), so their cost depends on the model; "
        "no-early-exit s scales the measured seconds per gradient pass to max passes/img, the bound",
        f"one unit: {unit_s / 3600:.2f} h as measured, {bound_s / 3600:.2f} h with no early exit",
        f"the study ({len(grid)} grid points of experiments/study.yaml; APGD not timed), the unit "
        f"scaled by each model's mult-adds relative to {name} ({sum(macs) / 1e6:.0f}M vs "
        f"{measured_macs / 1e6:.1f}M per image; a rough proxy for speed): "
        f"{unit_s * study_scale / 3600:.1f} h as measured, "
        f"{bound_s * study_scale / 3600:.1f} h with no early exit",
    ]
    title = f"Study unit stages, scaled to the full budget; {describe(device)}"
    # object dtype keeps whole numbers whole where a column also has empty cells.
    print_table(title, pd.DataFrame(rows, dtype=object), notes)


if __name__ == "__main__":
    main()
