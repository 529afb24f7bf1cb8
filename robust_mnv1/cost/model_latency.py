"""Batch-1 CPU latency of several architectures, measured in one run so that the figures compare.

A latency taken inside each unit's evaluation depends on the machine and on what else ran beside it:
a study spread over two hosts and run beside training workers gave one architecture figures up to 5x
apart, and a smaller model a larger figure than a bigger one. Here every architecture is timed in the
same process, interleaved (:func:`robust_mnv1.edge.latency.compare_latency`), so that a drift in load
falls on all of them alike. Weights do not change what a forward costs, so freshly built models stand
in for trained ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from robust_mnv1.edge.latency import Latency, compare_latency, torch_threads
from robust_mnv1.infra.atomic import atomic_write_json
from robust_mnv1.infra.envinfo import device_slug, environment
from robust_mnv1.models.mobilenet_v1 import build_model, input_resolution


@dataclass(frozen=True)
class Architecture:
    """One board architecture: what :func:`build_model` needs, and the name it must come out as."""

    name: str
    alpha: float
    rho: float
    profile: str

    def build(self) -> torch.nn.Module:
        """The model in eval mode and in channels_last, the layout the suite trains, attacks and times
        its records in (a batch-1 forward ran 1.15x as fast in it as in the default layout)."""
        model = build_model(alpha=self.alpha, rho=self.rho, profile=self.profile).eval()
        model = model.to(memory_format=torch.channels_last)
        if model.name != self.name:
            raise ValueError(f"alpha {self.alpha}, rho {self.rho} builds {model.name}, not {self.name}")
        return model


def measure(archs: Sequence[Architecture], *, reps: int, warmup: int, blocks: int) -> dict[str, Latency]:
    """Batch-1 forwards of every architecture on one CPU thread, interleaved in ``blocks`` rounds.

    The input is a [0, 1] image at the profile's full size, as the study feeds it: the ρ resize is
    part of the forward.
    """
    gen = torch.Generator().manual_seed(0)
    calls: dict[str, Callable[[], object]] = {}
    for a in archs:
        size = input_resolution(a.profile, 1.0)
        model, image = a.build(), torch.rand(1, 3, size, size, generator=gen)
        calls[a.name] = lambda m=model, x=image: m(x)
    with torch_threads(1), torch.inference_mode():
        return compare_latency(calls, reps=reps, warmup=warmup, blocks=blocks)


def latency_record(
    archs: Sequence[Architecture], found: Mapping[str, Latency], *, reps: int, warmup: int, blocks: int
) -> dict[str, Any]:
    """What :func:`measure` found, per architecture its median, p10, p90 and IQR in ms, with the
    settings and the environment."""
    return {
        "kind": "model-latency",
        "schema_version": 1,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "batch": 1,
        "threads": 1,
        "reps": reps,
        "warmup": warmup,
        "blocks": blocks,
        "env": environment(torch.device("cpu")),
        "models": [
            {
                "model": a.name,
                "alpha": a.alpha,
                "rho": a.rho,
                "profile": a.profile,
                **{k: round(v, 4) for k, v in found[a.name].summary().items()},
            }
            for a in archs
        ],
    }


def save_latency(record: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``record`` atomically to ``out_dir/<device>.json``: one file per kind of host, the newest
    measurement replacing the last."""
    return atomic_write_json(Path(out_dir) / f"{device_slug(record['env']['device'])}.json", record)
