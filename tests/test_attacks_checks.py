"""Gradient-masking sanity checks: quiet on a normal model, firing on deliberately masked ones."""

from __future__ import annotations

import json
import time

import pytest
import torch

from attacks import checks
from tests._attack_models import DoubleSoftmax, QuantizedInput, single_thread, synthetic_batch, trained_cnn

pytestmark = pytest.mark.usefixtures(single_thread.__name__)

EPS = 8 / 255


@pytest.fixture(scope="module")
def batch():
    return synthetic_batch(200, 11)


def _flagged(reports: list[checks.CheckReport]) -> set[str]:
    return {r.name for r in reports if r.flagged}


def test_run_all_is_quiet_on_a_normal_model_and_cheap(batch):
    x, y = batch
    start = time.perf_counter()
    reports = checks.run_all(trained_cnn(), x, y, eps=EPS)
    assert time.perf_counter() - start < 30
    assert len({r.name for r in reports}) == len(reports) == 7
    assert _flagged(reports) == set()
    for report in reports:
        record = json.loads(json.dumps(report.to_dict()))
        assert record["name"] == report.name and record["flagged"] is False and record["detail"]
        assert all(isinstance(v, float) for v in report.metrics.values())


def test_input_quantization_is_flagged(batch):
    x, y = batch
    reports = {r.name: r for r in checks.run_all(QuantizedInput(trained_cnn()), x, y, eps=EPS)}
    assert reports["zero_gradients"].flagged and reports["unbounded_attack_fails"].flagged
    # Noise at the same eps breaks samples that the (blind) gradient attack cannot.
    assert reports["random_noise_beats_attack"].metrics["noise_only_fraction"] > 0


def test_probability_outputs_are_flagged(batch):
    x, y = batch
    report = checks.check_outputs_are_logits(DoubleSoftmax(trained_cnn()), x, y)
    assert report.flagged and report.metrics["probability_rows_fraction"] == 1.0
    assert "outputs_look_like_probabilities" in _flagged(
        checks.run_all(DoubleSoftmax(trained_cnn()), x, y, eps=EPS)
    )


def test_single_checks_take_the_attack_settings(batch):
    x, y = batch
    model = QuantizedInput(trained_cnn())
    assert checks.check_zero_gradients(model, x, y).flagged
    assert checks.check_unbounded_attack(model, x, y, norm="l2", steps=5).flagged
    normal = trained_cnn()
    assert not checks.check_unbounded_attack(normal, x, y, norm="l2", steps=5).flagged
    assert not checks.check_pgd_vs_fgsm(normal, x, y, eps=EPS, loss="margin").flagged
    report = checks.check_monotone_in_eps(normal, x, y, eps=EPS, factors=(0.0, 1.0, 3.0))
    assert not report.flagged and set(report.metrics) >= {"acc_at_0eps", "acc_at_1eps", "acc_at_3eps"}
    assert not checks.check_more_effort(normal, x, y, eps=EPS, steps=3).flagged
    assert not checks.check_random_noise(normal, x, y, eps=EPS, draws=3).flagged


def test_checks_validate_their_arguments(batch):
    x, y = batch
    with pytest.raises(ValueError, match="eps"):
        checks.run_all(trained_cnn(), x, y, eps=0.0)
    with pytest.raises(ValueError, match="norm"):
        checks.run_all(trained_cnn(), x, y, eps=EPS, norm="l1")


def test_a_difference_of_exactly_tol_does_not_flag():
    # 119/200 - 117/200 as float32 means is 0.0100000501: two samples, not more than 1% of 200.
    rise = float(torch.tensor(119 / 200)) - float(torch.tensor(117 / 200))
    assert rise > 0.01
    assert not checks._more_than(rise, 0.01, 200)
    assert checks._more_than(rise + 1 / 200, 0.01, 200)
