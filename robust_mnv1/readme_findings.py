"""Copy the headline of a generated leaderboard into README.md, so no number there is typed by hand.

``python -m robust_mnv1.readme_findings --results results`` rewrites the block between the
``<!-- findings:start -->`` and ``<!-- findings:end -->`` markers of README.md with: a summary of
the verdicts and of fine-tuning's effect, the top rows of the leaderboard, every verdict line, the
series figures and a link to the full board (:mod:`robust_mnv1.report.findings`). ``--check`` only
compares, exiting 1 when the README is stale (a test runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robust_mnv1.infra.atomic import atomic_write_text
from robust_mnv1.infra.errors import UserError
from robust_mnv1.report.findings import findings_block, splice


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 for a stale README or a problem with the records)."""
    parser = argparse.ArgumentParser(
        prog="python -m robust_mnv1.readme_findings", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README block is stale")
    args = parser.parse_args(argv)
    try:
        old = args.readme.read_text(encoding="utf-8")
        new = splice(old, findings_block(args.results, args.readme.parent))
    except OSError as exc:
        print(f"error: cannot read {args.readme}: {exc.strerror}", file=sys.stderr)
        return 1
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
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
