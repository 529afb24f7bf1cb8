"""The verdicts in words and tables: what :mod:`robust_mnv1.report.verdicts` computed, for people."""

from __future__ import annotations

import math
from collections.abc import Iterator

from robust_mnv1.report.metric_stats import N_BOOT, Metric
from robust_mnv1.report.verdicts import ALPHA, REGIME_LABELS, Board, Series, SeriesStats, Test

RULE = (
    "A comparison concludes when its Holm-adjusted p < {alpha} (over all {m} tests of this board), its "
    "95% CI over images excludes 0, and, where models of the regime have several training seeds, its "
    "effect exceeds the training-noise bound: the size that retraining alone reaches in only 5% of runs "
    "(1.96 × the pooled seed-to-seed SD; × √2 for a difference of two models, ÷ √Σ(x − x̄)² for a slope "
    "on x = log2 MACs). Pairs are tested on the same images: McNemar's exact test on per-image outcomes "
    "(for fooling rates, on the images both models classify correctly) and, for C&W, the sign test on "
    "per-image log-ratios of the minimal L2 distances. CIs resample images ({n_boot} draws) with one "
    "index set shared by all models. Comparisons use each model's lowest seed. A metric at which every "
    "model of a series is at 0% or at 100% is saturated and not tested: no image tells the models apart."
)


def _regime(series: Series) -> str:
    return REGIME_LABELS.get(series.regime, series.regime)


def _pct(log_ratio: float) -> float:
    return 100.0 * math.expm1(log_ratio)


def _fmt(x: float, digits: int = 1) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"


def _ci(lo: float, hi: float, digits: int = 1) -> str:
    return f"[{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def pair_phrase(t: Test) -> str:
    """``a`` relative to ``b`` in the metric's terms: "is fooled at a 23% [18, 28] smaller median L2"."""
    est, lo, hi = t.estimate, t.lo, t.hi
    if t.metric.kind == "cw":
        est, lo, hi = _pct(est), _pct(lo), _pct(hi)
    flip = est < 0
    mag, c0, c1 = (-est, -hi, -lo) if flip else (est, lo, hi)
    if t.metric.kind == "cw":
        # One decimal, as on the board: whole percents printed a CI of [0.4, 9.7] as [0, 10].
        word = "smaller" if flip else "larger"
        return f"{t.a} is fooled at a {_fmt(mag)}% {_ci(c0, c1)} {word} median L2 than {t.b}"
    if t.metric.kind == "fool":
        word = "fewer" if flip else "more"
        return (
            f"{t.a} is fooled on {_fmt(mag)} pp {_ci(c0, c1)} {word} of the {t.n} images both classify "
            f"correctly than {t.b} ({t.metric.label.split(' under ')[1]})"
        )
    word = "lower" if flip else "higher"
    return f"{t.a} has a {_fmt(mag)} pp {_ci(c0, c1)} {word} {t.metric.label} than {t.b}"


def slope_phrase(t: Test) -> str:
    if t.metric.kind == "cw":
        return (
            f"{_pct(t.estimate):+.1f}% median L2 per doubling of MACs [{_pct(t.lo):+.1f}, {_pct(t.hi):+.1f}]"
        )
    return f"{t.estimate:+.2f} pp per doubling of MACs [{t.lo:+.2f}, {t.hi:+.2f}]"


def _p(t: Test) -> str:
    return f"Holm p = {t.p_holm:.2g}"


def _noise_note(t: Test) -> str:
    if t.noise is None:
        return "ignores training randomness: no model of this regime has several seeds"
    bound = f"{_pct(t.noise):.0f}%" if t.metric.kind == "cw" else f"{t.noise:.2f} pp"
    return f"training-noise bound {bound}" + (" per doubling" if t.kind == "trend" else "")


def _pair_and_trend(tests: list[Test]) -> tuple[Test, Test]:
    pair = next(t for t in reversed(tests) if t.kind == "pair")  # the lightest vs the largest
    return pair, next(t for t in tests if t.kind == "trend")


