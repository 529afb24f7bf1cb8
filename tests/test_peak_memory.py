"""A unit's peak memory: reset when the unit starts, so a worker's earlier units do not set it."""

import sys

import numpy as np
import pytest
import torch

from robust_mnv1.infra.peak_memory import peaks_mib, reset_peaks

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the resident peak comes from /proc")


def test_the_peak_covers_what_was_touched_since_the_reset_and_no_more():
    reset_peaks(CPU)
    start = peaks_mib(CPU)["peak_rss_mib"]
    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, every page written
    grown = peaks_mib(CPU)["peak_rss_mib"]
    del block
    assert grown >= start + 60
    reset_peaks(CPU)
    assert peaks_mib(CPU)["peak_rss_mib"] < grown - 30


def test_no_cuda_peak_on_the_cpu():
    reset_peaks(CPU)
    assert set(peaks_mib(CPU)) == {"peak_rss_mib"}
