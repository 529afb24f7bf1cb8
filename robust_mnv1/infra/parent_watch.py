"""Worker processes that stop when the process that started them dies.

A study's worker, orphaned by a ``kill -9`` of the study process (or a crash), would otherwise run
its unit to the end: holding a core, and the model's lock, for a study nobody is running any more.
Everything a worker writes is atomic (checkpoints, records), so stopping it at any moment loses at
most the epoch or record in flight, which the next run redoes.
"""

from __future__ import annotations

import os
import threading
import time

# How often the watch looks; a dead parent is noticed within this time.
_POLL_S = 1.0


def exit_with_parent(parent: int, poll_s: float = _POLL_S) -> None:
    """Start a daemon thread that ends this process (exit status 1) once ``parent``, the pid of the
    process that started it, is no longer its parent (at once if that is already so).

    A process whose parent died is handed to another one (init or a subreaper), so ``os.getppid()``
    changes. Polling works the same on every POSIX system and whichever thread started the process,
    which ``prctl(PR_SET_PDEATHSIG)`` does not; passing ``parent`` in, rather than reading it here,
    also catches a parent that died while this process was still starting.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
