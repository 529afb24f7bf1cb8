"""Confidence intervals for the records and the leaderboard (numpy/scipy only, no torch).

Every resampling function takes an explicit ``seed`` and draws from its own
``numpy.random.Generator``, so the same inputs always give the same interval: the generated
leaderboard must be byte-identical when it is regenerated from the same records.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from robust_mnv1.infra.errors import UserError

Z95 = 1.959963984540054
"""Two-sided 95% standard-normal quantile."""


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
