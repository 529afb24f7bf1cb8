"""Benchmark the native attacks against foolbox, ART and (if installed) torchattacks.

Times FGSM, PGD-10, APGD-CE-100, APGD-T-100 (9 target classes) and C&W (100 steps x 5 binary-search
steps; 20 x 5 with ``--quick``) on one model and batch, after a warm-up run of every library, and
prints one table: images per second, the ratio native/peer measured in this same run, robust
accuracy and (for C&W) the median L2 distance. APGD runs natively and in torchattacks only (foolbox
and ART have no APGD backend here).

The model is MobileNet V1 (CIFAR profile, ``--alpha``) from ``robust_mnv1.models`` when that imports,
else a small local CNN. Random weights give near-constant logits, so the model is first fitted for a
few steps on synthetic data (a fixed random prototype per class plus noise); the batch to attack is
drawn from the same distribution and labelled with the model's own predictions, so every sample is
clean-correct and robust accuracy is the fraction the attack failed on.

    python bench/attacks_bench.py --quick                 # CI: tiny, 1-2 minutes on CPU
    python bench/attacks_bench.py --device cuda --batch 500 --alpha 1.0
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from attacks import APGD, APGDT, FGSM, PGD, CarliniWagnerL2

EPS = 8 / 255
PGD_STEPS = 10
# AutoAttack's budget: APGD's step-size checkpoints are fractions of it, and at 10 steps their rounding
# differs between implementations (torchattacks may halve at every step after the second).
APGD_STEPS = 100
NUM_CLASSES = 10


def small_cnn() -> nn.Module:
    """Fallback model for 32x32 RGB images when robust_mnv1 is unavailable."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, NUM_CLASSES),
    )


def build(alpha: float) -> tuple[nn.Module, str]:
    """MobileNet V1 from robust_mnv1 if it imports, else the local CNN; returns the model and its name.

    With robust_mnv1 the model is in channels_last and the allocator keeps freed memory, as the
    suite attacks its models (robust_mnv1.training.fit, robust_mnv1.infra.malloc); every library gets
    the same.
    """
    try:
        from robust_mnv1.infra.malloc import keep_freed_memory
        from robust_mnv1.models import build_model
    except ImportError:
        return small_cnn(), "local small CNN (robust_mnv1.models not importable)"
    keep_freed_memory()
    model = build_model(alpha=alpha, rho=1.0, profile="cifar", num_classes=NUM_CLASSES)
    return model.to(memory_format=torch.channels_last), (
        f"MobileNet V1 alpha={alpha:g}, CIFAR profile, channels_last"
    )


