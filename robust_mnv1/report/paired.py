"""Paired tests on per-image outcomes, the bootstrap over images that keeps the pairing, and Holm.

Two models attacked on the same images are compared image by image: only the images on which
they disagree carry information about which is easier to fool, and that is far more powerful
than comparing two accuracies as if they came from different images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy.stats import binom, norm

from robust_mnv1.records.intervals import Z95


def _two_sided_binomial(k: int, n: int) -> float:
    """Exact two-sided p of ``k`` successes out of ``n`` fair coin flips (doubling the smaller tail)."""
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(k, n - k), n, 0.5)))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Exact McNemar p for paired booleans: the binomial test on the discordant pairs."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return _two_sided_binomial(only_a, only_a + only_b)


def sign_test(d: np.ndarray) -> float:
    """Exact sign test that the median of paired differences ``d`` is 0; zeros and nans are ties, dropped."""
    d = np.asarray(d, dtype=float)
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    return _two_sided_binomial(pos, pos + neg)


def log_ratio(l2_a: np.ndarray, l2_b: np.ndarray) -> np.ndarray:
    """Per-image ``log(l2_a / l2_b)``; an image neither attack broke (both inf) is a tie (0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.log(l2_a) - np.log(l2_b)
    return np.where(np.isinf(l2_a) & np.isinf(l2_b), 0.0, d)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control, any dependence)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="mergesort")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def image_draws(n: int, n_boot: int, seed: int, chunk: int = 250) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``n`` image indices, ``chunk`` at a time (arrays of shape (k, n)).

    Every model of a comparison is evaluated on the same draws, which keeps the pairing: a
    resample that happens to hold hard images holds them for every model at once.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_boot - start), n), dtype=np.int32)


def bootstrap(stat: Callable[[np.ndarray], np.ndarray], n: int, n_boot: int, seed: int) -> np.ndarray:
    """``stat`` over ``n_boot`` shared resamples of ``n`` images; ``stat`` maps (k, n) indices to (k, ...)."""
    return np.concatenate([stat(idx) for idx in image_draws(n, n_boot, seed)])


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite draws (nan when fewer than half are finite)."""
    finite = draws[np.isfinite(draws)]
    if finite.size < 0.5 * draws.size:
        return float("nan"), float("nan")
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def normal_p(estimate: float, draws: np.ndarray) -> float:
    """Two-sided p of ``estimate`` against 0 with the bootstrap standard error (normal approximation)."""
    finite = draws[np.isfinite(draws)]
    se = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
    if not np.isfinite(estimate) or not se > 0:
        return 1.0 if estimate == 0 or not np.isfinite(estimate) else 0.0
    return float(2 * norm.sf(abs(estimate) / se))


def noise_bound(sd: float) -> float:
    """The size a statistic whose training-noise standard deviation is ``sd`` reaches by chance in
    only 5% of retrainings (two-sided): an effect must exceed it to be more than training noise."""
    return Z95 * sd
