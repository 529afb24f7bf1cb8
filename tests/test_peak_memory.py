"""A unit's peak memory: reset when the unit starts, so a worker's earlier units do not set it."""

import json
import os
import subprocess
import sys

import pytest
import torch

from robust_mnv1.infra.peak_memory import peaks_mib, reset_peaks

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the resident peak comes from /proc")
resettable = pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="no writable /proc/self/clear_refs here"
)

# In a fresh process: this one's allocator may hold freed pages (other tests switch glibc's mmap off),
# and a new block would reuse them instead of raising the peak.
_PROBE = """
import json, numpy as np, torch
from robust_mnv1.infra.peak_memory import peaks_mib, reset_peaks
cpu = torch.device("cpu")
reset_peaks(cpu)
start = peaks_mib(cpu)["peak_rss_mib"]
block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, every page written
grown = peaks_mib(cpu)["peak_rss_mib"]
del block
reset_peaks(cpu)
print(json.dumps([start, grown, peaks_mib(cpu)["peak_rss_mib"]]))
"""


@resettable
def test_the_peak_covers_what_was_touched_since_the_reset_and_no_more():
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    start, grown, after_reset = json.loads(probe.stdout)
    assert grown >= start + 60
    assert after_reset < grown - 30


def test_no_cuda_peak_on_the_cpu():
    assert reset_peaks(CPU) == os.access("/proc/self/clear_refs", os.W_OK)
    assert set(peaks_mib(CPU)) == {"peak_rss_mib"}
