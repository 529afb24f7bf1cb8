"""How many torch threads a CPU run uses: by default, one per core that nothing else is keeping busy.

Torch splits every kernel between its threads and waits for the slowest. When another process holds
one of the cores, the thread that shares it runs in time slices, and every kernel waits for it: on a
2-core machine with one competing process, the smoke experiment ran many times slower with torch's
default 2 threads than with 1 (docs/performance.md, "Under load"). So ``threads=auto`` counts the
idle cores of this process's CPU set over a short window before any work starts.
"""

from __future__ import annotations

import os
import time

# Long enough to see a CPU-bound competitor clearly (several scheduler ticks), short beside any run.
_WINDOW_S = 0.3


def _cpu_ticks(cpus: set[int]) -> tuple[int, int]:
    """Total and idle (idle + iowait) jiffies of ``cpus`` since boot, from /proc/stat."""
    total = idle = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                ticks = [int(v) for v in fields]
                total += sum(ticks[:8])  # user..steal; guest time is already counted in user
                idle += ticks[3] + ticks[4]
    return total, idle


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity set where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def busy_cores(window_s: float | None = None) -> float | None:
    """How many of this process's CPUs other work kept busy over ``window_s`` (None off Linux)."""
    window_s = _WINDOW_S if window_s is None else window_s
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    try:
        total0, idle0 = _cpu_ticks(cpus)
        time.sleep(window_s)
        total1, idle1 = _cpu_ticks(cpus)
    except OSError:
        return None
    if total1 <= total0:
        return None
    return len(cpus) * (1 - (idle1 - idle0) / (total1 - total0))


def choose_threads(setting: int | str) -> int:
    """The torch thread count for ``threads=setting``: an int as given; ``auto`` leaves an explicit
    ``OMP_NUM_THREADS`` alone and otherwise takes the idle cores, at least one."""
    if setting != "auto":
        return int(setting)
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = usable_cores()
    busy = busy_cores()
    return cores if busy is None else max(1, min(cores, cores - round(busy)))
