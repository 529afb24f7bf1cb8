"""Per-layer timing: every conv unit and the classifier is timed, shares add up, and the saved
profile record reads back into the leaderboard's latency notes."""

import json
import subprocess
import sys

import pytest
import torch

from robust_mnv1.cost.layer_timing import kind_shares, time_layers
from robust_mnv1.models import build_model
from robust_mnv1.records.profiles import load_profiles
from robust_mnv1.records.schema import RecordWarning
from robust_mnv1.report.markdown import render_markdown

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


def test_cost_cli_profile_prints_and_saves_time_shares(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "robust_mnv1.cost",
            "model.alpha=0.25",
            "profile=true",
            "profile_batch=2",
            "profile_reps=2",
            f"profile_out={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "measured time by layer kind" in proc.stdout
    assert "depthwise" in proc.stdout.split("measured time by layer kind")[1]

    (saved,) = tmp_path.glob("*.json")
    assert saved.name.startswith("MobileNetV1-0.25-32px__cpu")
    (profile,) = load_profiles(tmp_path)
    assert profile["batch"] == 2 and profile["threads"] >= 1
    assert {row["kind"] for row in profile["kinds"]} == {"conv", "depthwise", "pointwise", "fc"}
    assert sum(row["time_%"] for row in profile["kinds"]) == pytest.approx(100, abs=0.01)
    depthwise = next(r for r in profile["kinds"] if r["kind"] == "depthwise")
    page = render_markdown([], profiles=[profile])
    assert "## Per-layer latency" in page
    assert f"| depthwise | {depthwise['time_ms']:.2f} | {depthwise['time_%']:.1f} |" in page


def test_load_profiles_skips_what_is_not_a_profile(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"kind": "run", "model": "m"}))
    (tmp_path / "broken.json").write_text("{")
    row = {"kind": "fc", "time_ms": "fast", "time_%": 1, "mult_adds_%": 1, "time_per_mult_add_vs_avg": 1}
    text = {"kind": "layer-profile", "model": "m", "batch": 1, "env": {"device": "cpu"}, "kinds": [row]}
    (tmp_path / "text.json").write_text(json.dumps(text))
    with pytest.warns(RecordWarning) as caught:
        assert load_profiles(tmp_path) == []
    assert len(caught) == 3
    assert load_profiles(tmp_path / "missing") == []
