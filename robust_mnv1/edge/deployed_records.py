"""Records of the deployed model: one deployed-robustness record per model, one transfer record per source.

``python -m robust_mnv1.deployed`` writes ``<results_dir>/deployed/<run_id>.json`` and
``python -m robust_mnv1.transfer`` writes ``<results_dir>/transfer/<run_id>.json``. Both are standard
JSON (:func:`robust_mnv1.records.store.dumps_record`), written atomically, and checked on both sides by
:func:`validate_deployed_record` and :func:`validate_transfer_record`: keys and types, and that every
stored number agrees with the per-image masks it was computed from (counts, accuracies, Wilson
intervals, the paired tests), so a record edited by hand or cut short is refused with the field named.

Masks are :func:`robust_mnv1.records.schema.encode_mask` strings over the images of the class-stratified
evaluation order (:func:`robust_mnv1.evaluation.protocol.eval_order`):
the whole test set for clean accuracy, its
first ``n`` images for the attacks. This module needs neither torch nor onnx, so the tables can be
regenerated from the records anywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from robust_mnv1.infra.atomic import atomic_write_text
from robust_mnv1.infra.errors import UserError
from robust_mnv1.records.intervals import wilson_ci
from robust_mnv1.records.schema import (
    REGIMES,
    RecordError,
    config_hash,
    decode_mask,
    encode_mask,
    make_run_id,
)
from robust_mnv1.records.store import dumps_record, parse_record
from robust_mnv1.report.paired import bootstrap, interval, mcnemar_exact

SCHEMA_VERSION = 1
DEPLOYED, TRANSFER = "deployed-robustness", "transfer-source"
# The engines a deployed record evaluates: the model as trained, and the two files an edge device runs.
ENGINES = ("pytorch fp32", "onnx fp32", "onnx int8")
VERDICTS = ("loses", "keeps", "gains", "no detectable difference")
# Level of the paired tests behind the verdicts, and the bootstrap of their difference's interval.
ALPHA = 0.05
N_BOOT = 2000
BOOT_SEED = 0
LATENCY_KEYS = ("median_ms", "p10_ms", "p90_ms", "iqr_ms")
_HEX = {"weights": re.compile(r"[0-9a-f]{16}"), "sha256": re.compile(r"[0-9a-f]{64}")}
# Stored floats are copies of what the masks give; anything beyond round-off is a bookkeeping error.
_TOL = 1e-9


def model_id(name: str, regime: str, seed: int) -> str:
    """How a transfer record names a model among its targets: ``<name> <regime> s<seed>``."""
    return f"{name} {regime} s{seed}"


def count_entry(mask: np.ndarray, key: str) -> dict[str, Any]:
    """``n``, the count ``key`` of true images, their share, its Wilson 95% interval and the mask
    (``<key>_mask``): the form of every accuracy in these records."""
    mask = np.asarray(mask, dtype=bool)
    n, k = len(mask), int(mask.sum())
    return {
        "n": n,
        key: k,
        "accuracy": k / n if n else 0.0,
        "ci95": list(wilson_ci(k, n)),
        f"{key}_mask": encode_mask(mask),
    }


def paired_comparison(
    reference: np.ndarray, other: np.ndarray, *, margin: float, what: str, seed: int = BOOT_SEED
) -> dict[str, Any]:
    """``other`` (int8) against ``reference`` (fp32), image by image, and the verdict it supports.

    McNemar's exact test on the images only one of them gets right decides ``loses`` or ``gains`` at
    :data:`ALPHA`. It cannot show that there is no difference; ``keeps`` needs the 95% bootstrap
    interval of the accuracy difference (images resampled, the pairing kept) to lie within
    ``±margin``. Anything else is ``no detectable difference``. ``what`` ends the statement (e.g.
    "robustness at 8/255 against examples crafted on fp32").
    """
    a, b = np.asarray(reference, dtype=bool), np.asarray(other, dtype=bool)
    n = len(a)
    diff = (int(b.sum()) - int(a.sum())) / n
    lo, hi = interval(bootstrap(lambda idx: b[idx].mean(1) - a[idx].mean(1), n, N_BOOT, seed))
    p = mcnemar_exact(b, a)
    out = {
        "n": n,
        "only_reference": int((a & ~b).sum()),
        "only_other": int((b & ~a).sum()),
        "difference": diff,
        "difference_ci95": [lo, hi],
        "mcnemar_p": p,
        "alpha": ALPHA,
        "equivalence_margin": margin,
    }
    out["verdict"] = verdict(out)
    detail = (
        f"{b.mean():.1%} vs {a.mean():.1%}, {100 * diff:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}], "
        f"McNemar p = {p:.2g}"
    )
    if out["verdict"] == "keeps":
        detail += f"; within ±{100 * margin:g} pp"
    head = "no detectable difference in" if out["verdict"] == VERDICTS[3] else f"int8 {out['verdict']}"
    out["statement"] = f"{head} {what} ({detail})"
    return out


def verdict(c: Mapping[str, Any]) -> str:
    """The verdict a comparison's p-value, difference and interval support (see :func:`paired_comparison`)."""
    if c["mcnemar_p"] < c["alpha"]:
        return "gains" if c["difference"] > 0 else "loses"
    lo, hi = c["difference_ci95"]
    m = c["equivalence_margin"]
    return "keeps" if -m <= lo and hi <= m else "no detectable difference"


