"""Figures of the series: each metric against α and against ρ, and what fine-tuning gained, with the
95% CI over images of every point as its error bar."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from robust_mnv1.report.verdicts import REGIME_LABELS, Board, Metric, Series

_STYLE = {"standard": ("-", "o"), "pgd-at": ("--", "s"), "fast-at": (":", "^"), "trades": ("-.", "D")}


def save_png(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG, atomically and with no date metadata (same data, same bytes)."""
    from robust_mnv1.atomic import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    atomic_write(path, lambda p: Path(p).write_bytes(buf.getvalue()))


def _errorbar(ax, xs, ys, los, his, **kw) -> None:
    ys, los, his = (np.asarray(v, dtype=float) for v in (ys, los, his))
    # A bound at ±inf (a median over mostly unbroken images) has no bar to draw.
    lower = np.where(np.isfinite(los), ys - los, 0.0)
    upper = np.where(np.isfinite(his), his - ys, 0.0)
    ax.errorbar(xs, ys, yerr=[np.maximum(lower, 0), np.maximum(upper, 0)], capsize=3, **kw)


def _shown(metric: Metric, values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return np.exp(v) if metric.kind == "cw" else v


def plot_series(boards: Mapping[str, Board], name: str, path: Path) -> None:
    """One row per dataset, one panel per metric: the metric along every ``name`` series, by regime."""
    rows = [(key, b) for key, b in boards.items() if any(s.name == name for s in b.series)]
    metrics: list[Metric] = []
    for _, b in rows:
        for st in b.stats:
            if st.metric not in metrics:
                metrics.append(st.metric)
    fig = Figure(figsize=(5.0 * max(1, len(metrics)), 3.8 * max(1, len(rows))), layout="constrained")
    if not rows or not metrics:
        ax = fig.subplots()
        ax.text(0.5, 0.5, f"no {name} series in the records", ha="center", va="center")
        ax.set_axis_off()
        save_png(fig, path)
        return
    axes = fig.subplots(len(rows), len(metrics), squeeze=False)
    for (data_key, board), ax_row in zip(rows, axes, strict=True):
        for ax, metric in zip(ax_row, metrics, strict=True):
            for st in (st for st in board.stats if st.series.name == name and st.metric == metric):
                s: Series = st.series
                style, marker = _STYLE.get(s.regime, ("-", "o"))
                xs = [s.level(o) for o in st.models]
                lo, hi = zip(*st.cis, strict=True)
                _errorbar(
                    ax,
                    xs,
                    _shown(metric, st.values),
                    _shown(metric, lo),
                    _shown(metric, hi),
                    linestyle=style,
                    marker=marker,
                    label=f"{REGIME_LABELS.get(s.regime, s.regime)} ({s.label})",
                )
            symbol = "α" if name == "width" else "ρ"
            ax.set_title(f"{data_key}:\n{metric.label}", fontsize=9)
            ax.set_xlabel(f"{symbol} ({name} multiplier)")
            ax.set_ylabel("median L2" if metric.kind == "cw" else "%")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    save_png(fig, path)


def plot_gains(boards: Mapping[str, Board], path: Path) -> None:
    """Fine-tuned minus standard worst-case@8/255 robust accuracy along each series, with CIs."""
    panels = [
        (key, name)
        for key, b in boards.items()
        for name in ("width", "resolution")
        if any(g.series.name == name for g in b.gains)
    ]
    fig = Figure(figsize=(6, 4 * max(1, len(panels))), layout="constrained")
    if not panels:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no model has both a standard and a fine-tuned series", ha="center", va="center")
        ax.set_axis_off()
        save_png(fig, path)
        return
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for (data_key, name), (ax,) in zip(panels, axes, strict=True):
        gains = [g for g in boards[data_key].gains if g.series.name == name]
        for series in dict.fromkeys(g.series for g in gains):
            mine = [g for g in gains if g.series == series]
            style, marker = _STYLE.get(series.regime, ("-", "o"))
            _errorbar(
                ax,
                [g.level for g in mine],
                [g.gain for g in mine],
                [g.lo for g in mine],
                [g.hi for g in mine],
                linestyle=style,
                marker=marker,
                label=f"{REGIME_LABELS.get(series.regime, series.regime)} − standard",
            )
        ax.axhline(0, color="0.5", lw=0.8)
        symbol = "α" if name == "width" else "ρ"
        fixed = gains[0].series.fixed if gains else math.nan
        ax.set_title(
            f"{data_key}: fine-tuning gain along {name} ({'ρ' if name == 'width' else 'α'} = {fixed:g})"
        )
        ax.set_xlabel(f"{symbol} ({name} multiplier)")
        ax.set_ylabel("gain in worst-case@8/255 robust accuracy (pp)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_png(fig, path)
