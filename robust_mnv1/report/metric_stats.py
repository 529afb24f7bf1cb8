"""The metrics the verdicts test, and their statistics over a set of models: per-image columns, bootstrap
redraws over images shared by all models (so the pairing is kept), least-squares slopes, and the
seed-to-seed spread that bounds what retraining alone produces."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robust_mnv1.report.outcomes import SMALL_EPS_255, Headline, Outcomes
from robust_mnv1.report.paired import (
    image_draws,
    log_ratio,
    mcnemar_exact,
    sign_test,
)

N_BOOT = 2000


BOOT_SEED = 0


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


def metrics(headline: Headline) -> tuple[Metric, ...]:
    """The metrics the verdicts test: at 8/255 ``fool_pgd2``, ``fool_worst8``, ``robust_worst8``, ``cw``."""
    small = f"pgd{SMALL_EPS_255:g}"
    worst = headline.worst
    return (
        Metric(f"fool_{small}", f"fooling rate under {headline.point_label(small)}", "fool", small),
        Metric(f"fool_{worst}", f"fooling rate under {headline.point_label(worst)}", "fool", worst),
        Metric(f"robust_{worst}", f"robust accuracy under {headline.point_label(worst)}", "robust", worst),
        Metric("cw", "C&W median L2", "cw"),
    )


def available(metric: Metric, o: Outcomes) -> bool:
    if metric.kind == "cw":
        return o.cw_l2 is not None
    return metric.point in o.robust and (metric.kind == "robust" or o.correct is not None)


def n_images(metric: Metric, o: Outcomes) -> int:
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


def resampled_sums(cols: dict[str, np.ndarray], n: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
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


def binary_stats(metric: Metric, models: Sequence[Outcomes]):
    """(values, value draws, pair estimates, pair draws, pair p-values, pair sizes) of a binary metric."""
    n = len(models[0].robust[metric.point])
    full, boot = resampled_sums(_binary_columns(metric, models), n)
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


def cw_stats(models: Sequence[Outcomes]):
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


def ls_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of ``y`` (…, m) on ``x`` (m,)."""
    xc = x - x.mean()
    with np.errstate(invalid="ignore"):
        return ((y - y.mean(-1, keepdims=True)) * xc).sum(-1) / (xc**2).sum()


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


def seed_spreads(outcomes: Sequence[Outcomes], headline: Headline) -> list[Spread]:
    runs: dict[tuple[str, str, str], list[Outcomes]] = defaultdict(list)
    for o in outcomes:
        runs[(o.data_key, o.model, o.regime)].append(o)
    out = []
    for (data_key, model, regime), group in sorted(runs.items()):
        if len(group) < 2:
            continue
        for metric in metrics(headline):
            if not all(available(metric, o) for o in group):
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
