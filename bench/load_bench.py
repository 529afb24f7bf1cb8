"""Wall time of ``experiment=smoke`` on a quiet machine and beside one CPU-bound process.

The question is what ``threads=auto`` buys when the machine is shared. Torch splits each kernel
between its threads and waits for the slowest, so a thread whose core another process holds stalls
every kernel. The bench runs the whole smoke experiment (train, fine-tune, every attack, on digits)
as a user would, in a subprocess with a fresh model cache and output dir:

- ``quiet``: nothing else running, ``threads=auto`` (the baseline of the ratios);
- ``loaded, auto``: beside a 1-thread busy loop, ``threads=auto``;
- ``loaded, N``: beside the same loop, torch's default of one thread per core.

Run from the repository root: ``python bench/load_bench.py`` (about 5 minutes on 2 cores);
``--quick`` cuts the experiment's budgets so that it only shows the bench still runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from _common import print_table

from robust_mnv1.infra.threads import usable_cores

REPO = Path(__file__).resolve().parents[1]
# The smoke experiment with its budgets cut to seconds: enough to exercise every stage.
QUICK = [
    "train.epochs=1",
    "finetune.epochs=1",
    "finetune.steps=1",
    "eval.n_examples=32",
    "eval.n_cw=8",
    "eval.sanity.n=16",
    "attack.pgd.steps=2",
    "attack.cw.steps=5",
    "attack.apgd.ce_steps=2",
    "attack.apgd.targeted_steps=2",
    "attack.apgd.square.samples=4",
    "attack.apgd.square.queries=5",
    "study.grid=[{alpha:0.25,rho:1.0}]",
]


@contextmanager
def busy_loop(on: bool):
    """A competing single-threaded CPU-bound process while the block runs (nothing when ``on`` is false)."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)  # let it take its core before the run looks for idle ones
        yield
    finally:
        proc.kill()
        proc.wait()


def smoke_seconds(threads: str, *, loaded: bool, overrides: list[str], timeout_s: float) -> float:
    """Wall seconds of one ``experiment=smoke`` run, from a fresh cache, in its own output dir."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # let `threads` decide
    env["TQDM_DISABLE"] = "1"
    with tempfile.TemporaryDirectory(prefix="robust-mnv1-load-") as tmp:
        env["ROBUST_MNV1_CACHE"] = str(Path(tmp) / "cache")
        cmd = [
            sys.executable,
            "-m",
            "robust_mnv1.run",
            "experiment=smoke",
            f"threads={threads}",
            f"hydra.run.dir={tmp}/run",
            *overrides,
        ]
        with busy_loop(loaded):
            start = time.perf_counter()
            done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
            seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"load_bench: the smoke run failed (threads={threads}, loaded={loaded})")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu",), default="cpu", help="the bench is about CPU threads")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test, not a figure")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a run counts as hung")
    args = parser.parse_args()
    overrides = QUICK if args.quick else []
    cores = usable_cores()
    cases = [("quiet", "auto", False), ("loaded", "auto", True), ("loaded", str(cores), True)]
    rows = []
    for load, threads, loaded in cases:
        seconds = smoke_seconds(threads, loaded=loaded, overrides=overrides, timeout_s=args.timeout)
        rows.append({"machine": load, "threads": threads, "wall s": round(seconds, 1)})
    table = pd.DataFrame(rows)
    table["vs quiet"] = (table["wall s"] / table["wall s"].iloc[0]).round(2)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print_table(
        f"experiment=smoke{' (quick budgets)' if args.quick else ''}, {cores} cores, "
        f"load average {load:.1f} at the end",
        table,
        [
            "loaded: beside one single-threaded busy loop started a second before the run",
            "each run starts from an empty model cache, so it trains as well as attacks",
        ],
    )


if __name__ == "__main__":
    main()
