"""``python -m robust_mnv1.leaderboard [--results DIR] [--skip-invalid] [--timing]``: regenerate a board.

Reads ``DIR/runs/*.json`` (and ``DIR/profiles/*.json``) and writes ``DIR/leaderboard.md``,
``DIR/leaderboard.csv`` and ``DIR/figures/*.png`` through :func:`generate`
(:mod:`robust_mnv1.report.board`), printing the written paths; a problem with the records is one
``error:`` line and exit status 1. ``--timing`` writes nothing and prints where the records' time went
(:mod:`robust_mnv1.report.timing`) as a markdown table, then the worker hours of each stage per device.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from robust_mnv1.infra.errors import UserError
from robust_mnv1.records.store import read_records
from robust_mnv1.report import timing
from robust_mnv1.report.board import generate

__all__ = ["generate", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m robust_mnv1.leaderboard",
        description="Regenerate leaderboard.md, leaderboard.csv and figures/ from DIR/runs/*.json.",
    )
    parser.add_argument(
        "--results", default="results", type=Path, help="results directory (default: results)"
    )
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="leave out record files that fail validation (the board lists them) instead of stopping",
    )
    parser.add_argument(
        "--timing", action="store_true", help="print each model's stage times from the records; write nothing"
    )
    args = parser.parse_args(argv)
    if args.timing:
        records, invalid = read_records(args.results / "runs")
        for path, reason in invalid:
            print(f"warning: skipping record {path}: {reason}", file=sys.stderr)
        table = timing.stage_times(records)
        print(timing.markdown(table), end="")
        if len(table):
            print("\n" + timing.markdown(timing.totals(table), digits=2), end="")
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            paths = generate(args.results, skip_invalid=args.skip_invalid)
        except UserError as exc:
            paths = None
            error = str(exc)
    # One line per skipped record instead of the default two-line warning format.
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if paths is None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
