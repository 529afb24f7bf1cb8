"""Copy the headline of a generated leaderboard into README.md, so no number there is typed by hand.

``python -m robust_mnv1.readme_findings --results results`` rewrites the block between the
``<!-- findings:start -->`` and ``<!-- findings:end -->`` markers of README.md with: the top
rows of the leaderboard, every verdict line, the series figures and a link to the full board.
``--check`` only compares, exiting 1 when the README is stale (a test runs it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from robust_mnv1.atomic import atomic_write_text
from robust_mnv1.leaderboard import analyse_all, build_table, table_lines
from robust_mnv1.records import read_records
from robust_mnv1.report.verdict_text import verdict_lines

START, END = "<!-- findings:start -->", "<!-- findings:end -->"
TOP_ROWS = 5


def section(results_dir: Path, readme_dir: Path) -> str:
    records, invalid = read_records(results_dir / "runs")
    if invalid:
        raise SystemExit(
            f"error: {len(invalid)} invalid record file(s) in {results_dir / 'runs'}, first "
            f"{invalid[0][0].name}: {invalid[0][1]}"
        )
    if not records:
        raise SystemExit(f"error: no run records in {results_dir / 'runs'}")
    table = build_table(records)
    rel = Path(os.path.relpath(results_dir, readme_dir)).as_posix()
    labels = sorted({r["data"]["label"] for r in records})
    lines = [
        START,
        f"Generated from `{rel}/runs/` by `python -m robust_mnv1.readme_findings --results {rel}`; "
        f"data: {', '.join(labels)}. Full board: [{rel}/leaderboard.md]({rel}/leaderboard.md).",
        "",
        f"Top {min(TOP_ROWS, len(table))} of {len(table)} rows, by worst-case robust accuracy at 8/255:",
        "",
        *table_lines(table.head(TOP_ROWS)),
        "",
        "Computed verdicts (paired per-image tests along each series, Holm-corrected; the rule and every "
        "test are on the full board):",
        "",
    ]
    boards = analyse_all(records)
    for data_key, board in boards.items():
        prefix = f"{data_key}, " if len(boards) > 1 else ""
        lines += [f"- {prefix}{line}" for line in verdict_lines(board)] or [
            f"- {data_key}: no series (a verdict needs two models that differ in one multiplier only)"
        ]
    lines += [
        "",
        f"![width series]({rel}/figures/width_series.png)",
        "",
        f"![resolution series]({rel}/figures/resolution_series.png)",
        END,
    ]
    return "\n".join(lines)


def splice(readme: str, block: str) -> str:
    if START not in readme or END not in readme:
        raise SystemExit(f"error: README has no {START} ... {END} block to fill")
    head, rest = readme.split(START, 1)
    return head + block + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m robust_mnv1.readme_findings", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README block is stale")
    args = parser.parse_args(argv)
    old = args.readme.read_text(encoding="utf-8")
    new = splice(old, section(args.results, args.readme.parent))
    if args.check:
        if new != old:
            print(
                f"error: {args.readme} is stale; run python -m robust_mnv1.readme_findings", file=sys.stderr
            )
            return 1
        return 0
    atomic_write_text(args.readme, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
