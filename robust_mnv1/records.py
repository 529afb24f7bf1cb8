"""Run records: one JSON file per (model, regime, attack, data, seed) under ``results/runs/``.

The study pipeline builds a record dict (schema version 1, documented in the README) and
calls :func:`write_record`; the leaderboard reads them back with :func:`load_records`.
Records are validated on both sides by :func:`validate_record`, with hand-written checks so
the schema has no extra dependency and every error names the offending field.

Robust masks are per-sample booleans over the first ``n`` images of the evaluation order
(:func:`robust_mnv1.evaluate.eval_order`, named by the record's ``config.eval.order``; the
dataset's own order in records without one), packed with ``np.packbits(mask, bitorder="little")``
(sample ``i`` is bit ``i % 8`` of byte ``i // 8``; unused high bits of the last byte are zero) and
base64-encoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from robust_mnv1.atomic import atomic_write_text
from robust_mnv1.errors import UserError

SCHEMA_VERSION = 1
REGIMES = ("standard", "pgd-at", "fast-at", "trades")
ATTACKS = ("fgsm", "pgd", "apgd", "cw")
EPS_ATTACKS = ("fgsm", "pgd", "apgd")
NORMS = ("linf", "l2")
ENV_KEYS = ("device", "torch", "torchvision", "foolbox", "art", "python", "git_commit", "platform")

_SAFE_PART = re.compile(r"[^A-Za-z0-9.+-]+")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_WEIGHTS = re.compile(r"[0-9a-f]{16}")
# eps_255 is stored for display; it only has to agree with eps to well under one 1/255 step.
_EPS_255_TOL = 1e-2
# accuracy is a stored copy of robust / n; anything beyond float round-off means a bookkeeping bug.
_ACC_TOL = 1e-9


class RecordError(UserError):
    """A run record is malformed; the message names the bad field."""


class RecordWarning(UserWarning):
    """A record file in the runs directory was skipped because it could not be read or validated."""


def encode_mask(mask: Any) -> str:
    """Pack a 1-D boolean mask (numpy array, list or torch tensor) into a base64 string."""
    if hasattr(mask, "detach"):  # torch tensor, without importing torch here
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim != 1:
        raise UserError(f"encode_mask needs a 1-D mask, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise UserError("encode_mask needs a boolean (or 0/1) mask")
        arr = arr.astype(bool)
    return base64.b64encode(np.packbits(arr, bitorder="little").tobytes()).decode("ascii")


def decode_mask(s: str, n: int) -> np.ndarray:
    """Inverse of :func:`encode_mask`: the first ``n`` samples as a boolean array.

    Raises :class:`RecordError` when the string is not base64, has the wrong length for ``n``
    or sets padding bits beyond ``n`` (signs of a mask that belongs to another ``n``).
    """
    if not isinstance(s, str):
        raise RecordError(f"robust mask must be a base64 string, got {type(s).__name__}")
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise RecordError(f"robust mask is not valid base64 ({exc})") from None
    if len(raw) != (n + 7) // 8:
        raise RecordError(f"robust mask holds {len(raw)} bytes, expected {(n + 7) // 8} for n={n}")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little").astype(bool)
    if bits[n:].any():
        raise RecordError(f"robust mask sets bits beyond n={n}")
    return bits[:n]


def make_run_id(model_name: str, regime: str, attack: str, data_key: str, seed: int) -> str:
    """Filesystem-safe id ``<model>__<regime>__<attack>__<data>__s<seed>``.

    Characters outside ``[A-Za-z0-9.+-]`` become ``-`` so ``__`` only ever separates fields.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    parts = []
    for label, part in (
        ("model name", model_name),
        ("regime", regime),
        ("attack", attack),
        ("data key", data_key),
    ):
        if not isinstance(part, str):
            raise UserError(f"{label} must be a string, got {part!r}")
        safe = _SAFE_PART.sub("-", part).strip("-.")
        if not safe:
            raise UserError(f"{label} {part!r} has no filesystem-safe characters; use letters, digits, . + -")
        parts.append(safe)
    return "__".join([*parts, f"s{seed}"])


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON (sorted keys, no spaces) of ``config``."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# -- validation ---------------------------------------------------------------------------------


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
    _validate_env(d)
    created = _str(d, "created")
    try:
        # fromisoformat only accepts a trailing "Z" from Python 3.11 on.
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise _fail("created", f"must be an ISO 8601 timestamp, got {created!r}") from None


# -- storage ------------------------------------------------------------------------------------


# Standard JSON has no infinities or NaN (an unbroken image's C&W distance is infinite): they are
# written as these strings and read back as floats. Records written before this, with bare
# Infinity/NaN tokens, still load; rewrite_strict converts them.
_SPECIAL = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _to_strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {k: _to_strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_strict(v) for v in value]
    return value


def _from_strict(value: Any) -> Any:
    if isinstance(value, str) and value in _SPECIAL:
        return _SPECIAL[value]
    if isinstance(value, dict):
        return {k: _from_strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_strict(v) for v in value]
    return value


def dumps_record(record: Mapping[str, Any]) -> str:
    """A record as the standard JSON text :func:`write_record` stores."""
    return json.dumps(_to_strict(record), indent=2, sort_keys=True, allow_nan=False) + "\n"


def parse_record(text: str) -> Any:
    """A record's JSON text as Python, its encoded infinities and NaNs back as floats."""
    return _from_strict(json.loads(text))


