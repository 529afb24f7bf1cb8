"""The summary above the verdicts: each series' outcomes counted the way its verdict lines say them,
and fine-tuning's effect read off the table."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from robust_mnv1.report.summary import summary_lines
from robust_mnv1.report.verdict_text import verdict_lines
from robust_mnv1.report.verdicts import analyse
from tests._outcomes import synthetic_study

NO_ROWS = pd.DataFrame(columns=["data_key", "model", "regime", "clean_acc", "worst8_acc"])


def _clause(summary: str, regime: str) -> str:
    """The part of a series' summary line that speaks of ``regime`` ("standard training", "PGD-AT")."""
    return re.search(rf"After {regime}, (.*?)\.(?: After|$)", summary).group(1)


def test_a_planted_effect_reads_lighter_on_every_metric_and_its_reverse_larger():
    for effect, word in ((0.05, "lighter"), (-0.05, "larger")):
        (line,) = summary_lines(analyse(synthetic_study(effect=effect), "synthetic"), NO_ROWS)
        assert line.startswith("**Width** (α 0.25 to 1 at ρ = 1). After standard training, ")
        assert _clause(line, "standard training") == (
            f"{word} models are easier to fool on fooling rate under PGD@2/255, fooling rate under "
            "worst-case@8/255, robust accuracy under worst-case@8/255 and C&W median L2"
        )


def test_each_metric_is_counted_under_the_outcome_its_verdict_line_states():
    # Standard models with an effect, fine-tuned ones without, seed noise on the fine-tuned ones, and a
    # saturated metric: every kind of outcome at once.
    standard = synthetic_study(effect=0.05, n=4000)
    for o in standard:
        o.robust["worst8"] = np.zeros_like(o.correct)
    tuned = synthetic_study(effect=0.01, n=4000, seeds=(0, 1, 2), seed_noise=0.1, regime="pgd-at", seed=7)
    board = analyse(standard + tuned, "synthetic")
    (line,) = summary_lines(board, NO_ROWS)
    phrases = {
        "lighter is easier to fool": "lighter models are easier to fool on",
        "larger is easier to fool": "larger models are easier to fool on",
        "inconclusive, within training noise": "differences within training noise on",
        "inconclusive:": "no conclusion on",
        "saturated, not tested": "cannot tell the models apart",
    }
    for verdict in verdict_lines(board):
        regime, _, rest = verdict.partition(", width (α at ρ = 1), ")
        metric = rest.split(": ")[0]
        clause = _clause(line, regime)
        said = next(p for v, p in phrases.items() if v in verdict)
        part = next(p for p in clause.split("; ") if metric in p)
        assert said in part, (verdict, clause)
    assert "differences within training noise" in _clause(line, "PGD-AT")
    assert "cannot tell the models apart" in _clause(line, "standard training")
    assert "lighter models are easier to fool" in _clause(line, "standard training")


def test_fine_tuning_reads_the_ranges_of_clean_and_worst_case_change_off_the_table():
    rows = pd.DataFrame(
        [
            ("d", "A", "standard", 0.80, 0.0),
            ("d", "A", "pgd-at", 0.55, 0.27),
            ("d", "B", "standard", 0.85, 0.0),
            ("d", "B", "pgd-at", 0.60, 0.30),
            ("d", "C", "standard", 0.90, math.nan),
            ("d", "C", "pgd-at", 0.62, 0.31),
            ("d", "D", "standard", 0.70, 0.0),  # no fine-tuned row: not a fine-tuned model
        ],
        columns=NO_ROWS.columns,
    )
    board = analyse(synthetic_study(alphas=(0.5,)), "synthetic")  # no series: the fine-tuning line only
    assert summary_lines(board, rows) == [
        "PGD-AT fine-tuning, 3 models: clean accuracy 80.0–90.0% → 55.0–62.0% (down by 25.0 to 28.0 "
        "points); worst-case@8/255 robust accuracy 0.0% → 27.0–30.0% (up by 27.0 to 30.0 points; "
        "2 models, the others lack a worst case)."
    ]


def test_a_board_with_missing_models_says_its_counts_can_change():
    study = synthetic_study(effect=0.05)
    del next(o for o in study if o.alpha == 1.0).robust["pgd2"]
    lines = summary_lines(analyse(study, "synthetic"), NO_ROWS)
    assert lines[-1] == "Some comparisons leave out models that lack the metric (the board lists them)."
    assert summary_lines(analyse(synthetic_study(effect=0.05), "synthetic"), NO_ROWS)[-1].startswith(
        "**Width**"
    )
