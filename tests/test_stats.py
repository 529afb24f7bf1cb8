"""Tests for robust_mnv1.records.intervals: Wilson intervals, bootstrap intervals, Spearman with CI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from robust_mnv1.infra.errors import UserError
from robust_mnv1.records import intervals as stats
from robust_mnv1.records.intervals import bootstrap_ci, wilson_ci


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
