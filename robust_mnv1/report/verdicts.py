"""Verdicts along the paper's controlled series: is a lighter MobileNet easier to fool?

A *series* varies one multiplier with the other fixed: width (α at one ρ) or resolution (ρ at
one α), in one regime, ordered by MACs. Along each, for every metric of :data:`METRICS`:

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
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from robust_mnv1.report.outcomes import Outcomes, collect
from robust_mnv1.report.paired import (
    holm,
    image_draws,
    interval,
    log_ratio,
    mcnemar_exact,
    noise_bound,
    normal_p,
    sign_test,
)

N_BOOT = 2000
BOOT_SEED = 0
ALPHA = 0.05
REGIME_LABELS = {
    "standard": "standard training",
    "pgd-at": "PGD-AT",
    "fast-at": "fast-AT",
    "trades": "TRADES",
}


@dataclass(frozen=True)
class Metric:
    """``kind``: ``robust`` (robust accuracy, pp), ``fool`` (share of clean-correct images the attack
    flips, pp) or ``cw`` (log of the C&W median L2 over clean-correct images)."""

    key: str
    label: str
    kind: str
    point: str | None = None

    @property
    def lighter_sign(self) -> int:
        """Sign of (lighter minus larger) that means the lighter model is easier to fool."""
        return 1 if self.kind == "fool" else -1


METRICS = (
    Metric("fool_pgd2", "fooling rate under PGD@2/255", "fool", "pgd2"),
    Metric("fool_worst8", "fooling rate under worst-case@8/255", "fool", "worst8"),
    Metric("robust_worst8", "robust accuracy under worst-case@8/255", "robust", "worst8"),
    Metric("cw", "C&W median L2", "cw"),
)


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
    def label(self) -> str:
        other = "ρ" if self.name == "width" else "α"
        return f"{self.name} ({self.symbol} at {other} = {self.fixed:g})"


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


# -- per-image statistics -------------------------------------------------------------------------


def _available(metric: Metric, o: Outcomes) -> bool:
    if metric.kind == "cw":
        return o.cw_l2 is not None
    return metric.point in o.robust and (metric.kind == "robust" or o.correct is not None)


def _size(metric: Metric, o: Outcomes) -> int:
    return len(o.cw_l2) if metric.kind == "cw" else len(o.robust[metric.point])


def _binary_columns(metric: Metric, models: Sequence[Outcomes]) -> dict[str, np.ndarray]:
    """The per-image boolean vectors whose (resampled) sums make the metric's values and pair effects."""
    cols = {f"robust{i}": o.robust[metric.point] for i, o in enumerate(models)}
    if metric.kind == "robust":
        return cols
    for i, o in enumerate(models):
        cols[f"correct{i}"] = o.correct
        cols[f"fooled{i}"] = o.fooled(metric.point)
    for i, j in _pairs(len(models)):
        common = models[i].correct & models[j].correct
        cols[f"common{i}_{j}"] = common
        cols[f"fa{i}_{j}"] = models[i].fooled(metric.point) & common
        cols[f"fb{i}_{j}"] = models[j].fooled(metric.point) & common
    return cols


def _pairs(m: int) -> list[tuple[int, int]]:
    """Adjacent pairs, then the lightest vs the largest (when that is not already adjacent)."""
    pairs = [(i, i + 1) for i in range(m - 1)]
    return [*pairs, (0, m - 1)] if m > 2 else pairs


