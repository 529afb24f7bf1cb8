"""The study's PGD protocol (``evaluate.run_pgd``) against the standalone per-eps grid, on trained models.

``run_pgd`` walks the eps grid upwards and attacks only the images the previous eps left robust (the
margin loss only CE's survivors). The baseline, measured in the same run on the same models and
images, is the plain protocol: every eps attacks every image with CE, the margin-loss eps a second
time with the margin loss, and the per-image worst case of the two is kept. The table gives seconds,
image-gradients (the images in passes that build a graph) and robust accuracy per eps for both.

The models are the study's own, from the model cache (trained and cached on first use): by default
the CPU preview's (``experiment=cpu_preview``, CIFAR-10 (JPEG q75)) at ``--alpha``; ``--quick`` trains
a tiny digits model instead, for CI. Run from the repository root:

    OMP_NUM_THREADS=1 python bench/eval_bench.py --device cpu --threads 1 --alpha 0.25 --n 1000
"""

from __future__ import annotations

import pandas as pd
from _common import bench_parser, describe, print_table, setup
from omegaconf import DictConfig
from study_bench import PassCounter, timed

from attacks import PGD, worst_case
from robust_mnv1 import evaluate as ev
from robust_mnv1.cli import compose_config
from robust_mnv1.data import load_dataset
from robust_mnv1.zoo import cache_root, finetuned_model, standard_model

QUICK = ["experiment=smoke", "train.epochs=2", "finetune.epochs=1"]


def standalone_pgd(model, x, y, acfg: DictConfig, seed: int) -> list[float]:
    """Robust accuracy per eps when every eps attacks every image (the baseline protocol)."""
    out = []
    for e in sorted(acfg.eps_255):
        common = dict(
            eps=e / 255,
            steps=acfg.steps,
            random_start=acfg.random_start,
            restarts=acfg.restarts,
            batch_size=acfg.batch_size,
            seed=seed,
        )
        res = PGD(**common, loss=acfg.loss)(model, x, y)
        if e in acfg.margin_at_255 and acfg.loss != "margin":
            res = worst_case([res, PGD(**common, loss="margin")(model, x, y)])
        out.append(float((res.clean_correct & ~res.success).float().mean()))
    return out


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.25, help="width of the preview model (0.25 or 0.5)")
    parser.add_argument("--n", type=int, default=1000, help="test images attacked (default 1000)")
    args = parser.parse_args()
    device = setup(parser, args)
    preview = ["experiment=cpu_preview", f"model.alpha={args.alpha}"]
    overrides = [*QUICK, "model.alpha=0.25"] if args.quick else preview
    cfg = compose_config([*overrides, f"seed={args.seed}"])
    n = 64 if args.quick else args.n
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    standard, meta = standard_model(cfg, dataset, device)
    tuned, _ = finetuned_model(cfg, dataset, device, standard, meta)
    x, y = ev.eval_subset(dataset.test, n, device)
    acfg = cfg.attack.pgd
    rows = []
    for regime, model in (("standard", standard), (cfg.finetune.regime, tuned)):
        for name, run in (
            ("standalone", lambda m: standalone_pgd(m, x, y, acfg, cfg.seed)),
            ("chained", lambda m: [e["accuracy"] for e in ev.run_pgd(m, x, y, acfg, cfg.seed)]),
        ):
            counter = PassCounter(model)
            accuracies: list[float] = []
            seconds = timed(device, lambda run=run, c=counter, acc=accuracies: acc.extend(run(c)))
            rows.append(
                {
                    "regime": regime,
                    "protocol": name,
                    "seconds": round(seconds, 2),
                    "image-gradients": counter.grad_images,
                    "robust acc per eps": " ".join(f"{a:.3f}" for a in accuracies),
                }
            )
        base, chained = rows[-2], rows[-1]
        chained["speed-up"] = round(base["seconds"] / chained["seconds"], 2)
        base["speed-up"] = 1.0
    print_table(
        f"PGD evaluation protocol, {describe(device)}",
        pd.DataFrame(rows),
        [
            f"{dataset.label}, {standard.name}, first {len(y)} test images, PGD-{acfg.steps}, "
            f"eps_255 {list(acfg.eps_255)}, margin loss at {list(acfg.margin_at_255)}, "
            f"batch {acfg.batch_size}",
            "speed-up: standalone seconds / chained seconds, same models and images, same run",
        ],
    )


if __name__ == "__main__":
    main()
