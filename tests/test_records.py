"""Tests for robust_mnv1.records: schema validation, atomic storage, tolerant loading, masks."""

from __future__ import annotations

import base64
import copy
import json
import multiprocessing as mp
import os
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

# tests/ may be run as a package (tests/__init__.py) or as plain modules on sys.path.
try:
    from tests._records import make_study
except ImportError:
    from _records import make_study
from hypothesis import given
from hypothesis import strategies as st

from robust_mnv1.infra.errors import UserError
from robust_mnv1.records.migrate import migrate_runs
from robust_mnv1.records.run_record import RunRecord
from robust_mnv1.records.schema import (
    RecordError,
    RecordWarning,
    config_hash,
    decode_mask,
    encode_mask,
    make_run_id,
)
from robust_mnv1.records.store import (
    check_combinable,
    dumps_record,
    load_records,
    parse_record,
    write_record,
)
from robust_mnv1.records.validate import validate_record

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.fixture(scope="module")
def study() -> list[RunRecord]:
    return make_study(alphas=(0.25, 0.5), regimes=("standard", "pgd-at"), n=64)


@pytest.fixture
def pgd_record(study) -> RunRecord:
    return next(r for r in study if r.attack == "pgd")


# The validation tests corrupt records in their JSON form.
@pytest.fixture
def pgd(study) -> dict:
    return next(r for r in study if r.attack == "pgd").to_dict()


@pytest.fixture
def cw(study) -> dict:
    return next(r for r in study if r.attack == "cw").to_dict()


def _delete(record: dict, path: str) -> None:
    *parents, last = path.split(".")
    node = record
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[last]


def test_hand_made_records_are_valid(study):
    for record in study:
        validate_record(record.to_dict())


def test_typed_records_round_trip_their_json(study):
    for record in study:
        assert RunRecord.from_dict(record.to_dict()) == record


def test_peak_memory_is_optional_and_round_trips(pgd):
    assert "memory" not in pgd  # records made before it was measured stay valid as they are
    pgd["memory"] = {"peak_rss_mib": 2048.5, "peak_cuda_mib": 900.0}
    record = RunRecord.from_dict(pgd)
    assert record.memory == {"peak_rss_mib": 2048.5, "peak_cuda_mib": 900.0}
    assert record.to_dict() == pgd


def test_committed_records_round_trip_byte_for_byte():
    """Every committed record loads into the typed classes and writes back as the same bytes."""
    paths = [*RESULTS.glob("runs/*.json"), *RESULTS.glob("*/runs/*.json")]
    assert paths
    for path in paths:
        text = path.read_text(encoding="utf-8")
        record = RunRecord.from_dict(parse_record(text))
        assert dumps_record(record.to_dict()) == text, path


def test_a_field_outside_the_schema_is_refused_not_dropped(pgd):
    pgd["model"]["favourite_colour"] = "blue"
    pgd["eps_results"][0]["note"] = "x"
    with pytest.raises(RecordError, match=r"model\.favourite_colour"):
        RunRecord.from_dict(pgd)
    del pgd["model"]["favourite_colour"]
    with pytest.raises(RecordError, match=r"eps_results\[\]\.note"):
        RunRecord.from_dict(pgd)


