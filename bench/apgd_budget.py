"""APGD's budget in the study's worst case: what each APGD setting adds over FGSM + PGD, and its cost.

For a trained model of the study (read from the model cache, never trained here), takes the first
``--n`` images of the evaluation order and the images that the committed FGSM and PGD records left
robust at 8/255 (the prefix of their masks), then runs APGD-CE followed by APGD-T on those survivors
at several budgets, each from the same survivors. Prints, per budget, how many more images it broke,
the model's worst-case accuracy before and after, and the attack's wall time and gradient evaluations
(forward + backward per image); the budget named ``autoattack`` is AutoAttack's standard APGD pair
(100 steps, 9 target classes) and is the reference for how much of the gap a cheaper budget closes.

    OMP_NUM_THREADS=1 python bench/apgd_budget.py --alpha 0.25 --n 1000
    python bench/apgd_budget.py --alpha 0.5 --n 1000 --budgets small,protocol --device cuda
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from attacks.base import QueryCounter
from robust_mnv1.config.compose import compose_config
from robust_mnv1.data import load_dataset
from robust_mnv1.evaluation import protocol as ev
from robust_mnv1.evaluation.specs import APGDSpec, SquareSpec
from robust_mnv1.evaluation.study import Unit
from robust_mnv1.infra.envinfo import cpu_name
from robust_mnv1.training.model_cache import cache_root, finetuned_model, standard_key, standard_model

# name -> (APGD-CE steps, APGD-T steps, target classes)
BUDGETS = {
    "small": (25, 25, 1),
    "protocol": (50, 50, 3),
    "long": (100, 100, 3),
    "wide": (50, 50, 9),
    "autoattack": (100, 100, 9),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--rho", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--regime", default="pgd-at", choices=("standard", "pgd-at"))
    ap.add_argument("--n", type=int, default=1000, help="first images of the evaluation order")
    ap.add_argument("--budgets", default=",".join(BUDGETS), help=f"comma-separated of {', '.join(BUDGETS)}")
    ap.add_argument("--results", type=Path, default=Path("results"), help="where the FGSM/PGD records are")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    cfg = compose_config(
        ["experiment=study", f"model.alpha={args.alpha}", f"model.rho={args.rho}", f"seed={args.seed}"]
    )
    device = torch.device(args.device)
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    unit = Unit(cfg, dataset, device, args.results / "runs")
    earlier = [unit.record(args.regime, family) for family in ("fgsm", "pgd")]
    if None in earlier:
        raise SystemExit(f"error: {unit.name} {args.regime}: no FGSM and PGD records in {args.results}/runs")
    cached = cache_root(cfg) / "models" / f"{unit.name}-standard-{standard_key(cfg)}" / "final.safetensors"
    if not cached.exists():
        raise SystemExit(f"error: {cached} is missing; this benchmark trains no model")
    model, meta = standard_model(cfg, dataset, device)
    if args.regime != "standard":
        model, _ = finetuned_model(cfg, dataset, device, model, meta)
    x, y = ev.eval_subset(dataset.test, args.n, device, cfg.eval.order)
    n_records = earlier[0].clean.n
    full = ev.survivors([e for r in earlier for e in r.eps_results], 8, n_records)
    before = full[: args.n].to(device)
    correct = ev.clean_accuracy(model, x, y).correct
    print(f"{unit.name} {args.regime} seed {args.seed}, {dataset.label}: first {args.n} images of the order,")
    print(
        f"clean {correct}, FGSM+PGD robust at 8/255 {int(before.sum())}; {cpu_name()} "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}"
    )
    print("| budget (CE, T steps x targets) | broken by CE | by T | worst case | s | grad evals |")
    print("|---|---|---|---|---|---|")
    for name in args.budgets.split(","):
        ce, t, k = BUDGETS[name]
        spec = APGDSpec(
            eps_255=(8,),
            ce_steps=ce,
            targeted_steps=t,
            n_target_classes=k,
            batch_size=512,
            square=SquareSpec(samples=0, queries=1),
        )
        counted = QueryCounter(model)
        start = time.perf_counter()
        (entry,) = ev.run_apgd(counted, x, y, spec, args.seed, {8: before})
        seconds = time.perf_counter() - start
        b, worst = entry.broken, f"{int(before.sum()) / args.n:.1%} -> {entry.robust / args.n:.1%}"
        cells = [f"{name} ({ce}, {t} x {k})", b["apgd-ce"], b["apgd-t"], worst, round(seconds), counted.count]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