# -- validation ---------------------------------------------------------------------------------


class _Check:
    """Field access for one record: every failed check is a :class:`RecordError` naming the field."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def fail(self, path: str, problem: str) -> RecordError:
        return RecordError(f"{self.kind} record: field '{path}' {problem}")

    def get(self, d: Any, key: str, where: str) -> tuple[Any, str]:
        path = f"{where}.{key}" if where else key
        if not isinstance(d, Mapping) or key not in d:
            raise RecordError(f"{self.kind} record: field '{path}' is missing")
        return d[key], path

    def obj(self, d: Any, key: str, where: str = "") -> Mapping[str, Any]:
        value, path = self.get(d, key, where)
        if not isinstance(value, Mapping):
            raise self.fail(path, f"must be an object, got {type(value).__name__}")
        return value

    def text(
        self, d: Any, key: str, where: str = "", *, null: bool = False, regex: re.Pattern | None = None
    ) -> Any:
        value, path = self.get(d, key, where)
        if value is None and null:
            return None
        if not isinstance(value, str) or not value or (regex is not None and not regex.fullmatch(value)):
            raise self.fail(path, f"must be a {'matching ' if regex else ''}non-empty string, got {value!r}")
        return value

    def count(self, d: Any, key: str, where: str = "", *, lo: int = 0) -> int:
        value, path = self.get(d, key, where)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.fail(path, f"must be an integer >= {lo}, got {value!r}")
        return value

    def num(self, d: Any, key: str, where: str = "", *, lo: float = -math.inf, hi: float = math.inf) -> float:
        value, path = self.get(d, key, where)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise self.fail(path, f"must be a number in [{lo:g}, {hi:g}], got {value!r}")
        return float(value)

    def same(self, path: str, stored: Any, expected: Any, why: str) -> None:
        ok = (
            math.isclose(stored, expected, rel_tol=_TOL, abs_tol=_TOL)
            if isinstance(expected, float)
            else stored == expected
        )
        if not ok:
            raise self.fail(path, f"is {stored!r} but {why} gives {expected!r}")

    def entry(self, d: Any, key: str, where: str, count: str, n: int) -> np.ndarray:
        """An accuracy over ``n`` images (:func:`count_entry`); returns its decoded mask."""
        e = self.obj(d, key, where)
        path = f"{where}.{key}" if where else key
        self.same(f"{path}.n", self.count(e, "n", path), n, "the images evaluated")
        k = self.count(e, count, path)
        try:
            mask = decode_mask(self.text(e, f"{count}_mask", path), n)
        except RecordError as exc:
            raise self.fail(f"{path}.{count}_mask", str(exc)) from None
        self.same(f"{path}.{count}", k, int(mask.sum()), "the mask")
        self.same(f"{path}.accuracy", self.num(e, "accuracy", path), k / n if n else 0.0, f"{count}/n")
        ci, _ = self.get(e, "ci95", path)
        self.same(f"{path}.ci95", ci, list(wilson_ci(k, n)), "the Wilson interval")
        return mask

    def comparison(self, d: Any, key: str, where: str, reference: np.ndarray, other: np.ndarray) -> None:
        c = self.obj(d, key, where)
        path = f"{where}.{key}"
        self.same(f"{path}.n", self.count(c, "n", path), len(reference), "the masks")
        only = {"only_reference": reference & ~other, "only_other": other & ~reference}
        for key, mask in only.items():
            self.same(f"{path}.{key}", self.count(c, key, path), int(mask.sum()), "the masks")
        diff = (int(other.sum()) - int(reference.sum())) / len(reference)
        self.same(f"{path}.difference", self.num(c, "difference", path), diff, "the masks")
        self.same(
            f"{path}.mcnemar_p",
            self.num(c, "mcnemar_p", path, lo=0, hi=1),
            mcnemar_exact(other, reference),
            "McNemar's test on the masks",
        )
        self.num(c, "alpha", path, lo=0, hi=1)
        self.num(c, "equivalence_margin", path, lo=0, hi=1)
        ci, _ = self.get(c, "difference_ci95", path)
        if not (
            isinstance(ci, list)
            and len(ci) == 2
            and all(isinstance(v, int | float) for v in ci)
            and ci[0] <= ci[1]
        ):
            raise self.fail(f"{path}.difference_ci95", f"must be a [lo, hi] pair, got {ci!r}")
        self.same(f"{path}.verdict", self.text(c, "verdict", path), verdict(c), "the test and the interval")
        self.text(c, "statement", path)

    def header(self, d: Any, kind: str, run_id: str) -> None:
        """The fields every record of both kinds has, ``run_id`` being what its identity gives."""
        if not isinstance(d, Mapping):
            raise RecordError(f"{self.kind} record must be a JSON object, got {type(d).__name__}")
        version, _ = self.get(d, "schema_version", "")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise self.fail("schema_version", f"must be {SCHEMA_VERSION}, got {version!r}")
        self.same("kind", self.text(d, "kind"), kind, "this record type")
        self.same("run_id", self.text(d, "run_id"), run_id, "make_run_id on the record's model")
        config = self.obj(d, "config")
        digest = self.text(d, "config_hash", regex=_HEX["sha256"])
        self.same("config_hash", digest, config_hash(config), "config_hash(config)")
        data = self.obj(d, "data")
        for key in ("name", "label", "key"):
            self.text(data, key, "data")
        self.count(data, "n_test", "data", lo=1)
        env = self.obj(d, "env")
        self.text(env, "git_commit", "env", null=True)
        for key in ("cpu", "torch", "python"):
            self.text(env, key, "env")
        created = self.text(d, "created")
        try:
            datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            raise self.fail("created", f"must be an ISO 8601 timestamp, got {created!r}") from None

    def model(self, d: Any, key: str, where: str = "") -> Mapping[str, Any]:
        m = self.obj(d, key, where)
        path = f"{where}.{key}" if where else key
        self.text(m, "name", path)
        self.num(m, "alpha", path, lo=0)
        self.num(m, "rho", path, lo=0)
        self.text(m, "weights", path, regex=_HEX["weights"])
        regime, _ = self.get(m, "regime", path)
        if regime not in REGIMES:
            raise self.fail(f"{path}.regime", f"must be one of {', '.join(REGIMES)}, got {regime!r}")
        self.count(m, "seed", path)
        return m

    def attacked(self, d: Any, where: str, n_test: int) -> tuple[int, list[Any]]:
        """The images an attack ran on (``n``, at most ``n_test``), its ``attack`` settings and its
        ``eps`` entries, each with a consistent ``eps``/``eps_255``; returns ``n`` and the entries."""
        prefix = f"{where}." if where else ""
        n = self.count(d, "n", where, lo=1)
        if n > n_test:
            raise self.fail(f"{prefix}n", f"is {n}, more than the {n_test} test images")
        attack = self.obj(d, "attack", where)
        self.text(attack, "examples", f"{prefix}attack")
        self.count(attack, "steps", f"{prefix}attack", lo=1)
        eps, _ = self.get(d, "eps", where)
        if not isinstance(eps, list) or not eps:
            raise self.fail(f"{prefix}eps", "must be a non-empty list")
        for i, e in enumerate(eps):
            path = f"{prefix}eps[{i}]"
            eps_255 = self.num(e, "eps_255", path, lo=0, hi=255)
            self.same(f"{path}.eps", self.num(e, "eps", path, lo=0, hi=1), eps_255 / 255, "eps_255 / 255")
        return n, eps


def validate_deployed_record(d: Any) -> None:
    """Check a deployed-robustness record (schema version 1); raise :class:`RecordError` naming the
    bad field. Beyond keys and types: each count is its mask's, each accuracy and Wilson interval is
    its count's, each McNemar p and verdict is what its masks give, and ``int8_drop`` is int8's clean
    accuracy minus fp32 ONNX's."""
    c = _Check(DEPLOYED)
    m = c.model(d, "model")
    data = c.obj(d, "data")
    c.header(d, DEPLOYED, make_run_id(m["name"], m["regime"], "deployed", str(data.get("key")), m["seed"]))
    c.text(m, "cache_entry", "model")
    onnx = c.obj(d, "onnx")
    for fmt in ("fp32", "int8"):
        f = c.obj(onnx, fmt, "onnx")
        c.text(f, "file", f"onnx.{fmt}")
        c.text(f, "sha256", f"onnx.{fmt}", regex=_HEX["sha256"])
        c.count(f, "bytes", f"onnx.{fmt}", lo=1)
    c.num(onnx["fp32"], "max_abs_logit_diff_vs_pytorch", "onnx.fp32", lo=0)
    c.num(onnx["int8"], "top1_agreement_with_fp32", "onnx.int8", lo=0, hi=1)
    clean = c.obj(d, "clean")
    masks = {e: c.entry(clean, e, "clean", "correct", data["n_test"]) for e in ENGINES}
    acc = {e: masks[e].mean() for e in ENGINES}
    c.same(
        "clean.int8_drop",
        c.num(clean, "int8_drop", "clean"),
        float(acc["onnx int8"] - acc["onnx fp32"]),
        "the masks",
    )
    c.comparison(clean, "int8_vs_fp32", "clean", masks["onnx fp32"], masks["onnx int8"])
    n, eps = c.attacked(c.obj(d, "transfer"), "transfer", data["n_test"])
    for i, e in enumerate(eps):
        path = f"transfer.eps[{i}]"
        robust = {engine: c.entry(e, engine, path, "robust", n) for engine in ENGINES}
        c.comparison(e, "int8_vs_fp32", path, robust["onnx fp32"], robust["onnx int8"])
    latency = c.obj(d, "latency")
    c.text(latency, "cpu", "latency")
    c.same("latency.batch", c.count(latency, "batch", "latency"), 1, "batch-1 timing")
    c.same("latency.threads", c.count(latency, "threads", "latency"), 1, "one-thread timing")
    engines = c.obj(latency, "engines", "latency")
    for engine in ("pytorch eager", "onnx fp32", "onnx int8"):
        s = c.obj(engines, engine, "latency.engines")
        for key in LATENCY_KEYS:
            c.num(s, key, f"latency.engines.{engine}", lo=0)
        c.count(s, "n", f"latency.engines.{engine}", lo=1)