@pytest.mark.parametrize(
    "path",
    [
        "schema_version",
        "run_id",
        "model.macs",
        "model.name",
        "regime",
        "data.key",
        "seed",
        "config",
        "clean",
        "clean.correct",
        "eps_results.0.robust_mask",
        "eps_results.2.loss",
        "cw",
        "sanity.flags",
        "timing",
        "env.device",
        "env.git_commit",
        "latency_ms_cpu_b1",
        "created",
    ],
)
def test_missing_field_is_named(pgd, path):
    _delete(pgd, path)
    shown = re.sub(r"\.(\d+)\.", r"[\1].", path)
    with pytest.raises(RecordError, match=re.escape(f"missing field '{shown}'")):
        validate_record(pgd)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("clean.accuracy", 1.2, "clean.accuracy"),
        ("clean.accuracy", -0.1, "clean.accuracy"),
        ("clean.accuracy", float("nan"), "clean.accuracy"),
        ("clean.accuracy", 0.5, "clean.accuracy"),  # disagrees with correct / n
        ("clean.ci95", [0.9, 0.8], "clean.ci95"),
        ("clean.ci95", [0.1, 1.5], "clean.ci95"),
        ("clean.correct", 10_000, "clean.correct"),
        ("clean.n", True, "clean.n"),
        ("eps_results.0.accuracy", 1.01, "eps_results[0].accuracy"),
        ("eps_results.0.robust", 0, "eps_results[0]"),
        ("eps_results.0.eps_255", 3, "eps_results[0].eps_255"),
        ("eps_results.0.norm", "l1", "eps_results[0].norm"),
        ("eps_results.1.robust_mask", "not base64!", "robust mask"),
        ("schema_version", 2, "schema_version"),
        ("regime", "adversarial", "regime"),
        ("attack", "deepfool", "attack"),
        ("run_id", "../../etc/passwd", "run_id"),
        ("config_hash", "0" * 64, "config_hash"),
        ("cw", {"n": 1}, "cw"),
        ("sanity.passed", "yes", "sanity.passed"),
        ("timing.eval_s", -1.0, "timing.eval_s"),
        ("memory", {"peak_rss_mib": -1.0}, "memory.peak_rss_mib"),
        ("memory", {"peak_rss_mib": "2 GB"}, "memory.peak_rss_mib"),
        ("memory", [2048.0], "memory"),
        ("model.params", 1.5, "model.params"),
        ("model.weights", "not-a-digest", "model.weights"),
        ("model.parent_weights", "ABCDEF0123456789", "model.parent_weights"),
        ("env.torch", None, "env.torch"),
        ("created", "yesterday", "created"),
    ],
)
def test_bad_values_are_rejected_and_named(pgd, path, value, field):
    *parents, last = path.split(".")
    node = pgd
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value
    with pytest.raises(RecordError) as info:
        validate_record(pgd)
    assert field in str(info.value)


def test_cw_record_rules(cw):
    validate_record(cw)
    bad = copy.deepcopy(cw)
    bad["cw"] = None
    with pytest.raises(RecordError, match="'cw' must be an object"):
        validate_record(bad)
    bad = copy.deepcopy(cw)
    bad["cw"]["success_rate"] = 2.0
    with pytest.raises(RecordError, match=r"cw\.success_rate"):
        validate_record(bad)
    undefined = copy.deepcopy(cw)  # no successful attack: statistics are nan, which is allowed
    undefined["cw"].update(median_l2=float("nan"), median_l2_ci95=[float("nan")] * 2, mean_l2=float("nan"))
    del undefined["cw"]["l2_per_image"]  # the distances would contradict the nan median
    validate_record(undefined)
    infinite = copy.deepcopy(cw)
    infinite["cw"].update(median_l2=float("inf"), median_l2_ci95=[0.4, float("inf")])
    del infinite["cw"]["l2_per_image"]
    validate_record(infinite)
    bad = copy.deepcopy(cw)
    bad["eps_results"] = [{"attack": "pgd"}]
    with pytest.raises(RecordError, match="must be empty for a cw record"):
        validate_record(bad)


