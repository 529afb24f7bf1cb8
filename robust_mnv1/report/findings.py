"""The README's findings block: the headline of a results directory's board, copied from its records.

The block sits between :data:`START` and :data:`END` in README.md and holds the top rows of the
leaderboard, every verdict line, the series figures and a link to the full board, so no number in
the README is typed by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from robust_mnv1.infra.errors import UserError
from robust_mnv1.records.latency import load_latency, medians
from robust_mnv1.records.store import read_records
from robust_mnv1.report.markdown import table_lines
from robust_mnv1.report.outcomes import headline_of
from robust_mnv1.report.summary import summary_lines
from robust_mnv1.report.table import build_table
from robust_mnv1.report.verdict_text import verdict_lines
from robust_mnv1.report.verdicts import Board, analyse_all

START, END = "<!-- findings:start -->", "<!-- findings:end -->"
TOP_ROWS = 5


def findings_block(results_dir: Path, readme_dir: Path) -> str:
    """The block, markers included, for the records in ``results_dir/runs``, with links relative to
    ``readme_dir``. Raises :class:`UserError` when a record file is invalid or there is none."""
    records, invalid = read_records(results_dir / "runs")
    if invalid:
        raise UserError(
            f"{len(invalid)} invalid record file(s) in {results_dir / 'runs'}, first "
            f"{invalid[0][0].name}: {invalid[0][1]}"
        )
    if not records:
        raise UserError(f"no run records in {results_dir / 'runs'}")
    table = build_table(records, medians(load_latency(results_dir / "latency")))
    boards = analyse_all(records)
    headline = headline_of(records)
    rel = Path(os.path.relpath(results_dir, readme_dir)).as_posix()
    labels = sorted({r.data.label for r in records})
    lines = [
        START,
        f"Generated from `{rel}/runs/` by `python -m robust_mnv1.readme_findings --results {rel}`; "
        f"data: {', '.join(labels)}. Full board: [{rel}/leaderboard.md]({rel}/leaderboard.md).",
        "",
        *_summary(boards, table),
        f"Top {min(TOP_ROWS, len(table))} of {len(table)} rows, by worst-case robust accuracy at "
        f"{headline.radius}:",
        "",
        *table_lines(table.head(TOP_ROWS), headline),
        "",
        "Computed verdicts (paired per-image tests along each series, Holm-corrected; the rule and every "
        "test are on the full board):",
        "",
    ]
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


def _summary(boards: dict[str, Board], table: pd.DataFrame) -> list[str]:
    lines = []
    for data_key, board in boards.items():
        prefix = f"{data_key}: " if len(boards) > 1 else ""
        rows = table[table["data_key"] == data_key]
        lines += [f"- {prefix}{line}" for line in summary_lines(board, rows)]
    return ["In short, counted from the verdicts and the table below:", "", *lines, ""] if lines else []


def splice(readme: str, block: str) -> str:
    """``readme`` with its block between the markers replaced by ``block`` (which carries the markers)."""
    if START not in readme or END not in readme:
        raise UserError(f"README has no {START} ... {END} block to fill")
    head, rest = readme.split(START, 1)
    return head + block + rest.split(END, 1)[1]
