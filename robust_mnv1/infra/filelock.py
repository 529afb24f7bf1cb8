"""An exclusive lock on a file, so that parallel runs sharing a cache or a results folder do each
piece of work once: the first takes the lock and works, the others wait and then find it done."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created if missing) for the body.

    ``flock`` locks are released by the kernel when their holder dies, so a run killed with -9 never
    leaves a stale lock behind; the empty lock file itself is harmless and is reused.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
