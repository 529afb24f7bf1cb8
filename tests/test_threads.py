"""threads=auto: one torch thread per core that other processes leave idle."""

import os

import pytest
import torch

from robust_mnv1.infra import threads


@pytest.fixture
def two_cores(monkeypatch):
    """A 2-core CPU set whose /proc/stat readings a test scripts: (total, idle) jiffies per reading."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_WINDOW_S", 0.0)

    def script(*readings):
        it = iter(readings)
        monkeypatch.setattr(threads, "_cpu_ticks", lambda cpus: next(it))

    return script


@pytest.mark.parametrize(
    ("idle_ticks", "expected"),
    [(200, 2), (150, 2), (100, 1), (40, 1), (0, 1)],  # of 200 ticks over 2 cores: 0, 0.5, 1, 1.6, 2 busy
)
def test_auto_takes_the_idle_cores_and_at_least_one(two_cores, idle_ticks, expected):
    two_cores((1000, 500), (1200, 500 + idle_ticks))
    assert threads.choose_threads("auto") == expected


def test_a_count_is_taken_as_given_and_omp_num_threads_wins_over_auto(two_cores, monkeypatch):
    assert threads.choose_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose_threads("auto") == torch.get_num_threads()


def test_unreadable_proc_stat_falls_back_to_every_core(two_cores, monkeypatch):
    def unreadable(cpus):
        raise OSError("no /proc")

    monkeypatch.setattr(threads, "_cpu_ticks", unreadable)
    assert threads.choose_threads("auto") == 2


def test_busy_cores_reads_this_machine():
    busy = threads.busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= len(os.sched_getaffinity(0))
