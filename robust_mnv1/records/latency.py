"""The architecture latency records that ``python -m robust_mnv1.latency`` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robust_mnv1.records.store import json_files, warn_skipped

LATENCY_KEYS = ("created", "env", "reps", "blocks", "models")


def _row_ok(row: Any) -> bool:
    return (
        isinstance(row, dict)
        and isinstance(row.get("model"), str)
        and all(isinstance(row.get(k), int | float) for k in ("median_ms", "p10_ms", "p90_ms", "iqr_ms"))
    )


def load_latency(latency_dir: str | Path) -> dict[str, Any] | None:
    """The newest architecture latency record in ``latency_dir`` (by ``created``, then file name), or
    None when there is none; malformed files are skipped with a :class:`RecordWarning`."""
    found = []
    for path, record, error in json_files(latency_dir):
        if error is not None:
            warn_skipped(path, error)
        elif not (
            isinstance(record, dict)
            and record.get("kind") == "model-latency"
            and all(k in record for k in LATENCY_KEYS)
            and isinstance(record["env"], dict)
            and isinstance(record["models"], list)
            and all(_row_ok(row) for row in record["models"])
        ):
            warn_skipped(path, "not a model-latency record")
        else:
            found.append((str(record["created"]), path.name, record))
    return max(found, key=lambda f: f[:2])[2] if found else None


def medians(record: dict[str, Any] | None) -> dict[str, float] | None:
    """Model name to median ms in a :func:`load_latency` record (None for none): the board's column."""
    return {m["model"]: m["median_ms"] for m in record["models"]} if record else None
