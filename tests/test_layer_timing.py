"""Per-layer timing: every conv unit and the classifier is timed, and shares add up."""

import subprocess
import sys

import pytest
import torch

from robust_mnv1.layer_timing import kind_shares, time_layers
from robust_mnv1.models import build_model

from .conftest import REPO


def test_time_layers_covers_every_layer_and_shares_sum_to_100():
    model = build_model(alpha=0.25, rho=0.75, profile="cifar", num_classes=10)
    timing = time_layers(model, torch.device("cpu"), batch=4, reps=2)
    assert len(timing) == 1 + 2 * 13 + 1  # stem, 13 x (depthwise, pointwise), classifier
    assert (timing["ms"] > 0).all()
    shares = kind_shares(model, timing)
    assert set(shares.index) == {"conv", "depthwise", "pointwise", "fc"}
    assert shares["time_%"].sum() == pytest.approx(100)
    assert shares["mult_adds_%"].sum() == pytest.approx(100)


def test_cost_cli_profile_prints_time_shares():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "robust_mnv1.cost",
            "model.alpha=0.25",
            "profile=true",
            "profile_batch=2",
            "profile_reps=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "measured time by layer kind" in proc.stdout
    assert "depthwise" in proc.stdout.split("measured time by layer kind")[1]
