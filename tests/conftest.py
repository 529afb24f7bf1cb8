"""Shared fixtures: every test gets its own model/data cache, so nothing leaks between tests."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("ROBUST_MNV1_CACHE", str(path))
    return path
