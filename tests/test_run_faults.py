"""Faults met while a run works: a full disk, checkpoints of another model, leftovers of a killed run,
a diverging loss. Each is one line (or a one-line UserError) and leaves nothing half-written behind."""

import errno
import functools
import logging

import pytest
import torch
from safetensors import SafetensorError

import robust_mnv1.training.checkpoint as checkpoint
import robust_mnv1.training.fit as train_module
from robust_mnv1.config.compose import compose_config, user_errors_exit
from robust_mnv1.data import Split
from robust_mnv1.infra.errors import UserError
from robust_mnv1.models import build_model
from robust_mnv1.training.checkpoint import save_checkpoint, sidecar
from robust_mnv1.training.fit import cross_entropy_objective, fit

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


@pytest.mark.parametrize(
    "state, needle",
    [
        ({"w": torch.zeros(3)}, "tensors missing"),
        ("extra", "unexpected tensors, e.g. extra.w"),
        ("wider", "has shape"),
    ],
)
def test_final_checkpoint_of_another_model_is_the_corrupt_checkpoint_error(state, needle, tmp_path):
    model = build_model(alpha=0.25)
    if state == "extra":
        state = {**model.state_dict(), "extra.w": torch.zeros(1)}
    elif state == "wider":
        state = build_model(alpha=0.5).state_dict()
    final = save_checkpoint(tmp_path / "run" / "final.safetensors", state, {"test_acc": 0.5})
    with pytest.raises(UserError, match=f"corrupt checkpoint {final}: not this model's weights") as e:
        train(tmp_path / "run")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_last_checkpoint_of_another_model_is_the_corrupt_checkpoint_error(tmp_path):
    wider = {f"model.{k}": v for k, v in build_model(alpha=0.5).state_dict().items()}
    save_checkpoint(tmp_path / "run" / "last.safetensors", wider, {"epoch": 1, "history": [], "elapsed": 0})
    with pytest.raises(UserError, match=r"corrupt checkpoint .*last\.safetensors: not this model's weights"):
        train(tmp_path / "run", epochs=2)


def test_sidecar_without_the_fields_a_run_reads_is_corrupt(tmp_path):
    model = build_model(alpha=0.25)
    save_checkpoint(tmp_path / "run" / "final.safetensors", model.state_dict(), {"unrelated": 1})
    with pytest.raises(
        UserError, match=r"corrupt checkpoint sidecar .*lacks test_acc, train_seconds, history"
    ):
        train(tmp_path / "run")


def test_stale_partial_checkpoints_are_removed_once_a_final_one_exists(tmp_path):
    """A kill between writing final and deleting last leaves both; the next run cleans up."""
    run = tmp_path / "run"
    _, meta = train(run)
    stale = [run / "last.safetensors", sidecar(run / "last.safetensors"), run / ".final.safetensors.x.1.tmp"]
    for path in stale:
        path.write_bytes(b"left by a killed run")
    _, meta2 = train(run)
    assert not meta2["trained"] and meta2["test_acc"] == meta["test_acc"]
    assert files(run) == [".lock", "final.safetensors", "final.safetensors.json"]


def test_epoch_lines_go_through_logging(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="robust_mnv1.training.fit"):
        train(tmp_path / "run", epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "robust_mnv1.training.fit"]
    assert [line.split(":")[0] for line in lines] == ["tiny epoch 1/2", "tiny epoch 2/2"]
    assert "test_acc" in lines[-1]


def test_a_diverged_loss_stops_training_before_anything_is_saved(tmp_path):
    def nan_loss(model, x, y):
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits, y) * float("nan"), logits

    with pytest.raises(UserError, match=r"tiny: training diverged \(loss nan in epoch 1\)"):
        train(tmp_path / "run", epochs=2, objective=nan_loss)
    assert files(tmp_path) == ["run/.lock"]