def outcome(tests: list[Test]) -> str:
    """The verdict of a series × metric in one word: ``lighter`` or ``larger`` (that one is easier to
    fool: the extreme pair's conclusion, else the trend's), ``noise`` (a difference the images detect
    but retraining alone could produce) or ``inconclusive``."""
    pair, trend = _pair_and_trend(tests)
    decided = pair.lighter_easier if pair.lighter_easier is not None else trend.lighter_easier
    if decided is not None:
        return "lighter" if decided else "larger"
    return "noise" if pair.blocked_by_noise or trend.blocked_by_noise else "inconclusive"


def verdict_line(series: Series, metric: Metric, tests: list[Test]) -> str:
    """One plain-language sentence for a series × metric: the extreme pair and the trend."""
    pair, trend = _pair_and_trend(tests)
    head = f"{_regime(series)}, {series.label}, {metric.label}: "
    decided = outcome(tests)
    if decided in ("lighter", "larger"):
        who = f"{decided} is easier to fool"
        if pair.lighter_easier is not None:
            body = f"{pair_phrase(pair)}; {who} ({_p(pair)}); trend {slope_phrase(trend)} ({_p(trend)})"
        else:
            body = (
                f"{who} along the series: trend {slope_phrase(trend)} ({_p(trend)}); "
                f"{pair_phrase(pair)} ({_p(pair)})"
            )
    else:
        # The limit is read off the CI as printed (percent for C&W, not its log scale), and the trend's
        # Holm p is given: an unadjusted CI can exclude 0 where the adjusted test does not conclude.
        if metric.kind == "cw":
            lo, hi = _pct(trend.lo), _pct(trend.hi)
            ci, reach = _ci(lo, hi), max(abs(lo), abs(hi))
            limit = f"{reach:.1f}% per doubling"
        else:
            ci, reach = _ci(trend.lo, trend.hi, 2), max(abs(trend.lo), abs(trend.hi))
            limit = f"{reach:.2f} pp per doubling"
        # The same words as the table of every test (_verdict_cell), so a reader meets one term: a
        # difference the images detect but retraining alone could produce says which bar it missed.
        what = "inconclusive, within training noise" if decided == "noise" else "inconclusive"
        body = (
            f"{what}: {pair_phrase(pair)} ({_p(pair)}); the trend CI {ci} "
            f"({_p(trend)}) rules out trends larger than {limit}"
            if math.isfinite(reach)
            else f"not estimable: {pair_phrase(pair)} ({_p(pair)})"
        )
    return f"{head}{body}; {_noise_note(trend)}."


def saturated_line(stats: SeriesStats) -> str:
    """The line of a metric that no image can separate along the series (no tests were run)."""
    m, at_top = stats.metric, stats.values[0] > 50.0
    if m.kind == "robust":
        what = "every model keeps every image robust" if at_top else "no model keeps a single image robust"
    else:
        what = (
            "every model is fooled on every image it classifies correctly"
            if at_top
            else "no model is fooled on any image it classifies correctly"
        )
    n = len(stats.models[0].robust[m.point])
    return (
        f"{_regime(stats.series)}, {stats.series.label}, {m.label}: saturated, not tested: {what} "
        f"(of {n} test images), so this metric cannot rank them."
    )


def metric_tests(board: Board, series: Series) -> Iterator[tuple[SeriesStats, list[Test]]]:
    """Each metric of ``series`` with its tests, none for a saturated metric."""
    for stats in (st for st in board.stats if st.series == series):
        yield stats, [t for t in board.tests if t.series == series and t.metric == stats.metric]


def verdict_lines(board: Board) -> list[str]:
    return [
        verdict_line(s, stats.metric, tests) if tests else saturated_line(stats)
        for s in board.series
        for stats, tests in metric_tests(board, s)
    ]


def _verdict_cell(t: Test) -> str:
    if t.lighter_easier is None:
        return "within training noise" if t.blocked_by_noise else "inconclusive"
    return "lighter easier to fool" if t.lighter_easier else "larger easier to fool"