def test_cw_per_image_distances(cw):
    k = cw["cw"]["n_clean_correct"]
    assert len(cw["cw"]["l2_per_image"]) == k
    older = copy.deepcopy(cw)  # records made before the field existed stay valid
    del older["cw"]["l2_per_image"]
    validate_record(older)
    unbroken = copy.deepcopy(cw)  # most images never broken: the median is inf
    unbroken["cw"].update(
        l2_per_image=[0.3] * (k // 3) + [float("inf")] * (k - k // 3), median_l2=float("inf")
    )
    unbroken["cw"]["median_l2_ci95"] = [0.3, float("inf")]
    validate_record(unbroken)
    for l2, problem in (
        (cw["cw"]["l2_per_image"][:-1], "must be a list of cw.n_clean_correct"),
        ([-0.1, *cw["cw"]["l2_per_image"][1:]], "numbers >= 0"),
        ([float("nan"), *cw["cw"]["l2_per_image"][1:]], "numbers >= 0"),
        ([2 * v for v in cw["cw"]["l2_per_image"]], "not cw.median_l2"),
    ):
        bad = copy.deepcopy(cw)
        bad["cw"]["l2_per_image"] = l2
        with pytest.raises(RecordError, match=problem):
            validate_record(bad)
    empty = copy.deepcopy(cw)  # no clean-correct image, yet a median: contradictory
    empty["cw"].update(l2_per_image=[], n_clean_correct=0)
    with pytest.raises(RecordError, match="empty exactly when"):
        validate_record(empty)
    undefined = copy.deepcopy(cw)  # distances, yet no median: contradictory
    undefined["cw"].update(median_l2=float("nan"), median_l2_ci95=[float("nan")] * 2)
    with pytest.raises(RecordError, match="empty exactly when"):
        validate_record(undefined)


def test_apgd_entries_account_for_every_image_they_attacked(pgd):
    apgd = copy.deepcopy(pgd)
    apgd["attack"] = "apgd"
    apgd["run_id"] = apgd["run_id"].replace("__pgd__", "__apgd__")
    entry = apgd["eps_results"][-1]
    apgd["eps_results"] = [{**entry, "attack": "apgd", "attacked": entry["robust"] + 3}]
    apgd["eps_results"][0]["broken"] = {"apgd-ce": 2, "apgd-t": 1}
    apgd["config_hash"] = config_hash(apgd["config"])
    validate_record(apgd)
    apgd["eps_results"][0]["broken"]["apgd-t"] = 0
    with pytest.raises(RecordError, match=r"broken.*attacked .* != robust"):
        validate_record(apgd)
    del apgd["eps_results"][0]["attacked"]
    with pytest.raises(RecordError, match="attacked"):
        validate_record(apgd)


def test_record_error_is_a_user_error_and_value_error():
    assert issubclass(RecordError, UserError)
    assert issubclass(RecordError, ValueError)
    with pytest.raises(RecordError, match="JSON object"):
        validate_record([])


def test_make_run_id_is_filesystem_safe():
    assert make_run_id("MobileNetV1-0.50-32px", "pgd-at", "pgd", "cifar10-jpeg", 0) == (
        "MobileNetV1-0.50-32px__pgd-at__pgd__cifar10-jpeg__s0"
    )
    run_id = make_run_id("Mobile Net/v1__x", "standard", "cw", "my data:set", 12)
    assert run_id == "Mobile-Net-v1-x__standard__cw__my-data-set__s12"
    assert run_id.count("__") == 4
    with pytest.raises(UserError, match="seed"):
        make_run_id("m", "standard", "cw", "d", -1)
    with pytest.raises(UserError, match="model name"):
        make_run_id("///", "standard", "cw", "d", 0)


def test_config_hash_is_canonical():
    a = {"b": 1, "a": {"y": [1, 2], "x": 0.1}}
    b = {"a": {"x": 0.1, "y": [1, 2]}, "b": 1}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "b": 2})
    assert len(config_hash(a)) == 64


def test_write_read_roundtrip(tmp_path, study):
    paths = [write_record(r, tmp_path / "runs") for r in study]
    assert [p.name for p in paths] == [f"{r.run_id}.json" for r in study]
    text = paths[0].read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "attack"')
    assert json.loads(text) == study[0].to_dict()
    loaded = load_records(tmp_path / "runs")
    assert loaded == sorted(study, key=lambda r: r.run_id)


def test_atomic_write_leaves_no_temp_file(tmp_path, pgd_record):
    runs = tmp_path / "runs"
    write_record(pgd_record, runs)
    write_record(pgd_record, runs)  # overwrite in place
    assert sorted(p.name for p in runs.iterdir()) == [f"{pgd_record.run_id}.json"]


def test_failed_write_keeps_old_file_and_cleans_up(tmp_path, pgd_record, monkeypatch):
    runs = tmp_path / "runs"
    target = write_record(pgd_record, runs)
    before = target.read_bytes()
    changed = replace(pgd_record, latency_ms_cpu_b1=99.0)

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_record(changed, runs)
    assert target.read_bytes() == before
    assert sorted(p.name for p in runs.iterdir()) == [target.name]


