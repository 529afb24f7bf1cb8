"""Measured time per layer kind, next to its share of mult-adds.

The paper notes that 1x1 convolutions hold ~95% of MobileNet's mult-adds and map straight onto
GEMM, while depthwise convolutions are little math but memory-bound. This module measures the
picture on the current device: each conv unit (conv + BN + ReLU) and the classifier is timed on
its own, on the exact input it sees in a real forward pass, so kinds can be compared directly.

``profile_out=DIR`` on the cost CLI saves the result as a JSON record in ``DIR``; the leaderboard
renders the records in ``results/profiles/`` as its per-layer latency notes.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robust_mnv1.cost import layer_costs
from robust_mnv1.infra.atomic import atomic_write_json
from robust_mnv1.infra.envinfo import device_slug, environment
from robust_mnv1.models.mobilenet_v1 import ConvBNReLU, MobileNetV1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_layers(model: MobileNetV1, device: torch.device, *, batch: int = 64, reps: int = 20) -> pd.DataFrame:
    """Median milliseconds per call of every conv unit and the classifier, one row each (forward order).

    The model runs in channels_last, the layout the suite trains and attacks in (robust_mnv1.training.fit).
    """
    model = model.to(device, memory_format=torch.channels_last).eval()
    units = {
        f"{n}.conv": m
        for n, m in model.features.named_modules(prefix="features")
        if isinstance(m, ConvBNReLU)
    }
    units["classifier"] = model.classifier
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, name=name: inputs.__setitem__(name, args[0]))
        for name, m in units.items()
    ]
    size = model.input_resolution
    try:
        model(torch.rand(batch, 3, size, size, device=device))
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, m in units.items():
        x = inputs[name]
        for _ in range(3):  # warm-up: allocator, kernel selection
            m(x)
        times = []
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            m(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
        rows.append({"name": name, "ms": float(torch.tensor(times).median()) * 1e3})
    return pd.DataFrame(rows)


def kind_shares(model: MobileNetV1, timing: pd.DataFrame) -> pd.DataFrame:
    """Share of measured time next to share of mult-adds, by layer kind, in %."""
    df = layer_costs(model).merge(timing, on="name")
    by_kind = df.groupby("kind", sort=False)[["macs", "ms"]].sum()
    out = pd.DataFrame(
        {
            "time_ms": by_kind["ms"],
            "time_%": 100 * by_kind["ms"] / by_kind["ms"].sum(),
            "mult_adds_%": 100 * by_kind["macs"] / by_kind["macs"].sum(),
        }
    )
    out["time_per_mult_add_vs_avg"] = out["time_%"] / out["mult_adds_%"]
    return out


def profile_record(
    model: MobileNetV1, device: torch.device, shares: pd.DataFrame, *, batch: int, reps: int
) -> dict[str, Any]:
    """What :func:`kind_shares` measured, with the model, the settings and the environment."""
    return {
        "kind": "layer-profile",
        "schema_version": 1,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": model.name,
        "batch": batch,
        "reps": reps,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "env": environment(device),
        "kinds": [
            {"kind": kind, **{k: round(float(v), 4) for k, v in row.items()}}
            for kind, row in shares.iterrows()
        ],
    }


def save_profile(record: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``record`` atomically to ``out_dir/<model>__<device>.json`` (one file per model and device)."""
    device = device_slug(record["env"]["device"])
    return atomic_write_json(Path(out_dir) / f"{record['model']}__{device}.json", record)
