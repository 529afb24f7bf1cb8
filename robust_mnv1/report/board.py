"""Write a results directory's board: ``leaderboard.md``, ``leaderboard.csv`` and ``figures/*.png``.

Everything shown, verdicts included, is computed from the run records in ``DIR/runs`` (and the
latency records in ``DIR/latency`` and ``DIR/profiles``), and the output is a pure function of them:
fixed bootstrap seeds, stable sorting with tie-breakers, no wall-clock time and PNGs without date
metadata, so regenerating from the same records gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

from robust_mnv1.infra.atomic import atomic_write_text
from robust_mnv1.infra.errors import UserError
from robust_mnv1.records.latency import load_latency, medians
from robust_mnv1.records.profiles import load_profiles
from robust_mnv1.records.store import read_records
from robust_mnv1.report.figures import draw_all
from robust_mnv1.report.markdown import render_markdown
from robust_mnv1.report.outcomes import headline_of
from robust_mnv1.report.table import build_eps_curves, build_table, table_csv
from robust_mnv1.report.verdicts import analyse_all


def generate(results_dir: str | Path, skip_invalid: bool = False) -> dict[str, Path]:
    """Regenerate the markdown, CSV and figures from ``results_dir/runs/*.json`` (the latency column
    from the newest ``results_dir/latency/*.json`` when there is one, the per-layer latency notes from
    ``results_dir/profiles/*.json``).

    Returns the written paths keyed ``markdown``, ``csv`` and one key per figure name. Raises
    :class:`UserError`, before writing anything, when there is no valid record or when a record
    file is invalid: a board silently rebuilt without one of its records can rank a model on the
    wrong numbers. ``skip_invalid`` leaves such files out instead, and the board names them.
    """
    results_dir = Path(results_dir)
    runs = results_dir / "runs"
    records, invalid = read_records(runs)
    if invalid and not skip_invalid:
        names = "; ".join(f"{p.name} ({reason})" for p, reason in invalid)
        raise UserError(
            f"{len(invalid)} invalid record file(s) in {runs}: {names}; fix or remove them, "
            "or pass --skip-invalid to leave them out"
        )
    if not records:
        raise UserError(f"no valid run records in {runs}; run the study first (it writes runs/<run_id>.json)")
    latency = load_latency(results_dir / "latency")
    table = build_table(records, medians(latency))
    boards = analyse_all(records)
    profiles = load_profiles(results_dir / "profiles")
    markdown = render_markdown(records, table, profiles, boards, skipped=invalid, latency=latency)
    csv = table_csv(table)
    paths = {"markdown": results_dir / "leaderboard.md", "csv": results_dir / "leaderboard.csv"}
    curves = build_eps_curves(records)
    paths |= draw_all(results_dir / "figures", boards, table, curves, headline_of(records))
    # The board last: it links the figures, so it never describes figures that failed to render.
    atomic_write_text(paths["csv"], csv)
    atomic_write_text(paths["markdown"], markdown)
    return paths