def _resampled_sums(cols: dict[str, np.ndarray], n: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Full-sample and bootstrap sums of each column, all columns on the same resamples of images."""
    names = list(cols)
    x = np.stack([cols[k] for k in names], axis=1).astype(np.float32)
    full = dict(zip(names, x.sum(0).astype(float), strict=True))
    parts = []
    for idx in image_draws(n, N_BOOT, BOOT_SEED):
        k = len(idx)
        counts = np.bincount((idx + n * np.arange(k, dtype=np.int64)[:, None]).ravel(), minlength=k * n)
        parts.append(counts.reshape(k, n).astype(np.float32) @ x)
    boot = np.concatenate(parts).astype(float)
    return full, {name: boot[:, i] for i, name in enumerate(names)}


def _ratio(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return 100.0 * np.asarray(num) / np.asarray(den)


def _binary_stats(metric: Metric, models: Sequence[Outcomes]):
    """(values, value draws, pair estimates, pair draws, pair p-values, pair sizes) of a binary metric."""
    n = len(models[0].robust[metric.point])
    full, boot = _resampled_sums(_binary_columns(metric, models), n)
    values, draws = [], []
    for i, _ in enumerate(models):
        if metric.kind == "robust":
            values.append(100.0 * full[f"robust{i}"] / n)
            draws.append(100.0 * boot[f"robust{i}"] / n)
        else:
            values.append(float(_ratio(full[f"fooled{i}"], full[f"correct{i}"])))
            draws.append(_ratio(boot[f"fooled{i}"], boot[f"correct{i}"]))
    pairs = {}
    for i, j in _pairs(len(models)):
        a, b = models[i], models[j]
        if metric.kind == "robust":
            est, d = values[i] - values[j], draws[i] - draws[j]
            p = mcnemar_exact(a.robust[metric.point], b.robust[metric.point])
            size = n
        else:
            c = f"common{i}_{j}"
            est = float(_ratio(full[f"fa{i}_{j}"] - full[f"fb{i}_{j}"], full[c]))
            d = _ratio(boot[f"fa{i}_{j}"] - boot[f"fb{i}_{j}"], boot[c])
            common = a.correct & b.correct
            p = mcnemar_exact(a.fooled(metric.point)[common], b.fooled(metric.point)[common])
            size = int(full[c])
        pairs[(i, j)] = (est, d, p, size)
    return values, draws, pairs


def _nanmedian(x: np.ndarray, axis: int = -1) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-nan resample is nan, as it should be
        return np.nanmedian(x, axis=axis)


def _cw_stats(models: Sequence[Outcomes]):
    """The same for the C&W median L2, on a log scale (its ratios are what compare across models)."""
    n = len(models[0].cw_l2)
    l2 = np.stack([o.cw_l2 for o in models])  # (m, n)
    diffs = {(i, j): log_ratio(l2[i], l2[j]) for i, j in _pairs(len(models))}
    with np.errstate(divide="ignore"):
        values = [float(np.log(_nanmedian(row))) for row in l2]
    value_parts, diff_parts = [], {k: [] for k in diffs}
    for idx in image_draws(n, N_BOOT, BOOT_SEED):
        with np.errstate(divide="ignore"):
            value_parts.append(np.log(_nanmedian(l2[:, idx], axis=-1)).T)  # (k, m)
        for k, d in diffs.items():
            diff_parts[k].append(_nanmedian(d[idx]))
    value_draws = np.concatenate(value_parts)
    draws = [value_draws[:, i] for i in range(len(models))]
    pairs = {}
    for k, d in diffs.items():
        valid = ~np.isnan(d)
        pairs[k] = (
            float(_nanmedian(d)),
            np.concatenate(diff_parts[k]),
            sign_test(d[valid]),
            int(valid.sum()),
        )
    return values, draws, pairs


def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of ``y`` (…, m) on ``x`` (m,)."""
    xc = x - x.mean()
    with np.errstate(invalid="ignore"):
        return ((y - y.mean(-1, keepdims=True)) * xc).sum(-1) / (xc**2).sum()


# -- training noise -------------------------------------------------------------------------------


def value_on_all_images(metric: Metric, o: Outcomes) -> float:
    if metric.kind == "robust":
        return 100.0 * float(o.robust[metric.point].mean())
    if metric.kind == "fool":
        return float(_ratio(o.fooled(metric.point).sum(), o.correct.sum()))
    with np.errstate(divide="ignore"):
        return float(np.log(_nanmedian(o.cw_l2)))


@dataclass(frozen=True)
class Spread:
    """Seed-to-seed spread of one metric of one model: its value per seed and their sample SD."""

    data_key: str
    model: str
    regime: str
    metric: Metric
    values: tuple[tuple[int, float], ...]
    sd: float


def seed_spreads(outcomes: Sequence[Outcomes]) -> list[Spread]:
    runs: dict[tuple[str, str, str], list[Outcomes]] = defaultdict(list)
    for o in outcomes:
        runs[(o.data_key, o.model, o.regime)].append(o)
    out = []
    for (data_key, model, regime), group in sorted(runs.items()):
        if len(group) < 2:
            continue
        for metric in METRICS:
            if not all(_available(metric, o) for o in group):
                continue
            vals = tuple(
                (o.seed, value_on_all_images(metric, o)) for o in sorted(group, key=lambda o: o.seed)
            )
            v = np.array([x for _, x in vals])
            sd = float(np.std(v, ddof=1)) if np.isfinite(v).all() else math.nan
            out.append(Spread(data_key, model, regime, metric, vals, sd))
    return out


def pooled_sd(spreads: Sequence[Spread], data_key: str, regime: str, metric: Metric) -> float | None:
    """Pooled seed-to-seed SD of ``metric`` over the seeded models of (data, regime); None without any."""
    mine = [s for s in spreads if (s.data_key, s.regime, s.metric.key) == (data_key, regime, metric.key)]
    mine = [s for s in mine if math.isfinite(s.sd)]
    if not mine:
        return None
    dof = sum(len(s.values) - 1 for s in mine)
    return math.sqrt(sum((len(s.values) - 1) * s.sd**2 for s in mine) / dof)


# -- the board's tests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesStats:
    """The value of one metric for each model of a series that has it, with its 95% CI over images."""

    series: Series
    metric: Metric
    models: tuple[Outcomes, ...]
    values: tuple[float, ...]
    cis: tuple[tuple[float, float], ...]


def series_tests(series: Series, metric: Metric, spreads: Sequence[Spread]):
    """(SeriesStats, tests) of one metric along the models of a series that have it (a study still
    running lacks some); None when fewer than two have it or they were not evaluated on the same images."""
    models = tuple(o for o in series.models if _available(metric, o))
    if len(models) < 2 or len({_size(metric, o) for o in models}) != 1:
        return None
    values, draws, pairs = _cw_stats(models) if metric.kind == "cw" else _binary_stats(metric, models)
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
    slope = float(_slope(x, np.array(values)))
    slope_draws = _slope(x, np.stack(draws, axis=1))
    lo, hi = interval(slope_draws)
    noise = None if sd is None else noise_bound(sd / math.sqrt(float(((x - x.mean()) ** 2).sum())))
    n = _size(metric, models[0])
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
    stats = SeriesStats(series, metric, models, tuple(values), tuple(interval(d) for d in draws))
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


def finetune_gains(
    series: Sequence[Series], outcomes: Sequence[Outcomes], point: str = "worst8"
) -> list[Gain]:
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
            full, boot = _resampled_sums({"d": diff}, len(diff))
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


def analyse(outcomes: Sequence[Outcomes], data_key: str) -> Board:
    """Every series, test and seed spread of ``data_key``, with Holm's correction over all its tests."""
    mine = [o for o in outcomes if o.data_key == data_key]
    spreads = seed_spreads(mine)
    series = find_series(mine)
    stats, tests, skipped = [], [], []
    for s in series:
        for metric in METRICS:
            result = series_tests(s, metric, spreads)
            lacking = [o.model for o in s.models if not _available(metric, o)]
            if result is None or lacking:
                what = f"{REGIME_LABELS.get(s.regime, s.regime)}, {s.label}, {metric.label}"
                skipped.append(f"{what} (without {', '.join(lacking)})" if result is not None else what)
            if result is None:
                continue
            stats.append(result[0])
            tests += result[1]
    adjusted = holm([t.p for t in tests]) if tests else []
    tests = [replace(t, p_holm=float(p)) for t, p in zip(tests, adjusted, strict=True)]
    return Board(series, stats, tests, spreads, skipped, finetune_gains(series, mine))


def analyse_all(records: Iterable[Mapping[str, Any]]) -> dict[str, Board]:
    """The :class:`Board` of each dataset of the run ``records``, keyed and ordered by dataset key."""
    outcomes = collect(records)
    return {key: analyse(outcomes, key) for key in sorted({o.data_key for o in outcomes})}