def test_invalid_record_is_not_written(tmp_path, pgd_record):
    bad = replace(pgd_record, clean=replace(pgd_record.clean, accuracy=3.0))
    with pytest.raises(RecordError):
        write_record(bad, tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_corrupt_and_invalid_files_are_skipped_with_warning(tmp_path, study):
    runs = tmp_path / "runs"
    for r in study[:3]:
        write_record(r, runs)
    good = (runs / f"{study[0].run_id}.json").read_text()
    half = runs / f"{study[3].run_id}.json"
    half.write_text(good[: len(good) // 2])
    invalid = study[4].to_dict()
    invalid["clean"]["accuracy"] = 7
    (runs / f"{study[4].run_id}.json").write_text(json.dumps(invalid))
    (runs / "renamed-copy.json").write_text(good)
    (runs / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.warns(RecordWarning) as caught:
        loaded = load_records(runs)
    assert [r.run_id for r in loaded] == sorted(r.run_id for r in study[:3])
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 4
    for name, reason in [
        (half.name, "unreadable JSON"),
        (f"{study[4].run_id}.json", "clean.accuracy"),
        ("renamed-copy.json", "does not match run_id"),
        ("binary.json", "unreadable"),
    ]:
        assert any(name in m and reason in m for m in messages), (name, messages)


def test_temp_files_and_missing_dir_are_ignored_silently(tmp_path, pgd_record):
    assert load_records(tmp_path / "nope") == []
    runs = tmp_path / "runs"
    write_record(pgd_record, runs)
    (runs / f".{pgd_record.run_id}.123.abcd.tmp").write_text("{half")
    (runs / ".hidden.json").write_text("{half")
    (runs / "notes.txt").write_text("hello")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_records(runs) == [pgd_record]


def _hammer(runs_dir: str, worker: int, records: list[RunRecord], rounds: int) -> None:
    for i in range(rounds):
        # Same run id, different content per writer.
        write_record(replace(records[i % len(records)], latency_ms_cpu_b1=worker + i / 1000), runs_dir)


def test_concurrent_writers_leave_only_valid_json(tmp_path, study):
    runs = tmp_path / "runs"
    runs.mkdir()
    ids = sorted({r.run_id for r in study})
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_hammer, args=(str(runs), w, study, 60)) for w in range(2)]
    for p in procs:
        p.start()
    # Read while they write: a reader must never see a partial file.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecordWarning)
        while any(p.is_alive() for p in procs):
            for record in load_records(runs):
                assert record.run_id in ids
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert sorted(p.name for p in runs.iterdir()) == sorted(f"{i}.json" for i in ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecordWarning)
        assert len(load_records(runs)) == len(ids)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 13, 1001])
def test_mask_roundtrip_odd_lengths(n):
    mask = np.random.default_rng(n).random(n) < 0.4
    encoded = encode_mask(mask)
    assert len(base64.b64decode(encoded)) == (n + 7) // 8
    np.testing.assert_array_equal(decode_mask(encoded, n), mask)


@given(st.lists(st.booleans(), max_size=80))
def test_mask_roundtrip_property(bits):
    np.testing.assert_array_equal(decode_mask(encode_mask(bits), len(bits)), np.array(bits, dtype=bool))


def test_mask_bit_order_is_little_endian():
    # Sample 0 is the lowest bit of byte 0: [T, F, F, F, F, F, F, F, F, T] -> bytes 0x01, 0x02.
    assert encode_mask([True] + [False] * 8 + [True]) == "AQI="


def test_mask_accepts_torch_tensor():
    torch = pytest.importorskip("torch")
    mask = torch.tensor([True, False, True, True, False])
    np.testing.assert_array_equal(decode_mask(encode_mask(mask), 5), mask.numpy())


def test_mask_decode_rejects_mismatches():
    encoded = encode_mask([True] * 9)
    with pytest.raises(RecordError, match="bytes"):
        decode_mask(encoded, 17)
    with pytest.raises(RecordError, match="beyond n=10"):
        decode_mask(encode_mask([True] * 12), 10)
    with pytest.raises(UserError):
        encode_mask(np.array([0, 2, 1]))
    with pytest.raises(UserError):
        encode_mask(np.zeros((2, 2), dtype=bool))


def test_written_file_is_what_readers_get(tmp_path, pgd_record):
    path: Path = write_record(pgd_record, tmp_path)
    assert json.loads(path.read_text()) == pgd_record.to_dict()


