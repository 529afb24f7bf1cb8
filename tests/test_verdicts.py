"""The paired verdicts on synthetic studies with a known truth, and their statistics against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from robust_mnv1.report.metric_stats import Metric
from robust_mnv1.report.paired import holm, log_ratio, mcnemar_exact, sign_test
from robust_mnv1.report.verdict_text import section, verdict_line, verdict_lines
from robust_mnv1.report.verdicts import Series, analyse
from robust_mnv1.report.verdicts import Test as Comparison
from tests._outcomes import synthetic_study


def _decided(board):
    return [t for t in board.tests if t.lighter_easier is not None]


def test_mcnemar_and_sign_test_match_scipys_binomial_test():
    rng = np.random.default_rng(0)
    a, b = rng.random(500) < 0.5, rng.random(500) < 0.4
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    assert mcnemar_exact(a, b) == pytest.approx(binomtest(only_a, only_a + only_b).pvalue)
    d = np.array([0.3, -0.1, 0.0, 0.2, np.nan, 0.5, 0.4, -0.2, 0.1])
    assert sign_test(d) == pytest.approx(binomtest(5, 7).pvalue)
    assert mcnemar_exact(a, a) == 1.0


def test_holm_matches_hand_computation():
    # Sorted p: 0.01 (×4), 0.02 (×3), 0.03 (×2), 0.5 (×1), each at least the one before.
    assert holm([0.03, 0.01, 0.5, 0.02]).tolist() == pytest.approx([0.06, 0.04, 0.5, 0.06])


def test_log_ratio_treats_two_unbroken_images_as_a_tie():
    d = log_ratio(np.array([1.0, np.inf, np.inf, 2.0, np.nan]), np.array([2.0, np.inf, 1.0, np.inf, 1.0]))
    assert d[0] == pytest.approx(np.log(0.5))
    assert d[1] == 0.0 and d[2] == np.inf and d[3] == -np.inf and np.isnan(d[4])


def test_a_planted_effect_is_found_on_every_metric():
    board = analyse(synthetic_study(effect=0.05), "synthetic")
    extreme = [t for t in board.tests if t.kind == "pair" and (t.a, t.b) == ("α = 0.25", "α = 1")]
    assert len(extreme) == 4 and all(t.lighter_easier is True for t in extreme)
    lines = verdict_lines(board)
    assert len(lines) == 4 and all("lighter is easier to fool" in line for line in lines)
    assert all("ignores training randomness" in line for line in lines)


def test_the_reverse_effect_is_called_the_other_way():
    board = analyse(synthetic_study(effect=-0.05), "synthetic")
    assert {t.lighter_easier for t in board.tests if t.kind == "trend"} == {False}


def test_false_verdicts_under_simulated_nulls_stay_within_five_percent():
    boards = [
        analyse(synthetic_study(effect=0.0, n=1000, n_cw=100, seed=100 + s), "synthetic") for s in range(60)
    ]
    with_false_verdict = sum(bool(_decided(b)) for b in boards)
    assert with_false_verdict <= 3  # family-wise, over the 20 tests of each board


def test_seed_noise_larger_than_image_noise_blocks_the_verdict():
    noisy = synthetic_study(effect=0.01, n=4000, seeds=(0, 1, 2), seed_noise=0.1)
    board = analyse(noisy, "synthetic")
    assert board.spreads and not _decided(board)
    assert any(t.blocked_by_noise for t in board.tests)
    lines = verdict_lines(board)
    assert all(": inconclusive" in line for line in lines)
    # A difference the images detect but the seeds could produce says that the seeds blocked it.
    assert any("inconclusive, within training noise" in line for line in lines)
    # The same effect without seed noise concludes: the seeds, not the images, blocked it.
    quiet = analyse(synthetic_study(effect=0.01, n=4000, seeds=(0, 1, 2), seed_noise=1e-9), "synthetic")
    assert _decided(quiet)


def test_ties_and_infinite_cw_distances_are_handled():
    board = analyse(synthetic_study(effect=0.05, cw_never_broken=0.3), "synthetic")
    cw = [t for t in board.tests if t.metric.key == "cw"]
    assert len(cw) == 5 and all(np.isfinite(t.p) for t in cw)
    # Most images unbroken: medians are infinite, and the board says so instead of failing.
    mostly = analyse(synthetic_study(effect=0.05, cw_never_broken=0.8), "synthetic")
    text = "\n".join(section(mostly))
    assert "C&W median L2" in text and "inf" in text


def test_a_single_model_has_no_series():
    board = analyse(synthetic_study(alphas=(0.5,)), "synthetic")
    assert not board.series and "No series" in section(board)[0]


def test_a_model_without_a_metric_is_left_out_of_that_comparison_only():
    study = synthetic_study(effect=0.05)
    largest = next(o for o in study if o.alpha == 1.0)
    del largest.robust["pgd2"]
    board = analyse(study, "synthetic")
    pgd2 = [t for t in board.tests if t.metric.key == "fool_pgd2"]
    assert pgd2 and all("α = 1" not in (t.a, t.b) for t in pgd2)
    assert any(t.b == "α = 1" for t in board.tests if t.metric.key == "robust_worst8")
    assert any("without MobileNetV1-1.00-32px" in s for s in board.skipped)


def test_a_saturated_metric_is_reported_but_not_tested():
    study = synthetic_study(effect=0.05)
    for o in study:  # every model broken on every image at 8/255, as standard models are
        o.robust["worst8"] = np.zeros_like(o.correct)
    board = analyse(study, "synthetic")
    assert {t.metric.key for t in board.tests} == {"fool_pgd2", "cw"}
    # Holm's correction counts only the tests that could conclude.
    assert [t.p_holm for t in board.tests] == pytest.approx(holm([t.p for t in board.tests]).tolist())
    lines = verdict_lines(board)
    worst = [line for line in lines if "worst-case@8/255" in line]
    assert len(lines) == 4 and len(worst) == 2
    assert "every model is fooled on every image it classifies correctly" in worst[0]
    assert "no model keeps a single image robust" in worst[1]
    assert all("saturated, not tested" in line for line in worst)
    # One image kept robust by one model is enough to test again.
    study[0].robust["worst8"] = study[0].correct & (
        np.arange(len(study[0].correct)) == np.argmax(study[0].correct)
    )
    assert {t.metric.key for t in analyse(study, "synthetic").tests} == {
        "fool_pgd2",
        "fool_worst8",
        "robust_worst8",
        "cw",
    }


def test_a_cw_line_that_does_not_conclude_reads_its_limit_off_the_printed_ci_and_gives_the_trends_p():
    series = Series("d", "width", 1.0, "pgd-at", ())
    cw = Metric("cw", "C&W median L2", "cw")

    def comparison(kind, n, pct, lo, hi, p_holm):  # estimates in percent, stored as log-ratios
        est, lo, hi = (math.log1p(v / 100) for v in (pct, lo, hi))
        return Comparison(series, cw, kind, "α = 0.25", "α = 0.5", n, est, lo, hi, p_holm / 10, None, p_holm)

    line = verdict_line(
        series,
        cw,
        [comparison("pair", 263, 4.4, 0.4, 9.7, 0.26), comparison("trend", 500, -5.1, -9.2, -1.5, 0.099)],
    )
    assert ": inconclusive: " in line
    # The pair's CI excludes 0; whole percents would have printed it as [0, 10].
    assert "is fooled at a 4.4% [0.4, 9.7] larger median L2 than α = 0.5" in line
    # 9.2% is the CI's far end as printed (its log-scale mirror would read 10.1%), and the CI excludes 0
    # without concluding, so the trend's adjusted p is stated beside it.
    assert "the trend CI [-9.2, -1.5] (Holm p = 0.099) rules out trends larger than 9.2% per doubling" in line
