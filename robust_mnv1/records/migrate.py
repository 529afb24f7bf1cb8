"""Migrations of stored run records, for when the config that makes a record gains a key or the
JSON a record is stored as changes.

A record's ``config_hash`` is how the study knows a record was made with today's config; a new config
key changes every hash, so without a migration every record would be redone. A migration adds the
key with the value the old code used (so the record says truthfully what made it) and recomputes the
hash. Each is idempotent: a record that has the key already is left as it is.

    python -m robust_mnv1.records.migrate results/runs results/cpu-preview/runs

Migrations, oldest first:

- bare ``Infinity``/``NaN`` JSON tokens become the strings standard JSON readers take (same values;
  the hash does not change).
- ``eval.headline_eps_255`` and ``eval.sanity.eps_255`` (both 8): the board's headline radius and the
  gradient-masking checks' radius were fixed at 8/255 in the code before they were configurable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from robust_mnv1.infra.atomic import atomic_write_text
from robust_mnv1.infra.errors import UserError
from robust_mnv1.records.schema import RecordError, config_hash
from robust_mnv1.records.store import dumps_record, json_files
from robust_mnv1.records.validate import validate_record


def add_eval_radii(config: dict[str, Any]) -> None:
    """``eval.headline_eps_255`` and ``eval.sanity.eps_255`` at 8, where the study's config has an
    ``eval`` block (and its ``sanity``) without them."""
    block = config.get("eval")
    if not isinstance(block, dict):
        return
    block.setdefault("headline_eps_255", 8)
    if isinstance(block.get("sanity"), dict):
        block["sanity"].setdefault("eps_255", 8)


MIGRATIONS: tuple[Callable[[dict[str, Any]], None], ...] = (add_eval_radii,)


def migrate_record(record: dict[str, Any]) -> bool:
    """Apply every migration to ``record`` (a parsed record, changed in place) and recompute its
    ``config_hash``; returns whether anything changed."""
    before = record["config_hash"]
    for migration in MIGRATIONS:
        migration(record["config"])
    record["config_hash"] = config_hash(record["config"])
    return record["config_hash"] != before


def migrate_runs(runs_dirs: Iterable[str | Path]) -> list[Path]:
    """Migrate every record of ``runs_dirs``; returns the rewritten paths.

    Every file is read and checked first: one that is not a valid record stops the migration before
    anything is written (a half-migrated directory would split its rows by config hash). Each rewrite
    is atomic.
    """
    pending = []
    for runs in runs_dirs:
        if not Path(runs).is_dir():
            raise UserError(f"{runs} is not a directory of run records")
        for path, record, error in json_files(runs):
            if error is not None:
                raise UserError(f"{path}: {error}; fix or remove it before migrating")
            try:
                validate_record(record)
            except RecordError as exc:
                raise UserError(f"{path}: {exc}; fix or remove it before migrating") from None
            legacy_json = path.read_text(encoding="utf-8") != dumps_record(record)
            if migrate_record(record) or legacy_json:
                pending.append((path, record))
    for path, record in pending:
        atomic_write_text(path, dumps_record(record))
    return [path for path, _ in pending]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m robust_mnv1.records.migrate",
        description="Bring stored run records up to today's config keys (idempotent).",
    )
    parser.add_argument("runs_dirs", nargs="+", type=Path, help="directories of run records (results/runs)")
    args = parser.parse_args(argv)
    try:
        done = migrate_runs(args.runs_dirs)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"migrated {len(done)} record(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
