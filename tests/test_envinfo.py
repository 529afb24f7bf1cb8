"""The commit a record names: dirty only when the code changed, not when results were written."""

import subprocess

import pytest

from robust_mnv1.infra.envinfo import git_commit


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUST_MNV1_GIT_COMMIT", raising=False)
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "leaderboard.md").write_text("old board\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return tmp_path


def _head(root):
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout[:12]


def test_a_clean_checkout_names_its_commit(repo):
    assert git_commit(repo) == _head(repo)


def test_records_and_boards_written_under_results_leave_the_commit_clean(repo):
    (repo / "results" / "leaderboard.md").write_text("new board\n")
    assert git_commit(repo) == _head(repo)


def test_a_changed_code_file_makes_it_dirty(repo):
    (repo / "code.py").write_text("x = 2\n")
    assert git_commit(repo) == _head(repo) + "-dirty"


def test_the_environment_variable_wins_for_code_copied_without_git(repo, monkeypatch):
    monkeypatch.setenv("ROBUST_MNV1_GIT_COMMIT", "0123456789ab")
    assert git_commit(repo) == "0123456789ab"


def test_no_git_repository_gives_none(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUST_MNV1_GIT_COMMIT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit(tmp_path) is None
