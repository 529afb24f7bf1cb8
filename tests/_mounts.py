"""A tmpfs mounted for one test: the only way root gets a read-only or a full directory."""

import contextlib
import subprocess

import pytest


@contextlib.contextmanager
def tmpfs(path, options):
    """Mount a tmpfs with ``options`` (``ro``, ``size=256k``) at ``path`` for the block, or skip the test.

    Root writes through permission bits and no test should fill a real disk, so a mount is how a test
    run as root meets a read-only or a full filesystem.
    """
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