def _estimate_cell(t: Test) -> str:
    if t.kind == "trend":
        return slope_phrase(t).replace(" per doubling of MACs", "")
    if t.metric.kind == "cw":
        return f"{_pct(t.estimate):+.1f}% {_ci(_pct(t.lo), _pct(t.hi))}"
    return f"{t.estimate:+.2f} pp {_ci(t.lo, t.hi, 2)}"


def test_table(board: Board) -> list[str]:
    lines = [
        "| series | regime | metric | comparison | images | effect [95% CI] | p | Holm p | noise bound "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in board.tests:
        what = f"{t.a} vs {t.b}" if t.kind == "pair" else f"trend per doubling ({t.a} … {t.b})"
        noise = (
            "—"
            if t.noise is None
            else (f"{_pct(t.noise):.1f}%" if t.metric.kind == "cw" else f"{t.noise:.2f}")
        )
        lines.append(
            f"| {t.series.label} | {_regime(t.series)} | {t.metric.label} | {what} | {t.n} | "
            f"{_estimate_cell(t)} | {t.p:.2g} | {t.p_holm:.2g} | {noise} | {_verdict_cell(t)} |"
        )
    return lines


def _value(metric: Metric, v: float, lo: float, hi: float) -> str:
    if metric.kind == "cw":
        e = [math.exp(x) for x in (v, lo, hi)]  # exp(inf) = inf: most images never broken
        return f"{e[0]:.3f} [{e[1]:.3f}, {e[2]:.3f}]"
    return f"{_fmt(v)} {_ci(lo, hi)}"


def series_table(board: Board) -> list[str]:
    """Each model's value of each metric along each series, with its CI over images."""
    lines = ["| series | regime | model | " + " | ".join(m.label for m in _metrics(board)) + " |"]
    lines.append("|---|---|---|" + "---|" * len(_metrics(board)))
    for s in board.series:
        mine = {st.metric.key: st for st in board.stats if st.series == s}
        for o in s.models:
            cells = []
            for m in _metrics(board):
                st = mine.get(m.key)
                i = next((k for k, other in enumerate(st.models) if other is o), None) if st else None
                cells.append("—" if i is None else _value(st.metric, st.values[i], *st.cis[i]))
            lines.append(f"| {s.label} | {_regime(s)} | {o.model} | " + " | ".join(cells) + " |")
    return lines


def _metrics(board: Board) -> list[Metric]:
    seen: dict[str, Metric] = {}
    for st in board.stats:
        seen.setdefault(st.metric.key, st.metric)
    return list(seen.values())


def spread_table(board: Board) -> list[str]:
    if not board.spreads:
        return []
    lines = ["| model | regime | metric | value per seed | seed-to-seed SD |", "|---|---|---|---|---|"]
    for s in board.spreads:
        if s.metric.kind == "cw":
            vals = ", ".join(f"s{seed}: {math.exp(v):.3f}" for seed, v in s.values)
            sd = f"{100 * s.sd:.1f}% (log scale)"
        else:
            vals = ", ".join(f"s{seed}: {v:.1f}" for seed, v in s.values)
            sd = f"{s.sd:.2f} pp"
        lines.append(f"| {s.model} | {_regime(s)} | {s.metric.label} | {vals} | {sd} |")
    return lines


def section(board: Board) -> list[str]:
    """The markdown of the verdict section of one dataset."""
    if not board.series:
        return ["No series: a verdict needs at least two models that differ in one multiplier only."]
    out = [RULE.format(alpha=ALPHA, m=len(board.tests), n_boot=N_BOOT), ""] if board.tests else []
    out += [f"- {line}" for line in verdict_lines(board)]
    if board.skipped:
        out += [
            "",
            "Not compared, or compared without some models (a model lacks the metric's per-image results, "
            "or the models saw different images): " + "; ".join(board.skipped) + ".",
        ]
    out += ["", "#### Each model along its series", "", *series_table(board)]
    out += ["", "#### Every test", "", *test_table(board)]
    spread = spread_table(board)
    if spread:
        out += ["", "#### Seed-to-seed spread", "", *spread]
    return out