def synthetic(
    n: int, generator: torch.Generator, prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images near one of the class prototypes, clipped to [0, 1], and their classes."""
    y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    noise = 0.15 * torch.randn(n, *prototypes.shape[1:], generator=generator)
    return (prototypes[y] + noise).clamp(0.0, 1.0), y


def prepare(model: nn.Module, batch: int, fit_steps: int, device: torch.device, seed: int = 0):
    """Fit ``model`` briefly on synthetic data; return it in eval mode with a batch and its own labels."""
    g = torch.Generator().manual_seed(seed)
    # Smooth prototypes (upsampled 4x4 patterns), so that the task looks a little like natural images.
    prototypes = F.interpolate(torch.rand(NUM_CLASSES, 3, 4, 4, generator=g), size=32, mode="bilinear")
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(fit_steps):
        xb, yb = synthetic(64, g, prototypes)
        loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, _ = synthetic(batch, g, prototypes)
    x = x.to(device)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


class Bf16Autocast(nn.Module):
    """The wrapped model under bf16 autocast (CUDA); logits come back fp32, so losses and input
    gradients are fp32 as in the fp32 run. Compares what bf16 does to robust accuracy."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x).float()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> dict[str, float]:
    """Robust accuracy and median L2 of the successful samples (not the study's median, which counts
    unbroken samples as infinitely far), from a fresh eval-mode pass."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        success = correct & (model(x_adv).argmax(1) != y)
    l2 = (x_adv - x).flatten(1).norm(dim=1)
    return {
        "robust_acc": float((correct & ~success).float().mean()),
        "median_l2": float(l2[success].median()) if bool(success.any()) else float("nan"),
    }


def run_ours(attack: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, warmup: int) -> dict[str, Any]:
    attack(model, x[:warmup], y[:warmup])
    res = attack(model, x, y)
    return {
        "seconds": res.seconds,
        "robust_acc": res.robust_accuracy,
        "median_l2": res.median_l2() if res.minimization else float("nan"),
        "queries/img": res.queries / x.shape[0],
    }


def run_torchattacks(
    make: Callable[[], Any], model: nn.Module, x: torch.Tensor, y: torch.Tensor, warmup: int
) -> dict[str, Any]:
    attack = make()
    attack(x[:warmup], y[:warmup])
    sync(x.device)
    start = time.perf_counter()
    x_adv = attack(x, y).detach()
    sync(x.device)
    return {
        "seconds": time.perf_counter() - start,
        **summarise(model, x, y, x_adv),
        "queries/img": float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny run for CI: alpha 0.25, batch 16")
    parser.add_argument(
        "--batch", type=int, default=None, help="images per attack (default 16 quick, 128 else)"
    )
    parser.add_argument(
        "--alpha", type=float, default=None, help="MobileNet width (default 0.25 quick, 1.0 else)"
    )
    parser.add_argument(
        "--fit-steps", type=int, default=None, help="fitting steps (default 150 quick, 200 else)"
    )
    parser.add_argument(
        "--art-cw-batch",
        type=int,
        default=None,
        help="images for ART's (very slow) C&W (default 1 quick, 2 else)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: 1 with --quick, else torch's)"
    )
    parser.add_argument("--libs", default="native,foolbox,art,torchattacks")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: every library attacks the model under bf16 autocast (fp32 logits and gradients)",
    )
    args = parser.parse_args(argv)

    # One thread for the CI smoke run, as the other benches: OpenMP threads stall on a shared CPU.
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    batch = args.batch or (16 if args.quick else 128)
    alpha = args.alpha or (0.25 if args.quick else 1.0)
    fit_steps = args.fit_steps if args.fit_steps is not None else (150 if args.quick else 200)
    libs = args.libs.split(",")
    warmup = min(2, batch)

    torch.manual_seed(0)  # the weights, so that every run benchmarks the same model
    model, model_name = build(alpha)
    start = time.perf_counter()
    model, x, y = prepare(model, batch, fit_steps, device)
    if args.precision == "bf16":
        # Relabel with the bf16 model's own predictions, so clean accuracy stays 100%.
        model = Bf16Autocast(model).eval()
        with torch.no_grad():
            y = model(x).argmax(1)
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    )
    print(
        f"device: {device_name} ({device.type}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, precision {args.precision}"
    )
    fit_seconds = time.perf_counter() - start
    print(f"model: {model_name}; fitted {fit_steps} steps on synthetic data in {fit_seconds:.1f}s")
    print(
        f"batch: {batch} synthetic 32x32 images labelled with the model's own predictions "
        f"({len(y.unique())} distinct classes), so clean accuracy is 100%"
    )

    # lr 0.01 rather than the class default (0.003), for the 100-step budget this table has always timed.
    # --quick cuts the budget: ART's C&W alone took over a minute of the CI run at 100 x 5.
    cw_steps, cw_searches = (20, 5) if args.quick else (100, 5)
    cw_kwargs = {"steps": cw_steps, "binary_search_steps": cw_searches, "lr": 0.01}
    plans: list[tuple[str, str, Callable[[], dict[str, Any]]]] = []
    for lib in ("native", "foolbox", "art"):
        if lib not in libs:
            continue
        cw_n = batch if lib != "art" else min(args.art_cw_batch or (1 if args.quick else 2), batch)
        plans += [
            (
                lib,
                "FGSM",
                lambda lib=lib: run_ours(FGSM(eps=EPS, backend=lib, batch_size=batch), model, x, y, warmup),
            ),
            (
                lib,
                f"PGD-{PGD_STEPS}",
                lambda lib=lib: run_ours(
                    PGD(eps=EPS, steps=PGD_STEPS, backend=lib, batch_size=batch), model, x, y, warmup
                ),
            ),
            (
                lib,
                f"C&W {cw_steps}x{cw_searches}" + ("" if cw_n == batch else f" ({cw_n} img)"),
                lambda lib=lib, n=cw_n: run_ours(
                    CarliniWagnerL2(**cw_kwargs, backend=lib, batch_size=batch),
                    model,
                    x[:n],
                    y[:n],
                    min(1, n),
                ),
            ),
        ]
    if "native" in libs:
        plans += [
            (
                "native",
                f"APGD-CE-{APGD_STEPS}",
                lambda: run_ours(APGD(eps=EPS, steps=APGD_STEPS, batch_size=batch), model, x, y, warmup),
            ),
            (
                "native",
                f"APGD-T-{APGD_STEPS}",
                lambda: run_ours(APGDT(eps=EPS, steps=APGD_STEPS, batch_size=batch), model, x, y, warmup),
            ),
        ]
    if "torchattacks" in libs:
        try:
            import torchattacks
        except ImportError:
            print("torchattacks: not installed (optional bench extra), skipped")
        else:
            step = 2.5 * EPS / PGD_STEPS
            plans += [
                (
                    "torchattacks",
                    "FGSM",
                    lambda: run_torchattacks(lambda: torchattacks.FGSM(model, eps=EPS), model, x, y, warmup),
                ),
                (
                    "torchattacks",
                    f"PGD-{PGD_STEPS}",
                    lambda: run_torchattacks(
                        lambda: torchattacks.PGD(
                            model, eps=EPS, alpha=step, steps=PGD_STEPS, random_start=True
                        ),
                        model,
                        x,
                        y,
                        warmup,
                    ),
                ),
                (
                    "torchattacks",
                    f"APGD-CE-{APGD_STEPS}",
                    lambda: run_torchattacks(
                        lambda: torchattacks.APGD(model, eps=EPS, steps=APGD_STEPS, loss="ce", seed=0),
                        model,
                        x,
                        y,
                        warmup,
                    ),
                ),
                (
                    "torchattacks",
                    f"APGD-T-{APGD_STEPS}",
                    lambda: run_torchattacks(
                        lambda: torchattacks.APGDT(
                            model, eps=EPS, steps=APGD_STEPS, seed=0, n_classes=NUM_CLASSES
                        ),
                        model,
                        x,
                        y,
                        warmup,
                    ),
                ),
                (
                    # torchattacks' CW has no binary search over c: one run at c=1.
                    "torchattacks",
                    f"C&W {cw_steps}x1 (c=1)",
                    lambda: run_torchattacks(
                        lambda: torchattacks.CW(model, c=1.0, kappa=0.0, steps=cw_steps, lr=0.01),
                        model,
                        x,
                        y,
                        warmup,
                    ),
                ),
            ]

    rows = []
    for lib, attack, run in plans:
        n = int(attack.split("(")[1].split()[0]) if "img)" in attack else batch
        out = run()
        rows.append({"library": lib, "attack": attack, "images": n, **out, "img/s": n / out["seconds"]})
        print(f"  done {lib:12s} {attack:22s} {out['seconds']:8.2f}s", flush=True)

    table = pd.DataFrame(rows)
    family = table["attack"].str.split().str[0]
    native_rate = {fam: table.loc[(table.library == "native") & (family == fam), "img/s"] for fam in family}
    table["native/peer"] = [
        float(native_rate[fam].iloc[0]) / rate if len(native_rate[fam]) else float("nan")
        for fam, rate in zip(family, table["img/s"], strict=True)
    ]
    columns = [
        "library",
        "attack",
        "images",
        "img/s",
        "native/peer",
        "robust_acc",
        "median_l2",
        "queries/img",
    ]
    print()
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
