"""``python -m robust_mnv1.latency [--results DIR] [--reps N]``: time the board's models on this CPU.

Measures the batch-1, one-thread CPU latency of every architecture that has a record in ``DIR/runs``,
all in this one run (:mod:`robust_mnv1.cost.model_latency`), and writes ``DIR/latency/<device>.json``;
``python -m robust_mnv1.leaderboard`` then takes its latency column from that file. Run it on the
machine whose latency you want to report, with nothing else running: other processes only add time.
A problem with the arguments or the records is one ``error:`` line and exit status 1, before any
timing starts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from robust_mnv1.cost.model_latency import Architecture, latency_record, measure, save_latency
from robust_mnv1.infra.malloc import keep_freed_memory
from robust_mnv1.records.store import read_records


def architectures(runs_dir: Path) -> list[Architecture]:
    """The distinct architectures of the valid records in ``runs_dir``, smallest cost first."""
    records, _ = read_records(runs_dir)
    by_name = {r.model.name: r.model for r in records}
    return [
        Architecture(m.name, m.alpha, m.rho, m.profile)
        for m in sorted(by_name.values(), key=lambda m: (m.macs, m.name))
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m robust_mnv1.latency",
        description="Time a batch-1 forward of every architecture in DIR/runs, in one run; "
        "write DIR/latency/<device>.json for the leaderboard.",
    )
    parser.add_argument(
        "--results", default="results", type=Path, help="results directory (default: results)"
    )
    parser.add_argument("--reps", type=int, default=1000, help="timed calls per model (default 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per model first (default 50)")
    parser.add_argument(
        "--blocks", type=int, default=10, help="interleaved rounds the calls are split into (default 10)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.blocks <= args.reps or args.warmup < 0:
        print(
            f"error: need 1 <= --blocks <= --reps and --warmup >= 0, got --blocks {args.blocks}, "
            f"--reps {args.reps}, --warmup {args.warmup}",
            file=sys.stderr,
        )
        return 1
    keep_freed_memory()  # as in the study's workers, whose records the column used to come from
    archs = architectures(args.results / "runs")
    if not archs:
        print(f"error: no valid run records in {args.results / 'runs'}; nothing to time", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    settings = {"reps": args.reps, "warmup": args.warmup, "blocks": args.blocks}
    record = latency_record(archs, measure(archs, **settings), **settings)
    for m in record["models"]:
        print(f"{m['model']}: median {m['median_ms']:.3f} ms, p10 {m['p10_ms']:.3f}, p90 {m['p90_ms']:.3f}")
    print(f"{save_latency(record, args.results / 'latency')} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