def rewrite_strict(runs_dir: str | Path) -> list[Path]:
    """Rewrite the records of ``runs_dir`` that use bare Infinity/NaN tokens as standard JSON (same
    values, nothing recomputed); returns the rewritten paths."""
    done = []
    for path, record, error in _json_files(runs_dir):
        if error is not None:
            continue
        text = path.read_text(encoding="utf-8")
        if text != dumps_record(record):
            atomic_write_text(path, dumps_record(record))
            done.append(path)
    return done


def write_record(record: Mapping[str, Any], runs_dir: str | Path) -> Path:
    """Validate ``record`` and write it atomically to ``runs_dir/<run_id>.json``.

    See :func:`robust_mnv1.atomic.atomic_write`: a reader or a concurrent writer of the same
    run id sees a complete old or new file, never a mix; temp names start with ``.`` and end
    in ``.tmp``, so :func:`load_records` ignores them.
    """
    validate_record(record)
    return atomic_write_text(Path(runs_dir) / f"{record['run_id']}.json", dumps_record(record))


def _skip(path: Path, reason: str) -> None:
    warnings.warn(f"skipping record {path}: {reason}", RecordWarning, stacklevel=3)


def _json_files(directory: str | Path) -> Iterator[tuple[Path, Any, str | None]]:
    """``(path, parsed JSON, None)`` of each ``*.json`` file in ``directory``, sorted by name, or
    ``(path, None, reason)`` for a file that cannot be read or parsed.

    A missing directory yields nothing; hidden files (temp files of in-flight writes) are never
    looked at.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            yield path, parse_record(path.read_text(encoding="utf-8")), None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield path, None, f"unreadable JSON ({exc})"


def read_records(runs_dir: str | Path) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """``(records, invalid)``: every valid ``*.json`` record in ``runs_dir`` sorted by file name, and
    ``(path, reason)`` for each file that cannot be read, is not JSON, fails validation or is not
    named ``<run_id>.json``. A missing directory gives two empty lists; temp files of in-flight
    writes (``.*.tmp``) are never looked at."""
    records, invalid = [], []
    for path, record, error in _json_files(runs_dir):
        if error is not None:
            invalid.append((path, error))
            continue
        try:
            validate_record(record)
        except RecordError as exc:
            invalid.append((path, str(exc)))
            continue
        if path.stem != record["run_id"]:
            # A renamed copy would otherwise count the same run twice.
            invalid.append((path, f"file name does not match run_id {record['run_id']!r}"))
            continue
        records.append(record)
    return records, sorted(invalid)


def load_records(runs_dir: str | Path) -> list[dict[str, Any]]:
    """The valid records of :func:`read_records`; each invalid file is skipped with a
    :class:`RecordWarning` naming it."""
    records, invalid = read_records(runs_dir)
    for path, reason in invalid:
        _skip(path, reason)
    return records


def check_combinable(records: Iterable[Mapping[str, Any]]) -> None:
    """Refuse records of one (data, model, regime, seed) that did not evaluate the same weights on
    the same images, and fine-tuned records whose parent is not the standard records' model.

    The leaderboard ANDs the per-image masks of a row's records and sets each fine-tuned row against
    its standard row; that only means something when the records share one trained model (the same
    ``model.weights`` digest, or all lack it, as records made before digests existed do) and one
    evaluation order (``config.eval.order``; ``dataset`` when absent).
    """
    seen: dict[tuple[Any, ...], tuple[Any, str, str]] = {}
    for r in records:
        key = (r["data"]["key"], r["model"]["name"], r["regime"], r["seed"])
        order = r["config"].get("eval", {}).get("order", "dataset")
        mine = (r["model"].get("weights"), order)
        first = seen.setdefault(key, (*mine, r["run_id"]))
        if first[:2] != mine:
            raise UserError(
                f"{first[2]} and {r['run_id']} evaluated different weights or images (weights "
                f"{first[0]} vs {mine[0]}, eval.order {first[1]} vs {order}); delete that model's records "
                "and rerun its study unit"
            )
    for r in records:
        parent = r["model"].get("parent_weights")
        standard = seen.get((r["data"]["key"], r["model"]["name"], "standard", r["seed"]))
        if parent is not None and standard is not None and standard[0] != parent:
            raise UserError(
                f"{r['run_id']} was fine-tuned from weights {parent}, but {standard[2]} evaluated "
                f"{standard[0]}; delete that model's records and rerun its study unit"
            )


PROFILE_KEYS = ("model", "batch", "env", "kinds")
PROFILE_KIND_KEYS = ("kind", "time_ms", "time_%", "mult_adds_%", "time_per_mult_add_vs_avg")


def _profile_row_ok(row: Any) -> bool:
    return (
        isinstance(row, dict)
        and all(k in row for k in PROFILE_KIND_KEYS)
        and all(isinstance(row[k], int | float) for k in PROFILE_KIND_KEYS[1:])
    )


def load_profiles(profiles_dir: str | Path) -> list[dict[str, Any]]:
    """Read the per-layer latency records (``python -m robust_mnv1.cost profile=true profile_out=DIR``).

    Sorted by file name; a missing directory gives an empty list; malformed files are skipped
    with a :class:`RecordWarning`, as :func:`load_records` does.
    """
    profiles = []
    for path, record, error in _json_files(profiles_dir):
        if error is not None:
            _skip(path, error)
            continue
        if not (
            isinstance(record, dict)
            and record.get("kind") == "layer-profile"
            and all(k in record for k in PROFILE_KEYS)
            and isinstance(record["kinds"], list)
            and all(_profile_row_ok(row) for row in record["kinds"])
        ):
            _skip(path, "not a layer-profile record")
            continue
        profiles.append(record)
    return profiles
