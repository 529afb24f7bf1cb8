"""Records on disk: standard JSON text, atomic writes, reading a runs directory, and the check that
records read together evaluated one model on one image order."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from robust_mnv1.infra.atomic import atomic_write_text
from robust_mnv1.infra.errors import UserError
from robust_mnv1.records.run_record import RunRecord
from robust_mnv1.records.schema import RecordError, RecordWarning

# Standard JSON has no infinities or NaN (an unbroken image's C&W distance is infinite): they are
# written as these strings and read back as floats. Records written before this, with bare
# Infinity/NaN tokens, still load; ``python -m robust_mnv1.records.migrate`` rewrites them.
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


def write_record(record: RunRecord, runs_dir: str | Path) -> Path:
    """Validate ``record`` and write it atomically to ``runs_dir/<run_id>.json``.

    See :func:`robust_mnv1.infra.atomic.atomic_write`: a reader or a concurrent writer of the same
    run id sees a complete old or new file, never a mix; temp names start with ``.`` and end
    in ``.tmp``, so :func:`load_records` ignores them.
    """
    data = record.to_dict()
    RunRecord.from_dict(data)  # the schema's checks, before anything is written
    return atomic_write_text(Path(runs_dir) / f"{record.run_id}.json", dumps_record(data))


def warn_skipped(path: Path, reason: str) -> None:
    warnings.warn(f"skipping record {path}: {reason}", RecordWarning, stacklevel=3)


def json_files(directory: str | Path) -> Iterator[tuple[Path, Any, str | None]]:
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


def read_records(runs_dir: str | Path) -> tuple[list[RunRecord], list[tuple[Path, str]]]:
    """``(records, invalid)``: every valid ``*.json`` record in ``runs_dir`` sorted by file name, and
    ``(path, reason)`` for each file that cannot be read, is not JSON, fails validation or is not
    named ``<run_id>.json``. A missing directory gives two empty lists; temp files of in-flight
    writes (``.*.tmp``) are never looked at."""
    records, invalid = [], []
    for path, record, error in json_files(runs_dir):
        if error is not None:
            invalid.append((path, error))
            continue
        try:
            typed = RunRecord.from_dict(record)
        except RecordError as exc:
            invalid.append((path, str(exc)))
            continue
        if path.stem != typed.run_id:
            # A renamed copy would otherwise count the same run twice.
            invalid.append((path, f"file name does not match run_id {typed.run_id!r}"))
            continue
        records.append(typed)
    return records, sorted(invalid)


def load_records(runs_dir: str | Path) -> list[RunRecord]:
    """The valid records of :func:`read_records`; each invalid file is skipped with a
    :class:`RecordWarning` naming it."""
    records, invalid = read_records(runs_dir)
    for path, reason in invalid:
        warn_skipped(path, reason)
    return records


def check_combinable(records: Iterable[RunRecord]) -> None:
    """Refuse records of one (data, model, regime, seed) that did not evaluate the same weights on
    the same images, and fine-tuned records whose parent is not the standard records' model.

    The leaderboard ANDs the per-image masks of a row's records and sets each fine-tuned row against
    its standard row; that only means something when the records share one trained model (the same
    ``model.weights`` digest, or all lack it, as records made before digests existed do) and one
    evaluation order (``config.eval.order``; ``dataset`` when absent).
    """
    seen: dict[tuple[Any, ...], tuple[Any, str, str]] = {}
    for r in records:
        key = (r.data.key, r.model.name, r.regime, r.seed)
        order = r.eval_order
        mine = (r.model.weights, order)
        first = seen.setdefault(key, (*mine, r.run_id))
        if first[:2] != mine:
            raise UserError(
                f"{first[2]} and {r.run_id} evaluated different weights or images (weights "
                f"{first[0]} vs {mine[0]}, eval.order {first[1]} vs {order}); delete that model's records "
                "and rerun its study unit"
            )
    for r in records:
        parent = r.model.parent_weights
        standard = seen.get((r.data.key, r.model.name, "standard", r.seed))
        if parent is not None and standard is not None and standard[0] != parent:
            raise UserError(
                f"{r.run_id} was fine-tuned from weights {parent}, but {standard[2]} evaluated "
                f"{standard[0]}; delete that model's records and rerun its study unit"
            )