def validate_transfer_record(d: Any) -> None:
    """Check a transfer record (schema version 1); raise :class:`RecordError` naming the bad field.

    Beyond keys and types: every target is named by :func:`model_id`, the source is among them, every
    eps holds an accuracy for each target and nothing else, and each count is its mask's."""
    c = _Check(TRANSFER)
    s = c.model(d, "source")
    data = c.obj(d, "data")
    c.header(d, TRANSFER, make_run_id(s["name"], s["regime"], "transfer", str(data.get("key")), s["seed"]))
    n, eps = c.attacked(d, "", data["n_test"])
    targets = c.obj(d, "targets")
    for tid in targets:
        t = c.model(targets, tid, "targets")
        c.same(f"targets.{tid}", tid, model_id(t["name"], t["regime"], t["seed"]), "model_id of its fields")
        c.entry(t, "clean", f"targets.{tid}", "correct", n)
    source = model_id(s["name"], s["regime"], s["seed"])
    if source not in targets:
        raise c.fail("targets", f"must include the source {source!r} (its white-box accuracy)")
    for i, e in enumerate(eps):
        path = f"eps[{i}]"
        c.entry(e, "source_white_box", path, "robust", n)
        got = c.obj(e, "targets", path)
        if set(got) != set(targets):
            raise c.fail(f"{path}.targets", f"must hold exactly the record's targets, got {sorted(got)}")
        for tid in got:
            c.entry(got, tid, f"{path}.targets", "robust", n)


# -- storage ------------------------------------------------------------------------------------


def write_record(record: Mapping[str, Any], directory: str | Path, validate: Callable[[Any], None]) -> Path:
    """Validate ``record`` and write it atomically, as standard JSON, to ``directory/<run_id>.json``."""
    validate(record)
    return atomic_write_text(Path(directory) / f"{record['run_id']}.json", dumps_record(record))


def read_records(directory: str | Path, validate: Callable[[Any], None]) -> list[dict[str, Any]]:
    """Every ``*.json`` record of ``directory``, sorted by file name; a file that cannot be read or
    parsed, fails ``validate`` or is not named after its ``run_id`` is a one-line :class:`UserError`
    naming it. A missing directory holds no records; temp files of in-flight writes are skipped."""
    records = []
    directory = Path(directory)
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            record = parse_record(path.read_text(encoding="utf-8"))
            validate(record)
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # RecordError and JSON errors too
            raise UserError(f"invalid record {path}: {exc}") from None
        if path.stem != record["run_id"]:
            raise UserError(f"invalid record {path}: its run_id is {record['run_id']!r}; rename it or rerun")
        records.append(record)
    return records
