"""Validation of a run record: hand-written checks, so the schema needs no extra dependency and every
error names the offending field (:class:`~robust_mnv1.records.schema.RecordError`)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

from robust_mnv1.records.schema import (
    ATTACKS,
    ENV_KEYS,
    EPS_ATTACKS,
    NORMS,
    REGIMES,
    SCHEMA_VERSION,
    RecordError,
    config_hash,
    decode_mask,
    make_run_id,
)

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_WEIGHTS = re.compile(r"[0-9a-f]{16}")
# eps_255 is stored for display; it only has to agree with eps to well under one 1/255 step.
_EPS_255_TOL = 1e-2
# accuracy is a stored copy of robust / n; anything beyond float round-off means a bookkeeping bug.
_ACC_TOL = 1e-9


def _fail(path: str, problem: str) -> RecordError:
    return RecordError(f"record field '{path}' {problem}")


def _get(d: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in d:
        raise RecordError(f"record is missing field '{path}{key}'")
    return d[key]


def _mapping(d: Mapping[str, Any], key: str, path: str = "") -> Mapping[str, Any]:
    value = _get(d, key, path)
    if not isinstance(value, Mapping):
        raise _fail(path + key, f"must be an object, got {type(value).__name__}")
    return value


def _str(d: Mapping[str, Any], key: str, path: str = "", *, nullable: bool = False) -> str | None:
    value = _get(d, key, path)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value:
        raise _fail(path + key, f"must be a non-empty string, got {value!r}")
    return value


def _int(d: Mapping[str, Any], key: str, path: str = "", *, minimum: int = 0) -> int:
    value = _get(d, key, path)
    # bool is an int subclass, but true/false in a count field is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path + key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise _fail(path + key, f"must be >= {minimum}, got {value}")
    return value


def _num(
    d: Mapping[str, Any],
    key: str,
    path: str = "",
    *,
    lo: float = -math.inf,
    hi: float = math.inf,
    nullable: bool = False,
    nan_ok: bool = False,
) -> float | None:
    value = _get(d, key, path)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path + key, f"must be a number, got {value!r}")
    if math.isnan(value):
        if nan_ok:
            return math.nan
        raise _fail(path + key, f"must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise _fail(path + key, f"must be in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _choice(d: Mapping[str, Any], key: str, options: tuple[str, ...], path: str = "") -> str:
    value = _get(d, key, path)
    if value not in options:
        raise _fail(path + key, f"must be one of {', '.join(options)}; got {value!r}")
    return value


def _interval(
    d: Mapping[str, Any], key: str, path: str = "", *, lo: float, hi: float, nan_ok: bool = False
) -> None:
    value = _get(d, key, path)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _fail(path + key, f"must be a [lo, hi] pair, got {value!r}")
    if nan_ok and all(isinstance(b, float) and math.isnan(b) for b in value):
        return
    for bound in value:
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not lo <= bound <= hi:
            raise _fail(path + key, f"must hold two numbers in [{lo:g}, {hi:g}], got {value!r}")
    if value[0] > value[1]:
        raise _fail(path + key, f"must have lo <= hi, got {value!r}")


def _accuracy(d: Mapping[str, Any], k: int, n: int, path: str) -> None:
    acc = _num(d, "accuracy", path, lo=0.0, hi=1.0)
    if n > 0 and abs(acc - k / n) > _ACC_TOL:
        raise _fail(path + "accuracy", f"is {acc!r} but the counts give {k}/{n} = {k / n!r}")
    _interval(d, "ci95", path, lo=0.0, hi=1.0)


def _validate_model(record: Mapping[str, Any]) -> None:
    model = _mapping(record, "model")
    _str(model, "name", "model.")
    _num(model, "alpha", "model.", lo=0.0)
    _num(model, "rho", "model.", lo=0.0)
    _str(model, "profile", "model.")
    _int(model, "input_resolution", "model.", minimum=1)
    _int(model, "params", "model.", minimum=1)
    _int(model, "macs", "model.", minimum=1)
    # Digests of the evaluated weights and, for fine-tuned models, of the parent's (optional: records
    # written before they were recorded lack them).
    for key in ("weights", "parent_weights"):
        if key in model and not _WEIGHTS.fullmatch(str(model[key])):
            raise _fail(f"model.{key}", f"must be 16 lowercase hex digits, got {model[key]!r}")


def _validate_data(record: Mapping[str, Any]) -> None:
    data = _mapping(record, "data")
    for key in ("name", "label", "key"):
        _str(data, key, "data.")
    _int(data, "n_train", "data.")
    _int(data, "n_test", "data.")


def _validate_clean(record: Mapping[str, Any]) -> tuple[int, int]:
    clean = _mapping(record, "clean")
    n = _int(clean, "n", "clean.")
    correct = _int(clean, "correct", "clean.")
    if correct > n:
        raise _fail("clean.correct", f"is {correct}, more than clean.n = {n}")
    _accuracy(clean, correct, n, "clean.")
    if "correct_mask" in clean:  # records made before masks were kept lack it
        try:
            mask = decode_mask(clean["correct_mask"], n)
        except RecordError as e:
            raise _fail("clean.correct_mask", str(e)) from None
        if int(mask.sum()) != correct:
            raise _fail(
                "clean.correct_mask", f"marks {int(mask.sum())} images, not clean.correct = {correct}"
            )
    return correct, n


def _validate_eps_results(record: Mapping[str, Any], attack: str, clean: tuple[int, int]) -> None:
    results = _get(record, "eps_results", "")
    if not isinstance(results, list):
        raise _fail("eps_results", f"must be a list, got {type(results).__name__}")
    if attack == "cw" and results:
        raise _fail("eps_results", "must be empty for a cw record (C&W results go in 'cw')")
    if attack != "cw" and not results:
        raise _fail("eps_results", f"must not be empty for a {attack} record")
    clean_correct, clean_n = clean
    for i, entry in enumerate(results):
        path = f"eps_results[{i}]."
        if not isinstance(entry, Mapping):
            raise _fail(path[:-1], f"must be an object, got {type(entry).__name__}")
        _choice(entry, "attack", EPS_ATTACKS, path)
        _choice(entry, "norm", NORMS, path)
        eps = _num(entry, "eps", path, lo=0.0)
        eps_255 = _num(entry, "eps_255", path, lo=0.0)
        if abs(eps * 255.0 - eps_255) > _EPS_255_TOL:
            raise _fail(path + "eps_255", f"is {eps_255!r} but eps * 255 = {eps * 255.0!r}")
        _str(entry, "loss", path)
        n = _int(entry, "n", path)
        robust = _int(entry, "robust", path)
        if robust > n:
            raise _fail(path + "robust", f"is {robust}, more than n = {n}")
        if n == clean_n and robust > clean_correct:
            raise _fail(path + "robust", f"is {robust}, more than the {clean_correct} clean-correct images")
        _accuracy(entry, robust, n, path)
        mask = decode_mask(_str(entry, "robust_mask", path), n)
        if int(mask.sum()) != robust:
            raise _fail(path + "robust_mask", f"marks {int(mask.sum())} robust images but robust = {robust}")
        if entry["attack"] == "apgd":
            _validate_apgd_counts(entry, robust, path)


def _validate_apgd_counts(entry: Mapping[str, Any], robust: int, path: str) -> None:
    """An APGD entry attacks the images FGSM and PGD left robust (``attacked``); its stages broke
    ``broken`` of them, one after the other, and the rest are ``robust``."""
    attacked = _int(entry, "attacked", path)
    broken = _mapping(entry, "broken", path)
    counts = [_int(broken, stage, path + "broken.") for stage in broken]
    if attacked - sum(counts) != robust:
        raise _fail(path + "broken", f"attacked {attacked} - broken {sum(counts)} != robust = {robust}")


def _validate_cw(record: Mapping[str, Any], attack: str) -> None:
    cw = _get(record, "cw", "")
    if attack != "cw":
        if cw is not None:
            raise _fail("cw", f"must be null for a {attack} record")
        return
    if not isinstance(cw, Mapping):
        raise _fail("cw", f"must be an object for a cw record, got {cw!r}")
    n = _int(cw, "n", "cw.")
    n_clean_correct = _int(cw, "n_clean_correct", "cw.")
    if n_clean_correct > n:
        raise _fail("cw.n_clean_correct", f"is {n_clean_correct}, more than cw.n = {n}")
    # inf is legal: the median distance is infinite when most attacks failed. nan means undefined:
    # no clean-correct image (median, CI) or no successful attack (mean over successes).
    _num(cw, "median_l2", "cw.", lo=0.0, nan_ok=True)
    _interval(cw, "median_l2_ci95", "cw.", lo=0.0, hi=math.inf, nan_ok=True)
    _num(cw, "mean_l2", "cw.", lo=0.0, nan_ok=True)
    _num(cw, "success_rate", "cw.", lo=0.0, hi=1.0)
    if "l2_per_image" in cw:  # optional: records made before it existed lack it
        _validate_l2_per_image(cw, n_clean_correct)
    robust_at = _get(cw, "robust_at", "cw.")
    if not isinstance(robust_at, list):
        raise _fail("cw.robust_at", f"must be a list, got {type(robust_at).__name__}")
    for i, entry in enumerate(robust_at):
        path = f"cw.robust_at[{i}]."
        if not isinstance(entry, Mapping):
            raise _fail(path[:-1], f"must be an object, got {type(entry).__name__}")
        _num(entry, "l2", path, lo=0.0)
        _num(entry, "accuracy", path, lo=0.0, hi=1.0)
        _interval(entry, "ci95", path, lo=0.0, hi=1.0)
    _int(cw, "steps", "cw.", minimum=1)
    _int(cw, "binary_search_steps", "cw.", minimum=1)


def _validate_l2_per_image(cw: Mapping[str, Any], n_clean_correct: int) -> None:
    l2 = cw["l2_per_image"]
    if not isinstance(l2, list) or len(l2) != n_clean_correct:
        raise _fail("cw.l2_per_image", f"must be a list of cw.n_clean_correct = {n_clean_correct} distances")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in l2):
        raise _fail("cw.l2_per_image", "must hold numbers >= 0 (inf where C&W never succeeded)")
    median = cw["median_l2"]
    if (not l2) != math.isnan(median):
        raise _fail("cw.l2_per_image", f"must be empty exactly when cw.median_l2 is nan, got {median!r}")
    # The distances are rounded to 6 significant digits; their median must still be the record's.
    if l2 and not math.isclose(float(np.median(l2)), median, rel_tol=1e-5):
        raise _fail("cw.l2_per_image", f"has median {float(np.median(l2))!r}, not cw.median_l2 = {median!r}")


def _validate_sanity(record: Mapping[str, Any]) -> None:
    sanity = _mapping(record, "sanity")
    passed = _get(sanity, "passed", "sanity.")
    if not isinstance(passed, bool):
        raise _fail("sanity.passed", f"must be true or false, got {passed!r}")
    flags = _get(sanity, "flags", "sanity.")
    if not isinstance(flags, list) or not all(isinstance(f, str) and f for f in flags):
        raise _fail("sanity.flags", f"must be a list of flag names, got {flags!r}")
    reports = _get(sanity, "reports", "sanity.")
    if not isinstance(reports, list):
        raise _fail("sanity.reports", f"must be a list, got {type(reports).__name__}")
    for i, report in enumerate(reports):
        if not isinstance(report, Mapping):
            raise _fail(f"sanity.reports[{i}]", f"must be an object, got {type(report).__name__}")
        _str(report, "name", f"sanity.reports[{i}].")
        if not isinstance(_get(report, "flagged", f"sanity.reports[{i}]."), bool):
            raise _fail(f"sanity.reports[{i}].flagged", "must be true or false")


def _validate_env(record: Mapping[str, Any]) -> None:
    env = _mapping(record, "env")
    for key in ENV_KEYS:
        # device and torch are always known; the others can be missing on an odd install.
        _str(env, key, "env.", nullable=key not in ("device", "torch"))


def validate_record(d: Mapping[str, Any]) -> None:
    """Check a record against schema version 1; raise :class:`RecordError` naming the bad field.

    Beyond keys and types it checks internal consistency: accuracies equal their counts,
    masks decode to the stored robust counts, ``run_id`` matches the record's identity and
    ``config_hash`` matches ``config``.
    """
    if not isinstance(d, Mapping):
        raise RecordError(f"record must be a JSON object, got {type(d).__name__}")
    version = _get(d, "schema_version", "")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise _fail("schema_version", f"must be {SCHEMA_VERSION}, got {version!r}")
    run_id = _str(d, "run_id")
    _validate_model(d)
    regime = _choice(d, "regime", REGIMES)
    attack = _choice(d, "attack", ATTACKS)
    _validate_data(d)
    seed = _int(d, "seed")
    expected_id = make_run_id(d["model"]["name"], regime, attack, d["data"]["key"], seed)
    if run_id != expected_id or not _RUN_ID.fullmatch(run_id):
        raise _fail("run_id", f"is {run_id!r}, expected {expected_id!r} (use make_run_id)")
    config = _mapping(d, "config")
    digest = _str(d, "config_hash")
    if not _SHA256.fullmatch(digest):
        raise _fail("config_hash", f"must be a lowercase sha256 hex digest, got {digest!r}")
    if digest != config_hash(config):
        raise _fail("config_hash", "does not match config (compute it with config_hash(config))")
    clean = _validate_clean(d)
    _validate_eps_results(d, attack, clean)
    _validate_cw(d, attack)
    _validate_sanity(d)
    timing = _mapping(d, "timing")
    for key in timing:
        _num(timing, key, "timing.", lo=0.0)
    _num(d, "latency_ms_cpu_b1", lo=0.0, nullable=True)
    if "memory" in d:
        memory = _mapping(d, "memory")
        for key in memory:
            _num(memory, key, "memory.", lo=0.0)
    _validate_env(d)
    created = _str(d, "created")
    try:
        # fromisoformat only accepts a trailing "Z" from Python 3.11 on.
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise _fail("created", f"must be an ISO 8601 timestamp, got {created!r}") from None
