"""Shared fixtures: every test gets its own model/data cache, so nothing leaks between tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Under pytest-xdist, split the cores between the workers, for their own torch and for the CLI
    runs they start: torch's default of one thread per core in every worker oversubscribes the CPU,
    and its threads then stall on each other (bench/load_bench.py)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers and "OMP_NUM_THREADS" not in os.environ:
        import torch

        from robust_mnv1.infra.threads import usable_cores

        threads = max(1, usable_cores() // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """The whole-study tests, the longest module by far, run first: under pytest-xdist one worker
    takes them at once while the others share the rest, instead of them starting last and alone."""
    items.sort(key=lambda item: item.path.name != "test_study.py")


@pytest.fixture(scope="session")
def tiny_models_cache(tmp_path_factory) -> Path:
    """A model cache holding tests/_tiny.py's model and its fine-tune, trained once per session; tests
    take a copy of it (``_tiny.copy_tiny``) and never write to it."""
    from ._tiny import train_tiny

    cache = tmp_path_factory.mktemp("tiny-models")
    train_tiny(cache)
    return cache


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test's own model/data cache, so that no test reads or writes the user's."""
    path = tmp_path / "cache"
    monkeypatch.setenv("ROBUST_MNV1_CACHE", str(path))
    return path


def run_cli(*args: str, cache: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m robust_mnv1.run ARGS`` from the repo root, as a user would type it."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "", "PYTHONUNBUFFERED": "1"}
    if cache is not None:
        env["ROBUST_MNV1_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "-m", "robust_mnv1.run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
