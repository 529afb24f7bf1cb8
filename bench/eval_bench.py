"""The study's attack protocol on trained models: chained vs standalone PGD, and C&W budgets.

``run_pgd`` walks the eps grid upwards and attacks only the images the previous eps left robust (the
margin loss only CE's survivors). The baseline, measured in the same run on the same models and
images, is the plain protocol: every eps attacks every image with CE, the margin-loss eps a second
time with the margin loss, and the per-image worst case of the two is kept. The table gives seconds,
image-gradients (the images in passes that build a graph) and robust accuracy per eps for both.

The second table runs the study's C&W (``evaluate.run_cw``) at several (steps, lr) budgets on the first
``--n-cw`` test images (of the study's class-stratified order, as every evaluation here). Adam moves
each pixel by about ``lr`` per step, which sets a floor under the distances found, so a budget is only
good enough when a finer one (smaller lr, more steps) finds the same median L2. The study's
``conf/attack/cw.yaml`` was chosen from this table.

The models are the study's own, from the model cache (trained and cached on first use): by default
the CPU preview's (``experiment=cpu_preview``, CIFAR-10 (JPEG q75)) at ``--alpha``; ``--quick`` trains
a tiny digits model into a temporary cache instead, for CI. Run from the repository root:

    OMP_NUM_THREADS=1 python bench/eval_bench.py --device cpu --threads 1 --alpha 0.25 --n 1000
"""

from __future__ import annotations

import tempfile

import pandas as pd
from _common import bench_parser, describe, print_table, setup
from omegaconf import DictConfig, OmegaConf
from study_bench import PassCounter, timed

from attacks import worst_case
from robust_mnv1.config.compose import compose_config
from robust_mnv1.config.spec import attack_spec
from robust_mnv1.data import load_dataset
from robust_mnv1.evaluation import protocol as ev
from robust_mnv1.evaluation.specs import PGDSpec
from robust_mnv1.training.model_cache import cache_root, finetuned_model, standard_model

QUICK = ["experiment=smoke", "train.epochs=2", "finetune.epochs=1"]
CW_BUDGETS = "100:0.01,300:0.003,1000:0.001"


def standalone_pgd(model, x, y, spec: PGDSpec, seed: int) -> list[float]:
    """Robust accuracy per eps when every eps attacks every image (the baseline protocol)."""
    out = []
    for e in sorted(spec.eps_255):
        res = spec.attack(e, seed)(model, x, y)
        if spec.adds_margin(e):
            res = worst_case([res, spec.attack(e, seed, loss="margin")(model, x, y)])
        out.append(float((res.clean_correct & ~res.success).float().mean()))
    return out


def cw_rows(models, budgets, dataset, n: int, cfg: DictConfig, device) -> list[dict]:
    """One row per (regime, budget): the study's C&W record fields at that budget, and its seconds."""
    x, y = ev.eval_subset(dataset.test, n, device, cfg.eval.order)
    rows = []
    for regime, model in models:
        for steps, lr in budgets:
            acfg = attack_spec("cw", OmegaConf.merge(cfg.attack.cw, {"steps": steps, "lr": lr}))
            out: list = []
            seconds = timed(device, lambda a=acfg, m=model, o=out: o.append(ev.run_cw(m, x, y, a, cfg.seed)))
            (result,) = out
            lo, hi = result.median_l2_ci95
            rows.append(
                {
                    "regime": regime,
                    "steps": steps,
                    "lr": lr,
                    "seconds": round(seconds, 1),
                    "median L2 [95% CI]": f"{result.median_l2:.4f} [{lo:.4f}, {hi:.4f}]",
                    "success": round(result.success_rate, 3),
                    **{f"robust@{a.l2}": round(a.accuracy, 3) for a in result.robust_at},
                }
            )
    return rows


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.25, help="width of the preview model (0.25 or 0.5)")
    parser.add_argument("--n", type=int, default=1000, help="test images attacked by PGD (default 1000)")
    parser.add_argument("--n-cw", type=int, default=100, help="test images attacked by C&W (default 100)")
    parser.add_argument(
        "--cw-budgets",
        default=CW_BUDGETS,
        help=f"steps:lr pairs for the C&W table (default {CW_BUDGETS}, smaller with --quick; none: skip)",
    )
    args = parser.parse_args()
    spec = "10:0.01,20:0.005" if args.quick and args.cw_budgets == CW_BUDGETS else args.cw_budgets
    try:
        budgets = (
            []
            if spec == "none"
            else [(int(s), float(lr)) for s, lr in (b.split(":") for b in spec.split(","))]
        )
    except ValueError:
        parser.error(f"--cw-budgets must look like {CW_BUDGETS}, got {args.cw_budgets!r}")
    device = setup(parser, args)
    with tempfile.TemporaryDirectory(prefix="robust-mnv1-eval-") as scratch:
        # --quick's digits model goes to a temporary cache, never the user's
        quick = [*QUICK, "model.alpha=0.25", f"cache_dir={scratch}/cache"]
        preview = ["experiment=cpu_preview", f"model.alpha={args.alpha}"]
        report(args, budgets, device, [*(quick if args.quick else preview), f"seed={args.seed}"])


