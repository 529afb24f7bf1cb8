"""Copy the headline of a generated leaderboard into README.md, so no number there is typed by hand.

``python -m robust_mnv1.readme_findings --results results`` rewrites the block between the
``<!-- findings:start -->`` and ``<!-- findings:end -->`` markers of README.md with: the top
rows of the leaderboard, every computed verdict, one figure and a link to the full board.
``--check`` only compares, exiting 1 when the README is stale (a test runs it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from robust_mnv1.leaderboard import INCONCLUSIVE, VERDICT_P, build_table, findings, table_lines
from robust_mnv1.records import load_records

START, END = "<!-- findings:start -->", "<!-- findings:end -->"
TOP_ROWS = 5


def section(results_dir: Path, readme_dir: Path) -> str:
    records = load_records(results_dir / "runs")
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
        "Computed verdicts (Spearman correlation of MACs with robustness: a verdict needs its two-level "
        f"bootstrap 95% CI on one side of 0 and a permutation p < {VERDICT_P}):",
        "",
    ]
    found = findings(table)
    decided = [f for f in found if f.verdict != INCONCLUSIVE]
    lines += [f"- {f.text}" for f in decided] or [
        f"- none: every correlation's CI crosses 0, its permutation p is at least {VERDICT_P}, "
        "or it has too few models"
    ]
    lines += [
        f"- {len(found) - len(decided)} of {len(found)} comparisons are inconclusive (see the full board).",
        "",
        f"![robustness vs MACs]({rel}/figures/robustness_vs_macs.png)",
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
    args.readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
