"""glibc allocator tuning: applied where glibc is, a no-op elsewhere, never an error."""

from robust_mnv1.infra import malloc


def test_keep_freed_memory_sets_glibc_thresholds():
    # The development and CI machines run glibc, where mallopt accepts both settings.
    assert malloc.keep_freed_memory() is True


def test_keep_freed_memory_opt_out(monkeypatch):
    monkeypatch.setenv("ROBUST_MNV1_KEEP_FREED_MEMORY", "0")
    assert malloc.keep_freed_memory() is False


def test_keep_freed_memory_without_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(malloc.ctypes.util, "find_library", lambda name: None)
    assert malloc.keep_freed_memory() is False

    def no_library(name):
        raise OSError("no such library")

    monkeypatch.setattr(malloc.ctypes.util, "find_library", lambda name: "libc.so.6")
    monkeypatch.setattr(malloc.ctypes, "CDLL", no_library)
    assert malloc.keep_freed_memory() is False


def test_keep_freed_memory_without_mallopt_is_a_no_op(monkeypatch):
    class NoMallopt:
        def __init__(self, name):
            pass

        def __getattr__(self, attr):
            raise AttributeError(attr)

    monkeypatch.setattr(malloc.ctypes.util, "find_library", lambda name: "libc.dylib")
    monkeypatch.setattr(malloc.ctypes, "CDLL", NoMallopt)
    assert malloc.keep_freed_memory() is False


def test_large_allocations_still_succeed_on_any_thread():
    # mmap is off for allocations: requests beyond a thread arena's 64 MiB heap must still be served.
    # In a child process, so this test's 192 MiB stay out of the test runner's heap.
    import subprocess
    import sys

    script = """
import threading
import torch
from robust_mnv1.infra import malloc
assert malloc.keep_freed_memory() is True
sums = []
def allocate():
    sums.append(float(torch.ones(48 << 20).sum()))  # 192 MiB
worker = threading.Thread(target=allocate)
worker.start()
worker.join()
allocate()
assert sums == [float(48 << 20)] * 2, sums
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
