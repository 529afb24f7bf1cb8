"""Faults met while a run works: a full disk. It is one line and leaves nothing half-written behind."""

import errno
import functools

import pytest
import torch
from safetensors import SafetensorError

import robust_mnv1.checkpoint as checkpoint
import robust_mnv1.train as train_module
from robust_mnv1.checkpoint import save_checkpoint
from robust_mnv1.cli import compose_config, user_errors_exit
from robust_mnv1.data import Split
from robust_mnv1.models import build_model
from robust_mnv1.train import cross_entropy_objective, fit

from ._mounts import tmpfs
from .conftest import run_cli

CPU = torch.device("cpu")


def tiny_split(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return Split(x, torch.arange(n) % 10)


def recipe(*overrides):
    return compose_config(["experiment=quickstart", "train.batch_size=32", *overrides]).train


def train(run_dir, *, epochs=1, alpha=0.25, objective=None):
    torch.manual_seed(0)
    model = build_model(alpha=alpha)
    meta = fit(
        model,
        tiny_split(),
        tiny_split(32, seed=1),
        recipe(f"train.epochs={epochs}"),
        device=CPU,
        seed=0,
        run_dir=run_dir,
        objective=objective or cross_entropy_objective(),
        desc="tiny",
    )
    return model, meta


def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def one_line_exit(capsys, fn, code):
    with pytest.raises(SystemExit) as e:
        user_errors_exit(fn)()
    assert e.value.code == code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def half_then(error):
    """A writer that gets half a file onto the disk before ``error`` stops it, as a full disk does."""

    def write(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\0" * 100)
        raise error

    return write


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
    ids=["OSError", "SafetensorError"],
)
def test_full_disk_mid_training_is_one_line_and_leaves_no_partial_file(error, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint, "save_file", half_then(error))
    # Captured stderr is no terminal, where the bars would stay behind as lines of their own.
    monkeypatch.setattr(train_module, "tqdm", functools.partial(train_module.tqdm, disable=True))
    line = one_line_exit(capsys, lambda: train(tmp_path / "run", epochs=2), code=1)
    assert "No space left on device" in line
    assert files(tmp_path) == ["run/.lock"]  # the lock of the training run, never a checkpoint or temp file


def test_an_error_that_is_no_filesystem_fault_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "save_file", half_then(OSError(errno.EBADF, "Bad file descriptor")))
    with pytest.raises(OSError, match="Bad file descriptor"):
        user_errors_exit(lambda: save_checkpoint(tmp_path / "m.safetensors", {}, {}))()
    assert files(tmp_path) == []


def test_full_disk_from_the_command_line(tmp_path):
    """A real full disk (a 256 KiB tmpfs) under the cache: the decoded digits do not fit."""
    with tmpfs(tmp_path / "full", "size=256k") as full:
        proc = run_cli("experiment=quickstart", "task=train", f"hydra.run.dir={tmp_path}/out", cache=full)
        assert proc.returncode == 1, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "No space left on device" in lines[0], proc.stderr
        assert files(full) == []
