"""A study worker stops when the study process dies, even by kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import REPO

# The "study": starts a worker the way the study does (spawn), prints its pid, then waits forever.
PARENT = """
import multiprocessing, os, sys, time
from robust_mnv1.infra.parent_watch import exit_with_parent

def worker(parent, watch):
    if watch:
        exit_with_parent(parent, poll_s=0.05)
    time.sleep(60)

if __name__ == "__main__":
    args = (os.getpid(), sys.argv[1] == "watch")
    child = multiprocessing.get_context("spawn").Process(target=worker, args=args)
    child.start()
    print(child.pid, flush=True)
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its new parent) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
@pytest.mark.parametrize("watch", [True, False])
def test_a_worker_outlives_a_killed_parent_only_without_the_watch(tmp_path, watch):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script), "watch" if watch else "plain"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(child) is not watch
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
