"""The transfer matrix: one record per source holding every target's masks, the white-box diagonal,
regeneration of the CSV, heatmaps and deployed.md from records alone, and the CLI's one-line errors."""

import copy
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_mnv1.config.compose import compose_config
from robust_mnv1.data import load_dataset
from robust_mnv1.edge import deployed_report as rep
from robust_mnv1.edge import transfer as tr
from robust_mnv1.edge.deployed_records import model_id, read_records, validate_transfer_record
from robust_mnv1.infra.errors import UserError
from robust_mnv1.records.schema import RecordError, decode_mask
from robust_mnv1.records.store import dumps_record
from robust_mnv1.training.model_cache import cache_root

from .test_deployed import assert_refused, tiny_models

FAST = ["attack.pgd.eps_255=[1,2,4,8]", "attack.pgd.steps=5", "transfer.n=120"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models_cache):
    """The transfer records of the tiny model and its PGD-AT fine-tune (a 2x2 matrix), and the tables."""
    cfg, _ = tiny_models(tmp_path_factory, tiny_models_cache, "transfer", FAST, tr.check_config)
    results = Path(cfg.results_dir)
    paths = tr.run_transfer(cfg)
    written = rep.generate(results)
    return cfg, results, paths, written


def test_one_record_per_source_each_holding_every_target(run):
    _, results, paths, _ = run
    records = read_records(results / "transfer", validate_transfer_record)
    assert sorted(paths) == sorted(results / "transfer" / f"{r['run_id']}.json" for r in records)
    ids = {model_id("MobileNetV1-0.25-32px", regime, 0) for regime in ("standard", "pgd-at")}
    assert {model_id(r["source"]["name"], r["source"]["regime"], 0) for r in records} == ids
    for r in records:
        assert set(r["targets"]) == ids and r["n"] == 120
        assert [e["eps_255"] for e in r["eps"]] == [2, 8]  # the configured eps, smallest first
        for e in r["eps"]:
            for entry in (e["source_white_box"], *e["targets"].values()):
                assert decode_mask(entry["robust_mask"], 120).sum() == entry["robust"]


def test_the_diagonal_is_the_sources_white_box_robust_accuracy(run):
    _, results, _, _ = run
    for r in read_records(results / "transfer", validate_transfer_record):
        source = model_id(r["source"]["name"], r["source"]["regime"], r["source"]["seed"])
        for e in r["eps"]:
            assert e["targets"][source]["robust_mask"] == e["source_white_box"]["robust_mask"]
    rows = list(csv.DictReader((results / "transfer" / "transfer_matrix.csv").open()))
    assert len(rows) == 2 * 2 * 2
    diagonal = [row for row in rows if row["white_box"] == "True"]
    assert [(d["source_regime"], d["target_regime"]) for d in diagonal] == [
        ("standard", "standard"),
        ("pgd-at", "pgd-at"),
    ] * 2
    records = read_records(results / "transfer", validate_transfer_record)
    white_box = {
        (model_id(r["source"]["name"], r["source"]["regime"], r["source"]["seed"]), e["eps_255"]): e[
            "source_white_box"
        ]
        for r in records
        for e in r["eps"]
    }
    for m in rep.matrices(records):
        for s in m.sources:
            assert m.accuracy(s, s) == white_box[s, m.eps_255]["accuracy"]


def test_standard_examples_at_8_break_the_standard_model_more_than_at_2(run):
    _, results, _, _ = run
    (m2, m8) = rep.matrices(read_records(results / "transfer", validate_transfer_record))
    s = model_id("MobileNetV1-0.25-32px", "standard", 0)
    assert m8.accuracy(s, s) <= m2.accuracy(s, s)


