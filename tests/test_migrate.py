"""Record migrations (robust_mnv1.records.migrate): a record made before a config key existed gets
the key with the value the old code used, and the config hash the study computes today."""

from __future__ import annotations

import copy
import json

import pytest

from robust_mnv1.config.compose import compose_config
from robust_mnv1.evaluation.study import record_config
from robust_mnv1.records import migrate
from robust_mnv1.records.run_record import RunRecord
from robust_mnv1.records.schema import config_hash
from robust_mnv1.records.store import dumps_record, parse_record, write_record

try:
    from tests._records import make_study
except ImportError:
    from _records import make_study


def _before_the_keys(config: dict) -> dict:
    """A record config as the study made it before the headline and sanity radii were config keys."""
    old = copy.deepcopy(config)
    del old["eval"]["headline_eps_255"]
    del old["eval"]["sanity"]["eps_255"]
    return old


@pytest.fixture
def runs(tmp_path):
    """A runs directory of records whose config is today's study config minus the two keys."""
    today = record_config(compose_config(["experiment=smoke", "results_dir=unused"]), "standard", "pgd")
    old = _before_the_keys(today)
    records = make_study(alphas=(0.25, 0.5), regimes=("standard",), n=32, attacks=("fgsm", "pgd"))
    for r in records:
        d = r.to_dict()
        d["config"], d["config_hash"] = old, config_hash(old)
        write_record(RunRecord.from_dict(d), tmp_path / "runs")
    return tmp_path / "runs", today


def test_old_records_get_todays_config_and_hash(runs):
    path, today = runs
    assert len(migrate.migrate_runs([path])) == 4
    for f in path.glob("*.json"):
        record = RunRecord.from_dict(parse_record(f.read_text()))
        assert record.config == today
        assert record.config_hash == config_hash(today)
        assert record.headline_eps_255 == 8


def test_migration_is_idempotent_and_changes_nothing_else(runs):
    path, _ = runs
    before = {f.name: json.loads(f.read_text()) for f in path.glob("*.json")}
    migrate.migrate_runs([path])
    once = {f.name: f.read_text() for f in path.glob("*.json")}
    assert migrate.migrate_runs([path]) == []
    assert {f.name: f.read_text() for f in path.glob("*.json")} == once
    for name, text in once.items():
        after = json.loads(text)
        for key in set(after) - {"config", "config_hash"}:
            assert after[key] == before[name][key], key


def test_an_invalid_record_stops_the_migration_before_any_write(runs, capsys):
    path, _ = runs
    victim = sorted(path.glob("*.json"))[-1]
    broken = json.loads(victim.read_text())
    broken["clean"]["accuracy"] = 2.0
    victim.write_text(dumps_record(broken))
    before = {f.name: f.read_text() for f in path.glob("*.json")}
    assert migrate.main([str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and victim.name in err and "clean.accuracy" in err
    assert {f.name: f.read_text() for f in path.glob("*.json")} == before


def test_cli_reports_what_it_did(runs, capsys):
    path, _ = runs
    assert migrate.main([str(path)]) == 0
    assert capsys.readouterr().out.strip() == "migrated 4 record(s)"
    assert migrate.main([str(path / "missing")]) == 1


def test_committed_records_are_migrated():
    """The published records carry the keys: a study resumed on them redoes nothing."""
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "results"
    for f in [*results.glob("runs/*.json"), *results.glob("*/runs/*.json")]:
        record = parse_record(f.read_text())
        copy_ = copy.deepcopy(record)
        assert not migrate.migrate_record(copy_), f
