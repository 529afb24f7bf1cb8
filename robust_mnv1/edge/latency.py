"""Latency as an edge engineer measures it: batch 1, one thread, after a warm-up, the spread of many calls,
for eager PyTorch and each ONNX file."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robust_mnv1.edge.onnx_export import INPUT_NAME, OUTPUT_NAME, onnx_session
from robust_mnv1.models import MobileNetV1


@dataclass(frozen=True)
class Latency:
    """Wall times of single calls, in milliseconds, in the order they ran."""

    times_ms: tuple[float, ...]

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.times_ms, q))

    @property
    def median(self) -> float:
        return self.percentile(50)

    def summary(self) -> dict[str, float]:
        """Median, p10, p90 and interquartile range (ms), and the number of calls."""
        p = {q: self.percentile(q) for q in (10, 25, 50, 75, 90)}
        return {
            "median_ms": p[50],
            "p10_ms": p[10],
            "p90_ms": p[90],
            "iqr_ms": p[75] - p[25],
            "n": len(self.times_ms),
        }


def compare_latency(
    calls: Mapping[str, Callable[[], object]], *, reps: int, warmup: int, blocks: int = 10
) -> dict[str, Latency]:
    """Time ``reps`` single calls of each of ``calls``, after ``warmup`` untimed calls of each.

    The calls run in ``blocks`` rounds, each engine taking its turn in a rotated order, so a change
    in the machine's load during the measurement falls on every engine rather than on one of them.
    """
    if reps < blocks:
        raise ValueError(f"reps={reps} must be at least blocks={blocks}")
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for b in range(blocks):
        n = reps // blocks + (b < reps % blocks)
        for name in names[b % len(names) :] + names[: b % len(names)]:
            call = calls[name]
            for _ in range(n):
                start = time.perf_counter_ns()
                call()
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    return {name: Latency(tuple(t)) for name, t in times.items()}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def edge_latency(
    model: MobileNetV1,
    image_size: int,
    onnx_files: Mapping[str, str | Path],
    *,
    reps: int = 1000,
    warmup: int = 50,
    blocks: int = 10,
    seed: int = 0,
) -> dict[str, Latency]:
    """Batch-1 latency of ``model`` in eager PyTorch (key ``"pytorch eager"``) and of each ONNX file of
    ``onnx_files`` (by its key) in onnxruntime's CPU execution provider, all on one thread.

    One thread for both, as on a single edge core, and so that the figures do not depend on how many
    cores the host has. Each engine gets the same image, ``warmup`` untimed calls and ``reps`` timed
    ones, interleaved (:func:`compare_latency`). PyTorch runs under ``inference_mode`` with the
    model's own (antialiased) resize, the way the study times it.
    """
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, image_size, image_size, generator=gen)
    array = image.numpy()
    eager = copy.deepcopy(model).cpu().eval()
    sessions = {name: onnx_session(path, threads=1) for name, path in onnx_files.items()}
    calls: dict[str, Callable[[], object]] = {"pytorch eager": lambda: eager(image)}
    for name, session in sessions.items():
        calls[name] = lambda s=session: s.run([OUTPUT_NAME], {INPUT_NAME: array})
    with torch_threads(1), torch.inference_mode():
        return compare_latency(calls, reps=reps, warmup=warmup, blocks=blocks)
