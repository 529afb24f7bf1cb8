"""Verdicts along the paper's controlled series: is a lighter MobileNet easier to fool?

A *series* varies one multiplier with the other fixed: width (α at one ρ) or resolution (ρ at
one α), in one regime, ordered by MACs. Along each, for every metric of
:func:`~robust_mnv1.report.metric_stats.metrics` (at the records' headline radius):

* every adjacent pair and the lightest vs the largest model are compared on the same images
  (McNemar's exact test on per-image outcomes; for C&W the sign test on per-image log-ratios of
  distances), with a 95% bootstrap CI over images;
* a trend: the least-squares slope of the metric per doubling of MACs, its CI from resampling
  images (one resampled index set shared by all models, so the pairing is kept) and a normal p
  from the bootstrap standard error;
* Holm's correction over every test of a dataset's board;
* training randomness: where models have several seeds, a metric's pooled seed-to-seed standard
  deviation bounds what retraining alone produces, and an effect must exceed that bound too.

A test concludes when its Holm-adjusted p < 0.05, its CI excludes 0 and its effect exceeds the
training-noise bound (where one exists). docs/statistics.md gives the reasons for each choice.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from robust_mnv1.records.run_record import RunRecord
from robust_mnv1.report.metric_stats import (
    Metric,
    Spread,
    available,
    binary_stats,
    cw_stats,
    ls_slopes,
    metrics,
    n_images,
    pooled_sd,
    resampled_sums,
    seed_spreads,
)
from robust_mnv1.report.outcomes import Headline, Outcomes, collect, headline_of
from robust_mnv1.report.paired import (
    holm,
    interval,
    noise_bound,
    normal_p,
)

ALPHA = 0.05
REGIME_LABELS = {
    "standard": "standard training",
    "pgd-at": "PGD-AT",
    "fast-at": "fast-AT",
    "trades": "TRADES",
}


# Compared by identity: its arrays have no single truth value.
@dataclass(frozen=True, eq=False)
class Series:
    data_key: str
    name: str  # "width" or "resolution"
    fixed: float  # ρ of a width series, α of a resolution series
    regime: str
    models: tuple[Outcomes, ...]  # one seed per model, lightest first

    @property
    def symbol(self) -> str:
        return "α" if self.name == "width" else "ρ"

    def level(self, o: Outcomes) -> float:
        return o.alpha if self.name == "width" else o.rho

    def tag(self, o: Outcomes) -> str:
        return f"{self.symbol} = {self.level(o):g}"

    @property
    def fixed_symbol(self) -> str:
        return "ρ" if self.name == "width" else "α"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.symbol} at {self.fixed_symbol} = {self.fixed:g})"


@dataclass(frozen=True)
class Test:
    """One comparison: ``kind`` "pair" (lighter ``a`` minus larger ``b``) or "trend" (slope per
    doubling of MACs). Estimates are in pp for accuracies, log units for C&W."""

    series: Series
    metric: Metric
    kind: str
    a: str
    b: str
    n: int
    estimate: float
    lo: float
    hi: float
    p: float
    noise: float | None  # training-noise bound on |estimate|; None without seeds
    p_holm: float = math.nan

    @property
    def lighter_easier(self) -> bool | None:
        """True/False when the test concludes (lighter/larger easier to fool), None when it does not."""
        if not (self.p_holm < ALPHA and (self.lo > 0 or self.hi < 0)):
            return None
        if self.noise is not None and not abs(self.estimate) > self.noise:
            return None
        sign = self.metric.lighter_sign if self.kind == "pair" else -self.metric.lighter_sign
        return bool(np.sign(self.estimate) == sign)

    @property
    def blocked_by_noise(self) -> bool:
        return (
            self.p_holm < ALPHA
            and (self.lo > 0 or self.hi < 0)
            and self.noise is not None
            and not abs(self.estimate) > self.noise
        )


# -- series ---------------------------------------------------------------------------------------


def canonical(outcomes: Sequence[Outcomes]) -> dict[tuple[str, str, str], Outcomes]:
    """The run of each (data, model, regime) that comparisons use: its lowest seed."""
    out: dict[tuple[str, str, str], Outcomes] = {}
    for o in sorted(outcomes, key=lambda o: o.seed):
        out.setdefault((o.data_key, o.model, o.regime), o)
    return out


def find_series(outcomes: Sequence[Outcomes]) -> list[Series]:
    """Every width series (≥ 2 α at one ρ) and resolution series (≥ 2 ρ at one α), per regime."""
    groups: dict[tuple[str, str, float, str], list[Outcomes]] = defaultdict(list)
    for o in canonical(outcomes).values():
        groups[(o.data_key, "width", o.rho, o.regime)].append(o)
        groups[(o.data_key, "resolution", o.alpha, o.regime)].append(o)
    series = []
    for (data_key, name, fixed, regime), members in sorted(groups.items(), key=_series_order):
        if len(members) >= 2:
            ordered = tuple(sorted(members, key=lambda o: (o.macs, o.model)))
            series.append(Series(data_key, name, fixed, regime, ordered))
    return series


def _series_order(item):
    (data_key, name, fixed, regime), _ = item
    regimes = list(REGIME_LABELS)
    return data_key, name != "width", -fixed, regimes.index(regime) if regime in regimes else len(regimes)


# -- the board's tests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesStats:
    """The value of one metric for each model of a series that has it, with its 95% CI over images."""

    series: Series
    metric: Metric
    models: tuple[Outcomes, ...]
    values: tuple[float, ...]
    cis: tuple[tuple[float, float], ...]


def saturated(metric: Metric, models: Sequence[Outcomes]) -> bool:
    """Every model at 0% or every model at 100% of a binary metric (no image robust, or every correctly
    classified image fooled): no image, and so no resample of them, can tell the models apart, and
    their tests could never conclude."""
    if metric.kind == "cw":
        return False
    if metric.kind == "robust":
        hits = [o.robust[metric.point] for o in models]
    else:
        hits = [o.fooled(metric.point)[o.correct] for o in models]
    return all(h.all() for h in hits) or not any(h.any() for h in hits)


def series_tests(series: Series, metric: Metric, spreads: Sequence[Spread]):
    """(SeriesStats, tests) of one metric along the models of a series that have it (a study still
    running lacks some); None when fewer than two have it or they were not evaluated on the same images.
    A :func:`saturated` metric has no tests: counting them in Holm's correction would only make the
    informative tests of the board harder to pass."""
    models = tuple(o for o in series.models if available(metric, o))
    if len(models) < 2 or len({n_images(metric, o) for o in models}) != 1:
        return None
    values, draws, pairs = cw_stats(models) if metric.kind == "cw" else binary_stats(metric, models)
    stats = SeriesStats(series, metric, models, tuple(values), tuple(interval(d) for d in draws))
    if saturated(metric, models):
        return stats, []
    sd = pooled_sd(spreads, series.data_key, series.regime, metric)
    tests = []
    for (i, j), (est, d, p, size) in pairs.items():
        lo, hi = interval(d)
        noise = None if sd is None else noise_bound(math.sqrt(2.0) * sd)
        tests.append(
            Test(
                series,
                metric,
                "pair",
                series.tag(models[i]),
                series.tag(models[j]),
                size,
                est,
                lo,
                hi,
                p,
                noise,
            )
        )
    x = np.log2([o.macs for o in models])
    slope = float(ls_slopes(x, np.array(values)))
    slope_draws = ls_slopes(x, np.stack(draws, axis=1))
    lo, hi = interval(slope_draws)
    noise = None if sd is None else noise_bound(sd / math.sqrt(float(((x - x.mean()) ** 2).sum())))
    n = n_images(metric, models[0])
    tests.append(
        Test(
            series,
            metric,
            "trend",
            series.tag(models[0]),
            series.tag(models[-1]),
            n,
            slope,
            lo,
            hi,
            normal_p(slope, slope_draws),
            noise,
        )
    )
    return stats, tests


@dataclass(frozen=True)
class Gain:
    """What fine-tuning did to one model's worst-case@8/255 robust accuracy (pp), on the same images."""

    series: Series  # the fine-tuned regime's series the model belongs to
    model: str
    level: float
    gain: float
    lo: float
    hi: float


