"""The answer in a few lines: each series' verdicts counted by outcome, and what fine-tuning did.

The verdict lines are precise but many (series × regime × metric); a reader first wants to know which
way each series points and whether fine-tuning changes that. Every word here is derived from the same
tests and table as the lines below it, so the two cannot disagree.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from robust_mnv1.records.schema import REGIMES
from robust_mnv1.report.outcomes import Headline
from robust_mnv1.report.table import against_standard
from robust_mnv1.report.verdict_text import metric_tests, outcome
from robust_mnv1.report.verdicts import REGIME_LABELS, Board, Series

# How each outcome reads, in the order a reader wants them: conclusions first.
_PHRASES = {
    "lighter": "lighter models are easier to fool on {}",
    "larger": "larger models are easier to fool on {}",
    "noise": "differences within training noise on {}",
    "inconclusive": "no conclusion on {}",
    "saturated": "{} cannot tell the models apart (every model at 0% or 100%)",
}


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _regime_clause(board: Board, series: Series) -> str:
    by_outcome: dict[str, list[str]] = defaultdict(list)
    for stats, tests in metric_tests(board, series):
        by_outcome[outcome(tests) if tests else "saturated"].append(stats.metric.label)
    parts = [_PHRASES[k].format(_join(by_outcome[k])) for k in _PHRASES if by_outcome[k]]
    regime = REGIME_LABELS.get(series.regime, series.regime)
    return f"After {regime}, " + ("; ".join(parts) if parts else "nothing tested")


def _series_lines(board: Board) -> list[str]:
    grouped: dict[tuple[str, float], list[Series]] = defaultdict(list)
    for s in board.series:
        grouped[(s.name, s.fixed)].append(s)
    lines = []
    for members in grouped.values():
        first = members[0]
        levels = [first.level(o) for o in first.models]
        span = f"{first.symbol} {min(levels):g} to {max(levels):g} at {first.fixed_symbol} = {first.fixed:g}"
        what = f"**{first.name.capitalize()}** ({span})"
        lines.append(f"{what}. " + ". ".join(_regime_clause(board, s) for s in members) + ".")
    return lines


def _range(lo: float, hi: float, sep: str) -> str:
    """``lo`` and ``hi`` in percent to one decimal, once when they print alike."""
    a, b = f"{100 * lo:.1f}", f"{100 * hi:.1f}"
    return a if a == b else f"{a}{sep}{b}"


def _span(values: pd.Series) -> str:
    return _range(values.min(), values.max(), "–") + "%"


def _change_span(values: pd.Series) -> str:
    return _range(values.abs().min(), values.abs().max(), " to ")


def _models(n: int) -> str:
    return f"{n} model" + ("" if n == 1 else "s")


def _finetune_lines(rows: pd.DataFrame, headline: Headline) -> list[str]:
    worst, label = f"{headline.worst}_acc", headline.point_label(headline.worst)
    lines = []
    for regime in REGIMES[1:]:
        pairs = against_standard(rows, regime)
        if pairs.empty:
            continue
        clean = pairs["clean_acc"] - pairs["clean_acc_std"]
        text = (
            f"{REGIME_LABELS[regime]} fine-tuning, {_models(len(pairs))}: clean accuracy "
            f"{_span(pairs['clean_acc_std'])} → {_span(pairs['clean_acc'])} "
            f"({'down' if (clean < 0).all() else 'changed'} by {_change_span(clean)} points)"
        )
        both = pairs.dropna(subset=[worst, f"{worst}_std"])
        if not both.empty:
            gain = both[worst] - both[f"{worst}_std"]
            of = "" if len(both) == len(pairs) else f"; {_models(len(both))}, the others lack a worst case"
            text += (
                f"; {label} robust accuracy {_span(both[f'{worst}_std'])} → {_span(both[worst])} "
                f"({'up' if (gain > 0).all() else 'changed'} by {_change_span(gain)} points{of})"
            )
        lines.append(text + ".")
    return lines


def summary_lines(board: Board, rows: pd.DataFrame) -> list[str]:
    """The summary of one dataset, a line per series and per fine-tuning regime: ``board`` its verdicts,
    ``rows`` its rows of :func:`robust_mnv1.report.table.build_table`."""
    lines = [*_series_lines(board), *_finetune_lines(rows, board.headline)]
    if lines and board.skipped:
        lines.append("Some comparisons leave out models that lack the metric (the board lists them).")
    return lines