def _digest(name: str, regime: str) -> str:
    return config_hash({"w": [name, regime]})[:16]


def _with_weights(study: list[RunRecord]) -> list[RunRecord]:
    """The study's records with weight digests as the study writes them: one per (model, regime)."""
    return [
        replace(
            r,
            model=replace(
                r.model,
                weights=_digest(r.model.name, r.regime),
                parent_weights=None if r.regime == "standard" else _digest(r.model.name, "standard"),
            ),
        )
        for r in study
    ]


def _swap(records: list[RunRecord], victim: RunRecord, **model: str | None) -> list[RunRecord]:
    return [replace(r, model=replace(r.model, **model)) if r is victim else r for r in records]


def test_records_of_one_model_agree_on_weights(study):
    records = _with_weights(study)
    for r in records:
        validate_record(r.to_dict())
    check_combinable(records)
    check_combinable(study)  # records made before digests existed all lack them: combinable


def test_records_of_different_weights_in_one_row_are_refused(study):
    records = _with_weights(study)
    victim = next(r for r in records if r.regime == "standard" and r.attack == "cw")
    records = _swap(records, victim, weights="f" * 16)
    with pytest.raises(UserError, match=re.escape(victim.run_id) + ".*different weights"):
        check_combinable(records)


def test_fine_tuned_records_must_start_from_the_standard_weights(study):
    records = _with_weights(study)
    victim = next(r for r in records if r.regime == "pgd-at")
    records = [
        replace(r, model=replace(r.model, parent_weights="e" * 16))
        if r.model.name == victim.model.name and r.regime == "pgd-at"
        else r
        for r in records
    ]
    with pytest.raises(UserError, match="fine-tuned from weights " + "e" * 16):
        check_combinable(records)


def test_a_row_mixing_records_with_and_without_digests_is_refused(study):
    records = _with_weights(study)
    victim = next(r for r in records if r.regime == "standard" and r.attack == "pgd")
    records = _swap(records, victim, weights=None)
    with pytest.raises(UserError, match="different weights or images"):
        check_combinable(records)


def _ordered(record: RunRecord, order: str) -> RunRecord:
    return replace(record, config={**record.config, "eval": {"order": order}})


def test_a_row_mixing_evaluation_orders_is_refused(study):
    records = [_ordered(r, "stratified") for r in _with_weights(study)]
    victim = next(r for r in records if r.regime == "pgd-at" and r.attack == "fgsm")
    records = [_ordered(r, "dataset") if r is victim else r for r in records]
    with pytest.raises(UserError, match=re.escape("eval.order dataset vs stratified")):
        check_combinable(records)


def _strict_json(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def _with_an_infinite_distance(study: list[RunRecord]) -> RunRecord:
    record = next(r for r in study if r.attack == "cw")
    l2 = (*record.cw.l2_per_image[:-1], float("inf"))  # the largest distance: the median stays
    return replace(record, cw=replace(record.cw, l2_per_image=l2))


def test_records_with_infinite_distances_are_standard_json(tmp_path, study):
    record = _with_an_infinite_distance(study)
    path = write_record(record, tmp_path / "runs")
    assert _strict_json(path.read_text())["cw"]["l2_per_image"][-1] == "Infinity"
    (loaded,) = load_records(tmp_path / "runs")
    assert loaded.cw.l2_per_image[-1] == float("inf") and loaded == record


def test_records_with_bare_infinity_tokens_load_and_are_migrated(tmp_path, study):
    record = _with_an_infinite_distance(study)
    runs = tmp_path / "runs"
    runs.mkdir()
    legacy = runs / f"{record.run_id}.json"
    # bare Infinity, as records once were
    legacy.write_text(json.dumps(record.to_dict(), indent=2, sort_keys=True))
    assert load_records(runs) == [record]
    assert migrate_runs([runs]) == [legacy]
    assert _strict_json(legacy.read_text())["cw"]["l2_per_image"][-1] == "Infinity"
    assert load_records(runs) == [record] and migrate_runs([runs]) == []


def test_written_records_are_readable_by_others_as_open_would_make_them(tmp_path, pgd_record):
    umask = os.umask(0)
    os.umask(umask)
    path = write_record(pgd_record, tmp_path / "runs")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