def finetune_gains(series: Sequence[Series], outcomes: Sequence[Outcomes], point: str) -> list[Gain]:
    """Fine-tuned minus standard robust accuracy of every model of every fine-tuned series, with a
    95% CI from resampling images (both regimes were attacked on the same images)."""
    runs = canonical(outcomes)
    out = []
    for s in series:
        if s.regime == "standard":
            continue
        for o in s.models:
            base = runs.get((o.data_key, o.model, "standard"))
            if (
                base is None
                or point not in o.robust
                or point not in base.robust
                or len(o.robust[point]) != len(base.robust[point])
            ):
                continue
            diff = o.robust[point].astype(float) - base.robust[point].astype(float)
            full, boot = resampled_sums({"d": diff}, len(diff))
            n = len(diff)
            lo, hi = interval(100.0 * boot["d"] / n)
            out.append(Gain(s, o.model, s.level(o), 100.0 * full["d"] / n, lo, hi))
    return out


@dataclass(frozen=True)
class Board:
    """Everything the verdict section of one dataset shows."""

    series: list[Series]
    stats: list[SeriesStats]
    tests: list[Test]
    spreads: list[Spread]
    skipped: list[str]
    gains: list[Gain]
    headline: Headline


def analyse(outcomes: Sequence[Outcomes], data_key: str, headline: Headline | None = None) -> Board:
    """Every series, test and seed spread of ``data_key``, with Holm's correction over all its tests;
    ``headline`` must be the one the outcomes were collected with (by default 8/255)."""
    headline = headline or Headline()
    mine = [o for o in outcomes if o.data_key == data_key]
    spreads = seed_spreads(mine, headline)
    series = find_series(mine)
    stats, tests, skipped = [], [], []
    for s in series:
        for metric in metrics(headline):
            result = series_tests(s, metric, spreads)
            lacking = [o.model for o in s.models if not available(metric, o)]
            if result is None or lacking:
                what = f"{REGIME_LABELS.get(s.regime, s.regime)}, {s.label}, {metric.label}"
                skipped.append(f"{what} (without {', '.join(lacking)})" if result is not None else what)
            if result is None:
                continue
            stats.append(result[0])
            tests += result[1]
    adjusted = holm([t.p for t in tests]) if tests else []
    tests = [replace(t, p_holm=float(p)) for t, p in zip(tests, adjusted, strict=True)]
    gains = finetune_gains(series, mine, headline.worst)
    return Board(series, stats, tests, spreads, skipped, gains, headline)


def analyse_all(records: Iterable[RunRecord]) -> dict[str, Board]:
    """The :class:`Board` of each dataset of the run ``records``, keyed and ordered by dataset key."""
    records = list(records)
    headline = headline_of(records)
    outcomes = collect(records, headline)
    return {key: analyse(outcomes, key, headline) for key in sorted({o.data_key for o in outcomes})}
