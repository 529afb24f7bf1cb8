"""Peak memory of one study unit: the process's resident set and, on CUDA, torch's allocations.

The resident peak is Linux's ``VmHWM``, which ``/proc/self/clear_refs`` can reset (writing ``5``), so a
worker process that runs several units one after another can give each its own peak. The reset sets the
peak to what the process holds at that moment, and that includes the memory glibc keeps from earlier
units (``infra/malloc.py``): the figure is what the process needed while the unit ran, the number that
decides how many workers fit on a machine. Where the reset is not allowed the peak is the process's
since it started, an upper bound; where there is no ``/proc`` the resident peak is left out.
"""

from __future__ import annotations

from pathlib import Path

import torch

_PROC = Path("/proc/self")


def reset_peaks(device: torch.device) -> bool:
    """Start the peaks afresh, from what the process holds now; False where the resident peak could not be
    reset (no ``/proc``, or a kernel that refuses), so that it still counts from the process's start."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        (_PROC / "clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peaks_mib(device: torch.device) -> dict[str, float]:
    """The peaks since the last :func:`reset_peaks`, in MiB: ``peak_rss_mib`` where ``/proc`` has it,
    ``peak_cuda_mib`` (tensors torch allocated) on a CUDA device."""
    out: dict[str, float] = {}
    try:
        status = (_PROC / "status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            out["peak_rss_mib"] = round(int(line.split()[1]) / 1024, 1)
    if device.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out
