"""Memory layout: MobileNet V1 steps with channels_last weights against the default NCHW layout.

Two steps per width, each on the same model and batch in both layouts: a training step (forward,
backward, SGD) and an attack step (forward and the gradient with respect to the input, model in
eval mode, as PGD runs it). The input stays NCHW in both, as the suite's data arrive; only the
model's weights (and so its activations) change layout. Precision follows the suite: fp32 on CPU,
bf16 autocast on CUDA. Each figure is the best of the timed repeats after two warm-up steps.

This is the measurement behind ``robust_mnv1.training.fit`` putting models in channels_last on every device.

Run from the repository root: ``python bench/layout_bench.py --device cpu --quick``.
"""

from __future__ import annotations

import time

import pandas as pd
import torch
import torch.nn.functional as F
from _common import IMAGE_SIZE, NUM_CLASSES, bench_parser, describe, print_table, setup, synchronize

from robust_mnv1.models import build_model
from robust_mnv1.training.step import autocast_for

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def step_rate(kind: str, alpha: float, layout: str, *, batch: int, repeats: int, device, seed: int) -> float:
    """Best images per second of ``repeats`` timed steps of ``kind`` ("train" or "attack")."""
    torch.manual_seed(seed)
    model = build_model(alpha=alpha, profile="cifar", num_classes=NUM_CLASSES)
    model = model.to(device, memory_format=LAYOUTS[layout]).train(kind == "train")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen, device=device)

    def step() -> None:
        with autocast_for(device):
            if kind == "train":
                loss = F.cross_entropy(model(x).float(), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            else:
                xa = x.clone().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(model(xa).float(), y), xa)

    for _ in range(2):
        step()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return batch / best


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    device = setup(parser, args)
    cuda = device.type == "cuda"
    alphas = (0.25,) if args.quick else (0.25, 1.0)
    batch = (512 if cuda else 32) if args.quick else (512 if cuda else 128)
    repeats = 2 if args.quick else (20 if cuda else 4)
    rows = []
    for alpha in alphas:
        for kind in ("train", "attack"):
            rate = {
                layout: step_rate(
                    kind, alpha, layout, batch=batch, repeats=repeats, device=device, seed=args.seed
                )
                for layout in LAYOUTS
            }
            rows.append(
                {
                    "step": kind,
                    "alpha": alpha,
                    "batch": batch,
                    "channels_last img/s": round(rate["channels_last"], 1),
                    "nchw img/s": round(rate["nchw"], 1),
                    "channels_last/nchw": round(rate["channels_last"] / rate["nchw"], 3),
                }
            )
    notes = [
        "train: forward, backward, SGD step in train mode; attack: forward and input gradient in eval mode",
        "MobileNet V1 cifar profile, random weights and inputs; inputs NCHW in both layouts",
        f"precision: {'bf16 autocast' if cuda else 'fp32'}; "
        f"each figure: best of {repeats} after 2 warm-up steps",
    ]
    print_table(f"Memory layout, channels_last vs NCHW; {describe(device)}", pd.DataFrame(rows), notes)


if __name__ == "__main__":
    main()