def test_regeneration_from_records_alone_is_byte_identical(run, tmp_path):
    _, results, _, written = run
    before = {p.relative_to(results): p.read_bytes() for p in written}
    assert {str(p) for p in before} == {
        "deployed.md",
        "transfer/transfer_matrix.csv",
        "transfer/transfer_matrix_2.png",
        "transfer/transfer_matrix_8.png",
    }
    copy_dir = tmp_path / "copy"
    shutil.copytree(
        results / "transfer", copy_dir / "transfer", ignore=shutil.ignore_patterns("transfer_matrix*")
    )
    assert rep.main(["--results", str(copy_dir)]) == 0
    assert rep.main(["--results", str(results)]) == 0
    for rel, data in before.items():
        assert (copy_dir / rel).read_bytes() == data, rel
        assert (results / rel).read_bytes() == data, rel
    md = before[Path("deployed.md")].decode()
    assert "## Transfer matrix" in md and "| **" in md and "transfer/transfer_matrix_8.png" in md


def test_a_rerun_skips_sources_already_recorded(run):
    cfg, _, paths, _ = run
    stamps = {p: p.stat().st_mtime_ns for p in paths}
    assert tr.run_transfer(cfg) == []
    assert {p: p.stat().st_mtime_ns for p in paths} == stamps


def test_a_corrupted_record_is_refused(run, tmp_path, capsys):
    _, results, _, _ = run
    (record,) = [
        r for r in read_records(results / "transfer", validate_transfer_record) if "pgd-at" in r["run_id"]
    ]
    bad = copy.deepcopy(record)
    entry = next(iter(bad["eps"][0]["targets"].values()))
    entry["robust"] += 1
    with pytest.raises(RecordError, match=r"transfer-source record: field 'eps\[0\]\.targets\..*\.robust'"):
        validate_transfer_record(bad)
    for edit in (lambda r: r["targets"].popitem(), lambda r: r.update(kind="deployed-robustness")):
        other = copy.deepcopy(record)
        edit(other)
        with pytest.raises(RecordError):
            validate_transfer_record(other)
    (tmp_path / "transfer").mkdir()
    (tmp_path / "transfer" / f"{record['run_id']}.json").write_text(dumps_record(bad)[:-20])
    assert rep.main(["--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: invalid record ") and err.count("\n") == 1
    assert list((tmp_path / "transfer").iterdir()) == [tmp_path / "transfer" / f"{record['run_id']}.json"]


def test_matrices_refuse_two_data_sets(run):
    _, results, _, _ = run
    records = read_records(results / "transfer", validate_transfer_record)
    other = copy.deepcopy(records[0])
    other["data"]["label"] = "CIFAR-10"
    with pytest.raises(UserError, match="several data sets"):
        rep.matrices([records[1], other])


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("transfer.eps_255=[3]", "transfer.eps_255 must be among attack.pgd.eps_255"),
        ("transfer.n=361", "transfer.n=361 is more than the 360 test images of digits"),
        (
            "transfer.grid=[{alpha:0.25,rho:1.0},{alpha:0.25,rho:1.0}]",
            "transfer.grid[1] repeats transfer.grid[0]",
        ),
        ("+transfer.regimes=[standard]", "unknown key transfer.regimes"),
    ],
)
def test_bad_config_is_one_user_error(override, needle):
    with pytest.raises(UserError) as err:
        tr.check_config(compose_config(["transfer.n=100", override], "transfer"))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_missing_cache_entry_is_one_line_and_exit_2_before_any_work(tmp_path):
    # The model the default config names, missing from an empty cache; the error names this CLI's key.
    needle = "or set transfer.train_missing=true to train it"
    assert_refused("robust_mnv1.transfer", ["transfer.n=100"], needle, tmp_path)


def test_grid_members_are_loaded_not_trained(run):
    cfg, _, _, _ = run
    entries = sorted((cache_root(cfg) / "models").iterdir())
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    members = tr.grid_members(cfg, dataset, torch.device("cpu"))
    assert [m.id for m in members] == [
        model_id("MobileNetV1-0.25-32px", r, 0) for r in ("standard", "pgd-at")
    ]
    assert sorted((cache_root(cfg) / "models").iterdir()) == entries
    assert np.unique([m.fields["weights"] for m in members]).size == 2
