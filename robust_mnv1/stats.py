"""Confidence intervals and rank correlation for the leaderboard (numpy/scipy only, no torch).

Every resampling function takes an explicit ``seed`` and draws from its own
``numpy.random.Generator``, so the same inputs always give the same interval: the generated
leaderboard must be byte-identical when it is regenerated from the same records.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

from robust_mnv1.errors import UserError

Z95 = 1.959963984540054
"""Two-sided 95% standard-normal quantile."""

# A bootstrap interval needs most resamples to be usable; below this share of valid (non-constant)
# resamples the interval would describe a biased subset, so it is reported as nan instead.
_MIN_VALID_FRACTION = 0.5


def wilson_ci(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n``.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at ``k = 0`` or
    ``k = n``. With ``n = 0`` there is no evidence at all, so the whole range ``(0.0, 1.0)`` is
    returned rather than nan: callers can print it without special cases.
    """
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise UserError(f"wilson_ci needs integer counts, got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise UserError(f"wilson_ci needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    # At k = 0 (k = n) the lower (upper) bound is exactly 0 (1); float round-off would miss it.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise UserError(f"confidence level must be in (0, 1), got {level!r}")


def _check_count(value: int, name: str = "n_boot") -> None:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")


def percentile_interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` share of bootstrap statistics, as actual values of them."""
    tail = (1.0 - level) / 2.0
    # "inverted_cdf" picks actual bootstrap values instead of interpolating between them, so an
    # infinite statistic (e.g. a C&W median over mostly failed attacks) yields inf, not inf - inf = nan.
    lo, hi = np.quantile(stats, [tail, 1.0 - tail], method="inverted_cdf")
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.median,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values``.

    ``values`` is resampled with replacement ``n_boot`` times; the interval is the central
    ``level`` share of the resampled statistics. Deterministic for a given ``seed``. An empty
    sample gives ``(nan, nan)``.
    """
    _check_level(level)
    _check_count(n_boot)
    data = np.asarray(values, dtype=float).ravel()
    if data.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.size, size=(n_boot, data.size))
    stats = np.array([statistic(data[row]) for row in idx], dtype=float)
    return percentile_interval(stats, level)


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair; nan where a row of x or y is constant."""
    rx = rankdata(x, axis=1)
    ry = rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    sxx = np.einsum("ij,ij->i", rx, rx)
    syy = np.einsum("ij,ij->i", ry, ry)
    sxy = np.einsum("ij,ij->i", rx, ry)
    valid = (sxx > 0) & (syy > 0)
    rho = np.full(x.shape[0], np.nan)
    rho[valid] = sxy[valid] / np.sqrt(sxx[valid] * syy[valid])
    # Pearson on ranks can overshoot +-1 by an ulp; a correlation outside [-1, 1] would print oddly.
    return np.clip(rho, -1.0, 1.0)


def _paired(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, caller: str):
    xs = np.asarray(x, dtype=float).ravel()
    ys = np.asarray(y, dtype=float).ravel()
    if xs.shape != ys.shape:
        raise UserError(f"{caller} needs paired samples, got {xs.size} x values and {ys.size} y values")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise UserError(f"{caller} needs finite values; drop missing (nan/inf) pairs first")
    return xs, ys


def spearman_with_ci(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    y_draws: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Spearman rank correlation of paired samples with a percentile bootstrap interval.

    Ties get average ranks. Pairs ``(x_i, y_i)`` are resampled together; resamples in which
    x or y is constant have no defined correlation and are skipped. ``y_draws``, of shape
    ``(n_boot, len(y))``, adds the measurement noise of each y (a second bootstrap level):
    resample ``b`` pairs ``x_i`` with ``y_draws[b, i]`` instead of ``y_i``. Returns
    ``(rho, lo, hi)``: ``rho`` is nan when x or y is constant or there are fewer than 2 pairs,
    and the interval is nan when fewer than half of the resamples were usable.
    """
    _check_level(level)
    _check_count(n_boot)
    xs, ys = _paired(x, y, "spearman_with_ci")
    if y_draws is not None:
        y_draws = np.asarray(y_draws, dtype=float)
        if y_draws.shape != (n_boot, ys.size):
            raise UserError(f"y_draws must have shape ({n_boot}, {ys.size}), got {y_draws.shape}")
        if not np.all(np.isfinite(y_draws)):
            raise UserError("y_draws holds non-finite values; map them to finite ranks first")
    if xs.size < 2:
        return math.nan, math.nan, math.nan
    rho = float(_rowwise_spearman(xs[None, :], ys[None, :])[0])
    if math.isnan(rho):
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, xs.size, size=(n_boot, xs.size))
    yb = ys[idx] if y_draws is None else np.take_along_axis(y_draws, idx, axis=1)
    boot = _rowwise_spearman(xs[idx], yb)
    boot = boot[~np.isnan(boot)]
    if boot.size < _MIN_VALID_FRACTION * n_boot:
        return rho, math.nan, math.nan
    lo, hi = percentile_interval(boot, level)
    return rho, lo, hi


# Up to this many pairs the permutation test enumerates every pairing (8! = 40320).
EXACT_PERMUTATION_MAX_N = 8


def spearman_permutation_p(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    n_perm: int = 20000,
    seed: int = 0,
) -> float:
    """Two-sided permutation p-value of Spearman's rho against no association.

    The share of pairings of y with x whose ``|rho|`` reaches the observed one. With at most 8
    pairs every pairing is enumerated (exact); beyond that ``n_perm`` random ones are drawn and
    the observed pairing counts among them, ``(1 + hits) / (1 + n_perm)``. With ties in both x
    and y this can be below scipy's ``permutation_test``, which doubles the smaller one-sided p.
    A bootstrap interval over a handful of points cannot say this: 4 perfectly ordered points give
    the interval [1, 1], yet a random order of 4 is perfect in 1 case of 12. nan when rho is
    undefined.
    """
    _check_count(n_perm, "n_perm")
    xs, ys = _paired(x, y, "spearman_permutation_p")
    if xs.size < 2:
        return math.nan
    rho = _rowwise_spearman(xs[None, :], ys[None, :])[0]
    if math.isnan(rho):
        return math.nan
    if xs.size <= EXACT_PERMUTATION_MAX_N:
        orders = np.array(list(itertools.permutations(range(xs.size))))
        extra = 0
    else:
        rng = np.random.default_rng(seed)
        orders = rng.permuted(np.tile(np.arange(xs.size), (n_perm, 1)), axis=1)
        extra = 1
    perm = _rowwise_spearman(np.broadcast_to(xs, orders.shape), ys[orders])
    # Rank correlations take few distinct values; the tolerance keeps ties with the observed one.
    hits = int(np.count_nonzero(np.abs(perm) >= abs(rho) - 1e-9))
    return (hits + extra) / (len(orders) + extra)
