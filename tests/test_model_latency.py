"""Tests for timing every board architecture in one run (robust_mnv1.cost.model_latency, the
robust_mnv1.latency CLI) and for the board taking its latency column from that run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    from tests._records import make_study, write_study
except ImportError:
    from _records import make_study, write_study

from robust_mnv1.cost import model_latency
from robust_mnv1.cost.model_latency import Architecture, latency_record, measure, save_latency
from robust_mnv1.edge.latency import Latency
from robust_mnv1.records.latency import load_latency
from robust_mnv1.records.store import RecordWarning
from robust_mnv1.report.board import generate
from robust_mnv1.report.findings import findings_block
from robust_mnv1.report.markdown import render_markdown
from robust_mnv1.report.table import build_table

REPO = Path(__file__).resolve().parents[1]
SMALL = Architecture("MobileNetV1-0.25-32px", 0.25, 1.0, "cifar")
LOW_RES = Architecture("MobileNetV1-0.25-16px", 0.25, 0.5, "cifar")


def test_every_architecture_is_timed_in_one_interleaved_run(monkeypatch, tmp_path):
    seen = {}

    def fake(calls, *, reps, warmup, blocks):
        for name, call in calls.items():
            seen[name] = call().shape  # a real forward of the built model, on a full-size image
        assert torch.get_num_threads() == 1 and (reps, warmup, blocks) == (4, 1, 2)
        return {name: Latency((1.0, 2.0, 3.0, 4.0)) for name in calls}

    monkeypatch.setattr(model_latency, "compare_latency", fake)
    found = measure([SMALL, LOW_RES], reps=4, warmup=1, blocks=2)
    assert seen == {SMALL.name: (1, 10), LOW_RES.name: (1, 10)}
    record = latency_record([SMALL, LOW_RES], found, reps=4, warmup=1, blocks=2)
    assert [m["model"] for m in record["models"]] == [SMALL.name, LOW_RES.name]
    assert record["models"][0] | {"model": None} == {
        "model": None,
        "alpha": 0.25,
        "rho": 1.0,
        "profile": "cifar",
        "median_ms": 2.5,
        "p10_ms": 1.3,
        "p90_ms": 3.7,
        "iqr_ms": 1.5,
        "n": 4,
    }
    path = save_latency(record, tmp_path)
    assert path.parent == tmp_path and path.name.startswith("cpu-")
    assert load_latency(tmp_path) == json.loads(path.read_text())


def test_models_are_timed_in_eval_mode_and_the_suites_layout():
    model = SMALL.build()
    assert not model.training
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)


def test_an_architecture_that_builds_under_another_name_is_refused():
    with pytest.raises(ValueError, match=r"builds MobileNetV1-0\.25-32px"):
        Architecture("MobileNetV1-0.50-32px", 0.25, 1.0, "cifar").build()


def _latency_file(models: dict[str, float], created: str) -> dict:
    rows = [{"model": k, "median_ms": v, "p10_ms": v, "p90_ms": v, "iqr_ms": 0.0} for k, v in models.items()]
    env = {"device": "cpu (x86_64)", "cpu": "Test CPU"}
    return {
        "kind": "model-latency",
        "created": created,
        "reps": 1000,
        "blocks": 10,
        "env": env,
        "models": rows,
    }


def test_load_latency_takes_the_newest_and_skips_what_is_not_one(tmp_path):
    assert load_latency(tmp_path / "missing") is None
    (tmp_path / "a.json").write_text(json.dumps(_latency_file({"m": 2.0}, "2026-01-02T00:00:00Z")))
    (tmp_path / "b.json").write_text(json.dumps(_latency_file({"m": 1.0}, "2026-01-01T00:00:00Z")))
    (tmp_path / "broken.json").write_text("{")
    bad = _latency_file({"m": 1.0}, "2026-01-03T00:00:00Z")
    bad["models"][0]["median_ms"] = "fast"
    (tmp_path / "text.json").write_text(json.dumps(bad))
    with pytest.warns(RecordWarning) as caught:
        assert load_latency(tmp_path)["models"][0]["median_ms"] == 2.0
    assert len(caught) == 2


def test_the_board_takes_latency_from_the_one_run_and_says_so(tmp_path):
    study = make_study(alphas=(0.25, 0.5))  # every record says 3.0 ms
    table = build_table(study, {"MobileNetV1-0.25-32px": 1.25})
    by_model = dict(zip(table["model"], table["latency_ms"], strict=False))
    assert by_model == {"MobileNetV1-0.25-32px": 1.25, "MobileNetV1-0.50-32px": 3.0}

    run = _latency_file({"MobileNetV1-0.25-32px": 1.25}, "2026-01-02T00:00:00Z")
    md = render_markdown(study, table, latency=run)
    assert "of 1000 calls of every architecture, all timed in one run in 10 interleaved blocks" in md
    assert "Test CPU" in md
    assert "Not in that run (MobileNetV1-0.50-32px)" in md
    assert "| 1.25 |" in md

    write_study(study, tmp_path)
    plain = generate(tmp_path)["markdown"].read_text()
    assert "in one run" not in plain
    save_latency(
        _latency_file({"MobileNetV1-0.25-32px": 1.25, "MobileNetV1-0.50-32px": 2.5}, "x"),
        tmp_path / "latency",
    )
    measured = generate(tmp_path)["markdown"].read_text()
    assert "in one run" in measured and "Not in that run" not in measured and "| 2.50 |" in measured
    assert "| 2.50 |" in findings_block(tmp_path, tmp_path)  # the README block shows the same column


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "robust_mnv1.latency", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_times_every_architecture_of_the_records(tmp_path):
    write_study(make_study(alphas=(0.25, 0.5)), tmp_path)
    proc = _cli("--results", str(tmp_path), "--reps", "4", "--warmup", "1", "--blocks", "2")
    assert proc.returncode == 0, proc.stderr
    record = load_latency(tmp_path / "latency")
    assert [m["model"] for m in record["models"]] == ["MobileNetV1-0.25-32px", "MobileNetV1-0.50-32px"]
    assert (record["reps"], record["blocks"], record["threads"]) == (4, 2, 1)
    assert all(m["n"] == 4 and m["median_ms"] > 0 for m in record["models"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reps", "5", "--blocks", "10"], "need 1 <= --blocks <= --reps"),
        (["--results", "nowhere"], "no valid run records in nowhere/runs"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    proc = _cli(*[a.replace("nowhere", str(tmp_path / "nowhere")) for a in args])
    assert proc.returncode == 1
    assert (
        proc.stderr.count("\n") == 1 and message.replace("nowhere", str(tmp_path / "nowhere")) in proc.stderr
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "nowhere").exists()