def report(args, budgets: list[tuple[int, float]], device, overrides: list[str]) -> None:
    """Both tables for the models ``overrides`` select, trained into their cache on first use."""
    cfg = compose_config(overrides)
    n = 64 if args.quick else args.n
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    standard, meta = standard_model(cfg, dataset, device)
    tuned, _ = finetuned_model(cfg, dataset, device, standard, meta)
    x, y = ev.eval_subset(dataset.test, n, device, cfg.eval.order)
    acfg = attack_spec("pgd", cfg.attack.pgd)
    models = (("standard", standard), (cfg.finetune.regime, tuned))
    protocols = {
        "standalone": lambda m: standalone_pgd(m, x, y, acfg, cfg.seed),
        "chained": lambda m: [e.accuracy for e in ev.run_pgd(m, x, y, acfg, cfg.seed)],
    }
    rows = []
    for regime, model in models:
        protocols["chained"](model)  # untimed warm-up: one-off kernel and allocation costs
        seconds: dict[str, list[float]] = {name: [] for name in protocols}
        found: dict[str, tuple[int, list[float]]] = {}
        # ABBA order: neither protocol always runs first; both are deterministic, so the counts and
        # accuracies of every repeat are the same.
        for name in ("standalone", "chained", "chained", "standalone"):
            counter = PassCounter(model)
            accuracies: list[float] = []
            seconds[name].append(
                timed(device, lambda c=counter, acc=accuracies, n=name: acc.extend(protocols[n](c)))
            )
            found[name] = (counter.grad_images, accuracies)
        for name in protocols:
            rows.append(
                {
                    "regime": regime,
                    "protocol": name,
                    "seconds (mean of 2)": round(sum(seconds[name]) / 2, 2),
                    "image-gradients": found[name][0],
                    "robust acc per eps": " ".join(f"{a:.3f}" for a in found[name][1]),
                    "speed-up": round(sum(seconds["standalone"]) / sum(seconds[name]), 2),
                }
            )
    print_table(
        f"PGD evaluation protocol, {describe(device)}",
        pd.DataFrame(rows),
        [
            f"{dataset.label}, {standard.name}, first {len(y)} test images of the {cfg.eval.order} order, "
            f"PGD-{acfg.steps}, "
            f"eps_255 {list(acfg.eps_255)}, margin loss at {list(acfg.margin_at_255)}, "
            f"batch {acfg.batch_size}",
            "speed-up: standalone seconds / this protocol's seconds, same models and images, same run, "
            "after an untimed warm-up, two runs each in ABBA order",
        ],
    )
    if budgets:
        n_cw = 16 if args.quick else args.n_cw
        print()
        print_table(
            f"C&W budgets, {describe(device)}",
            pd.DataFrame(cw_rows(models, budgets, dataset, n_cw, cfg, device)),
            [
                f"{dataset.label}, {standard.name}, first {n_cw} test images of the {cfg.eval.order} order, "
                f"{cfg.attack.cw.binary_search_steps} binary-search steps, batch {cfg.attack.cw.batch_size}",
                "median L2: over the images the model gets right, an image never broken counting as "
                "infinitely far (the study's definition); robust@r: fraction of all images",
            ],
        )


if __name__ == "__main__":
    main()
