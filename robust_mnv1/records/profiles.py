"""The per-layer latency records that ``python -m robust_mnv1.cost profile=true`` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robust_mnv1.records.store import json_files, warn_skipped

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
    for path, record, error in json_files(profiles_dir):
        if error is not None:
            warn_skipped(path, error)
            continue
        if not (
            isinstance(record, dict)
            and record.get("kind") == "layer-profile"
            and all(k in record for k in PROFILE_KEYS)
            and isinstance(record["kinds"], list)
            and all(_profile_row_ok(row) for row in record["kinds"])
        ):
            warn_skipped(path, "not a layer-profile record")
            continue
        profiles.append(record)
    return profiles
