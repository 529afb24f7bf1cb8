"""Keep freed activation memory in the process (glibc), so CPU steps stop paying page faults.

A CPU forward/backward allocates and frees the same multi-megabyte activation buffers every step.
By default glibc returns such freed memory to the OS (mmap'd chunks, and heap trimming), and the
next step faults every page in again. With a fixed mmap threshold of 32 MiB and a trim threshold
of 2 GiB, freed buffers are reused instead: CPU attack steps ran 1.33-1.43x and train steps
1.07-1.09x as fast (docs/performance.md). 32 MiB is the largest mmap threshold glibc accepts, and
at alpha=1, batch 256 several activations are that large, so mmap is switched off altogether: a
PGD-7 training step at that size then ran about 1.2-1.45x as fast and stopped varying from run to
run. The cost: the resident set stays at its peak, and over a long run can creep above it, since
glibc returns only the top of its heap and freed gaps below live buffers stay mapped.

Process-wide, so only the entry points call it (the run and cost CLIs, the benches), never the
libraries. Setting either threshold by hand also turns off glibc's own adaptive thresholds, which
alone made isolated layers slower, so both are set together. ``ROBUST_MNV1_KEEP_FREED_MEMORY=0``
leaves glibc's defaults, e.g. to measure the difference:
``ROBUST_MNV1_KEEP_FREED_MEMORY=0 python bench/layout_bench.py --device cpu`` against the default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds and switch mmap off for allocations; returns False where
    there is no glibc ``mallopt`` or ``ROBUST_MNV1_KEEP_FREED_MEMORY=0`` opts out."""
    if os.environ.get("ROBUST_MNV1_KEEP_FREED_MEMORY") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mmap_set = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    trim_set = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    # Larger requests come from the heap too (a non-main arena still falls back to mmap when its
    # heap cannot hold a request, so nothing fails for lack of it).
    return mmap_set and trim_set and bool(mallopt(_M_MMAP_MAX, 0))
