"""The board's figures, as PNGs that are the same bytes for the same records.

From the verdict boards: each metric along the width and resolution series and what fine-tuning
gained, with the 95% CI over images of every point as its error bar. From the table: robust
accuracy against ε and worst-case robust accuracy against MACs, with Wilson 95% CIs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from robust_mnv1.records.schema import REGIMES
from robust_mnv1.report.metric_stats import Metric
from robust_mnv1.report.outcomes import Headline

# The verdict figures name a regime as the verdicts do ("standard training"), the table's figures
# as the table does ("standard").
from robust_mnv1.report.table import REGIME_LABELS as TABLE_REGIME_LABELS
from robust_mnv1.report.verdicts import REGIME_LABELS, Board, Series

# The names of the figures, in the order the board links them.
FIGURES = ("width_series", "resolution_series", "finetune_gain", "robust_acc_vs_eps", "robustness_vs_macs")
_STYLE = {"standard": ("-", "o"), "pgd-at": ("--", "s"), "fast-at": (":", "^"), "trades": ("-.", "D")}


def save_png(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG, atomically and with no date metadata (same data, same bytes)."""
    from robust_mnv1.infra.atomic import atomic_write

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


def _percent_window(ax, bounds: Sequence[float], span: float = 10.0) -> None:
    """Show a percentage panel at least ``span`` points tall and inside [0, 100] (with a margin), so a
    metric every model has at 100% reads as 100% of a percentage, not as the middle of 95-105."""
    finite = np.asarray(bounds, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not finite.size:  # nothing drawn (no model classified an image correctly): matplotlib's default
        return
    lo, hi = float(finite.min()), float(finite.max())
    margin = max(0.0, span - (hi - lo)) / 2 + 0.05 * (hi - lo)
    lo, hi = lo - margin, hi + margin
    shift = max(0.0, -1.0 - lo) - max(0.0, hi - 101.0)
    ax.set_ylim(max(lo + shift, -1.0), min(hi + shift, 101.0))


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
            drawn = [st for st in board.stats if st.series.name == name and st.metric == metric]
            if not drawn:
                # e.g. a worst case that waits for an attack family some of the series' models lack
                _note(ax, f"{data_key}:\n{metric.label}:\nno {name} series has it yet")
                continue
            bounds: list[float] = []
            for st in drawn:
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
                bounds += [*lo, *hi]
            if metric.kind != "cw":
                _percent_window(ax, bounds)
            symbol = "α" if name == "width" else "ρ"
            ax.set_title(f"{data_key}:\n{metric.label}", fontsize=9)
            ax.set_xlabel(f"{symbol} ({name} multiplier)")
            ax.set_ylabel("median L2" if metric.kind == "cw" else "%")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    save_png(fig, path)


def plot_gains(boards: Mapping[str, Board], path: Path, headline: Headline) -> None:
    """Fine-tuned minus standard worst-case robust accuracy at the headline radius along each series,
    with CIs."""
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
        ax.set_ylabel(f"gain in {headline.point_label(headline.worst)} robust accuracy (pp)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_png(fig, path)


def _model_colors(table: pd.DataFrame) -> dict[str, Any]:
    models = (
        table.sort_values(["alpha", "rho", "model"], kind="mergesort")["model"].drop_duplicates().tolist()
    )
    cmap = colormaps["viridis"]
    return {m: cmap(i / max(1, len(models) - 1) * 0.9) for i, m in enumerate(models)}


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_axis_off()


def _data_labels(table: pd.DataFrame) -> dict[str, str]:
    return {k: " / ".join(sorted(set(g["data_label"]))) for k, g in table.groupby("data_key", sort=True)}


def plot_eps(table: pd.DataFrame, curves: pd.DataFrame, path: Path) -> None:
    """One row per dataset: PGD and FGSM robust accuracy against ε (0 = clean) for every model and
    regime of ``table``, from the ``curves`` of its records, with Wilson 95% CIs."""
    labels = _data_labels(table)
    colors = _model_colors(table)
    fig = Figure(figsize=(12, 4.5 * len(labels)), layout="constrained")
    axes = fig.subplots(len(labels), 2, squeeze=False)
    for (data_key, label), ax_row in zip(labels.items(), axes, strict=True):
        for ax, attack, name in ((ax_row[0], "pgd", "PGD"), (ax_row[1], "fgsm", "FGSM")):
            sub = (
                curves[(curves["data_key"] == data_key) & (curves["attack"] == attack)]
                if len(curves)
                else curves
            )
            if sub.empty:
                _note(ax, f"{label}: no {name} records")
                continue
            for (model, regime), g in sub.groupby(["model", "regime"], sort=True):
                clean = table[
                    (table["data_key"] == data_key) & (table["model"] == model) & (table["regime"] == regime)
                ]
                g = g.sort_values("eps_255")
                c = clean.iloc[0]
                xs = [0.0, *g["eps_255"]]
                ys = 100 * np.array([c["clean_acc"], *g["acc"]])
                lo = 100 * np.array([c["clean_lo"], *g["lo"]])
                hi = 100 * np.array([c["clean_hi"], *g["hi"]])
                style, marker = _STYLE[regime]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[ys - lo, hi - ys],
                    linestyle=style,
                    marker=marker,
                    capsize=2,
                    color=colors[model],
                    label=f"{model} ({TABLE_REGIME_LABELS[regime]})",
                )
            ax.set_title(f"{label}: {name} (L∞) robust accuracy, Wilson 95% CIs")
            ax.set_xlabel("ε (×1/255; 0 = clean)")
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    save_png(fig, path)


def _pareto(points: pd.DataFrame, col: str) -> pd.DataFrame:
    """Rows not beaten by a cheaper-or-equal model with higher-or-equal robustness (column ``col``)."""
    ordered = points.sort_values(["macs_m", col], ascending=[True, False], kind="mergesort")
    best = -math.inf
    keep = []
    for idx, acc in ordered[col].items():
        if acc > best:
            keep.append(idx)
            best = acc
    return ordered.loc[keep]


def plot_macs(table: pd.DataFrame, path: Path, headline: Headline) -> None:
    """One panel per dataset: worst-case robust accuracy at the headline radius against MACs by regime
    (Wilson 95% CIs), an arrow from each standard model to its fine-tuned rows, and the Pareto front."""
    labels = _data_labels(table)
    worst, acc = headline.point_label(headline.worst), f"{headline.worst}_acc"
    lo, hi = f"{headline.worst}_lo", f"{headline.worst}_hi"
    fig = Figure(figsize=(8, 5 * len(labels)), layout="constrained")
    axes = fig.subplots(len(labels), 1, squeeze=False)
    for (data_key, label), (ax,) in zip(labels.items(), axes, strict=True):
        rows = table[(table["data_key"] == data_key) & np.isfinite(table[acc])]
        if rows.empty:
            _note(ax, f"{label}: no {worst} results")
            continue
        std = rows[rows["regime"] == "standard"].set_index("model")
        for _, r in rows[rows["regime"] != "standard"].iterrows():
            if r["model"] in std.index:  # before -> after fine-tuning
                before = std.loc[r["model"]]
                ax.annotate(
                    "",
                    xy=(r["macs_m"], 100 * r[acc]),
                    xytext=(before["macs_m"], 100 * before[acc]),
                    arrowprops={"arrowstyle": "->", "color": "0.6", "lw": 0.8},
                )
        for regime in REGIMES:
            g = rows[rows["regime"] == regime]
            if not g.empty:
                ys = 100 * g[acc]
                ax.errorbar(
                    g["macs_m"],
                    ys,
                    yerr=[ys - 100 * g[lo], 100 * g[hi] - ys],
                    fmt=_STYLE[regime][1],
                    capsize=3,
                    label=TABLE_REGIME_LABELS[regime],
                )
        front = _pareto(rows, acc)
        ax.step(front["macs_m"], 100 * front[acc], where="post", color="k", lw=1, label="Pareto front")
        ax.scatter(front["macs_m"], 100 * front[acc], s=120, facecolors="none", edgecolors="k")
        ax.set_xscale("log")
        # Plain numbers (3, 10, 40) read better than 3×10^0 on a short log axis.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(f"{label}: {worst} robust accuracy vs MACs")
        ax.set_xlabel("MACs (M, log scale)")
        ax.set_ylabel(f"{worst} accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_png(fig, path)


def draw_all(
    figures_dir: Path,
    boards: Mapping[str, Board],
    table: pd.DataFrame,
    curves: pd.DataFrame,
    headline: Headline,
) -> dict[str, Path]:
    """Write every figure of :data:`FIGURES` to ``figures_dir/<name>.png``; returns the paths by name.

    ``table`` and ``curves`` come from :func:`robust_mnv1.report.table.build_table` and
    :func:`~robust_mnv1.report.table.build_eps_curves`.
    """
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: figures_dir / f"{name}.png" for name in FIGURES}
    plot_series(boards, "width", paths["width_series"])
    plot_series(boards, "resolution", paths["resolution_series"])
    plot_gains(boards, paths["finetune_gain"], headline)
    plot_eps(table, curves, paths["robust_acc_vs_eps"])
    plot_macs(table, paths["robustness_vs_macs"], headline)
    return paths
