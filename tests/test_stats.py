"""Tests for robust_mnv1.stats: Wilson intervals, bootstrap intervals, Spearman with CI."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import permutation_test, spearmanr

from robust_mnv1 import stats
from robust_mnv1.errors import UserError
from robust_mnv1.stats import bootstrap_ci, spearman_permutation_p, spearman_with_ci, wilson_ci


def test_wilson_known_values():
    assert wilson_ci(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_ci(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_ci(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_ci(870, 1000) == pytest.approx((0.8477, 0.8894), abs=1e-4)


@pytest.mark.parametrize(("k", "n"), [(1, 7), (43, 100), (999, 1000)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    # Wilson bounds are the p with (k/n - p)^2 = z^2 p (1 - p) / n.
    for p in wilson_ci(k, n):
        assert (k / n - p) ** 2 == pytest.approx(stats.Z95**2 * p * (1 - p) / n, rel=1e-9)


def test_wilson_edges_are_exact_and_n0_is_uninformative():
    assert wilson_ci(0, 10)[0] == 0.0
    assert wilson_ci(10, 10)[1] == 1.0
    assert wilson_ci(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(("k", "n"), [(-1, 10), (11, 10), (1, -1), (0.5, 10), (True, 10)])
def test_wilson_rejects_bad_counts(k, n):
    with pytest.raises(UserError):
        wilson_ci(k, n)


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_estimate_and_is_symmetric(kn):
    k, n = kn
    lo, hi = wilson_ci(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    mirror_lo, mirror_hi = wilson_ci(n - k, n)
    assert lo == pytest.approx(1.0 - mirror_hi, abs=1e-12)
    assert hi == pytest.approx(1.0 - mirror_lo, abs=1e-12)


def test_bootstrap_deterministic_and_contains_median():
    values = np.random.default_rng(1).normal(0.3, 0.1, size=200)
    a = bootstrap_ci(values, seed=3)
    assert a == bootstrap_ci(values, seed=3)
    assert a != bootstrap_ci(values, seed=4)
    lo, hi = a
    assert lo < np.median(values) < hi
    # The median's standard error for n=200, sigma=0.1 is ~0.009: the 95% CI is a few hundredths wide.
    assert 0.01 < hi - lo < 0.06


def test_bootstrap_level_and_statistic():
    values = np.arange(100.0)
    narrow = bootstrap_ci(values, statistic=np.mean, level=0.5)
    wide = bootstrap_ci(values, statistic=np.mean, level=0.99)
    assert wide[0] < narrow[0] < 49.5 < narrow[1] < wide[1]


def test_bootstrap_empty_and_infinite():
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    # Mostly failed attacks have infinite distance: the upper bound is inf, not nan.
    lo, hi = bootstrap_ci([0.1, 0.2, math.inf, math.inf, math.inf])
    assert lo in (0.1, 0.2) and hi == math.inf


@pytest.mark.parametrize("kwargs", [{"level": 1.0}, {"level": 0.0}, {"n_boot": 0}])
def test_bootstrap_rejects_bad_arguments(kwargs):
    with pytest.raises(UserError):
        bootstrap_ci([1.0, 2.0], **kwargs)


def test_spearman_monotone():
    x = np.array([3.0, 11.6, 26.0, 46.1, 60.0])
    assert spearman_with_ci(x, x**2) == (1.0, 1.0, 1.0)
    assert spearman_with_ci(x, -x) == (-1.0, -1.0, -1.0)


def test_spearman_ci_sign_on_noisy_trend():
    rng = np.random.default_rng(0)
    x = np.arange(20.0)
    rho, lo, hi = spearman_with_ci(x, x + rng.normal(0, 4, size=20))
    assert 0 < lo < rho < hi <= 1
    rho, lo, hi = spearman_with_ci(x, -x + rng.normal(0, 4, size=20))
    assert -1 <= lo < rho < hi < 0


def test_spearman_random_data_is_inconclusive():
    rng = np.random.default_rng(0)
    rho, lo, hi = spearman_with_ci(rng.normal(size=15), rng.normal(size=15))
    assert lo < 0 < hi
    assert lo <= rho <= hi


def test_spearman_matches_scipy_with_ties_and_is_deterministic():
    x = [1, 2, 2, 3, 5, 5, 5, 8]
    y = [2, 1, 4, 4, 6, 3, 7, 9]
    rho, lo, hi = spearman_with_ci(x, y, seed=7)
    assert rho == pytest.approx(spearmanr(x, y).statistic)
    assert (rho, lo, hi) == spearman_with_ci(x, y, seed=7)
    assert -1 <= lo <= hi <= 1


def test_spearman_degenerate_inputs_give_nan():
    assert all(math.isnan(v) for v in spearman_with_ci([1, 2, 3], [4, 4, 4]))
    assert all(math.isnan(v) for v in spearman_with_ci([1], [2]))


def test_spearman_too_few_valid_resamples_gives_nan_ci(monkeypatch):
    # 3 distinct points: a resample is constant with probability 3/27, so ~89% of resamples are usable.
    rho, lo, hi = spearman_with_ci([1, 2, 3], [1, 2, 3])
    assert (rho, lo, hi) == (1.0, 1.0, 1.0)
    monkeypatch.setattr(stats, "_MIN_VALID_FRACTION", 0.95)
    rho, lo, hi = spearman_with_ci([1, 2, 3], [1, 2, 3])
    assert rho == 1.0 and math.isnan(lo) and math.isnan(hi)


def test_spearman_rejects_unpaired_or_missing_values():
    with pytest.raises(UserError, match="paired"):
        spearman_with_ci([1, 2, 3], [1, 2])
    with pytest.raises(UserError, match="finite"):
        spearman_with_ci([1, 2, math.nan], [1, 2, 3])


def test_spearman_draws_add_measurement_noise():
    x = np.arange(6.0)
    y = x / 100
    # Draws equal to the observed values leave the interval as it was.
    same = np.tile(y, (2000, 1))
    assert spearman_with_ci(x, y, y_draws=same) == spearman_with_ci(x, y)
    # Draws whose noise swamps the spacing of y pull the interval across 0.
    noisy = y + np.random.default_rng(0).normal(0, 1.0, size=(2000, 6))
    rho, lo, hi = spearman_with_ci(x, y, y_draws=noisy)
    assert rho == 1.0 and lo < 0 < hi


@pytest.mark.parametrize("draws", [np.zeros((10, 6)), np.full((2000, 6), math.nan)])
def test_spearman_rejects_bad_draws(draws):
    with pytest.raises(UserError, match="y_draws"):
        spearman_with_ci(np.arange(6.0), np.arange(6.0), y_draws=draws)


@pytest.mark.parametrize("n", [3, 5, 6, 8])
def test_permutation_p_is_exact(n):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 4, size=n).astype(float)  # ties in x, as equal MACs would give
    y = x + rng.normal(size=n)
    expected = permutation_test(
        (y,), lambda v: spearmanr(x, v).statistic, permutation_type="pairings", n_resamples=np.inf
    ).pvalue
    assert spearman_permutation_p(x, y) == pytest.approx(expected)


def test_permutation_p_of_perfect_orders():
    for n in (2, 3, 4, 5, 7):
        assert spearman_permutation_p(range(n), range(n)) == pytest.approx(2 / math.factorial(n))
        assert spearman_permutation_p(range(n), range(n, 0, -1)) == pytest.approx(2 / math.factorial(n))


def test_permutation_p_monte_carlo_agrees_with_exact(monkeypatch):
    rng = np.random.default_rng(1)
    x = np.arange(9.0)
    y = x + rng.normal(0, 3, size=9)
    sampled = spearman_permutation_p(x, y, n_perm=20000, seed=3)  # 9 pairs: sampled
    monkeypatch.setattr(stats, "EXACT_PERMUTATION_MAX_N", 9)
    exact = spearman_permutation_p(x, y)
    monkeypatch.undo()
    assert sampled == spearman_permutation_p(x, y, n_perm=20000, seed=3)
    assert sampled == pytest.approx(exact, abs=0.01)


def test_permutation_p_degenerate_and_bad_inputs():
    with pytest.raises(UserError, match="n_perm must be a positive integer"):
        spearman_permutation_p(range(10), range(10), n_perm=0)
    assert math.isnan(spearman_permutation_p([1, 2, 3], [4, 4, 4]))
    assert math.isnan(spearman_permutation_p([1], [2]))
    with pytest.raises(UserError, match="paired"):
        spearman_permutation_p([1, 2, 3], [1, 2])
    with pytest.raises(UserError, match="finite"):
        spearman_permutation_p([1, 2, math.inf], [1, 2, 3])


def _brute_force_p(x, y):
    observed = abs(spearmanr(x, y).statistic)
    hits = [
        abs(spearmanr(x, [y[i] for i in order]).statistic) >= observed - 1e-9
        for order in permutations(range(len(y)))
    ]
    return sum(hits) / len(hits)


def test_permutation_p_with_ties_in_both_variables():
    # scipy's permutation_test doubles the smaller one-sided p here (0.067); |rho| counting gives 0.033.
    x, y = [2, 2, 0, 1, 1], [0, 0, 2, 1, 1]
    assert spearman_permutation_p(x, y) == pytest.approx(_brute_force_p(x, y)) == pytest.approx(4 / 120)
    rng = np.random.default_rng(5)
    for _ in range(5):
        x, y = rng.integers(0, 3, size=6), rng.integers(0, 3, size=6)
        if len(set(x)) > 1 and len(set(y)) > 1:
            assert spearman_permutation_p(x, y) == pytest.approx(_brute_force_p(x, y))


def test_permutation_p_counts_the_observed_pairing_when_sampling():
    # One sampled pairing of 10 perfectly ordered points almost never reaches |rho| = 1: p = (1 + 0) / 2.
    assert spearman_permutation_p(range(10), range(10), n_perm=1) == 0.5
