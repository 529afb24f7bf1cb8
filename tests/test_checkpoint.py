"""Checkpoints: safetensors round trip, atomic writes, and refusal of anything pickled or corrupt."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from robust_mnv1.infra.errors import UserError
from robust_mnv1.training.checkpoint import (
    cache_key,
    load_checkpoint,
    save_checkpoint,
    sidecar,
    weights_digest,
)


def test_round_trip(tmp_path):
    tensors = {"w": torch.randn(3, 4), "n": torch.arange(5)}
    path = save_checkpoint(tmp_path / "m.safetensors", tensors, {"acc": 0.5, "history": [1, 2]})
    loaded, meta = load_checkpoint(path)
    assert meta == {"acc": 0.5, "history": [1, 2]}
    assert loaded.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(loaded[k], tensors[k])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "m.safetensors.json"]


def test_weights_and_a_sidecar_of_another_save_are_refused(tmp_path):
    """As left by a run stopped after writing the weights of a save and before writing its sidecar."""
    path = save_checkpoint(tmp_path / "last.safetensors", {"w": torch.zeros(2)}, {"epoch": 1})
    earlier = sidecar(path).read_text()
    save_checkpoint(path, {"w": torch.ones(2)}, {"epoch": 2})
    sidecar(path).write_text(earlier)
    with pytest.raises(UserError, match="come from two different saves") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    # Written before saves were named: neither file names one, and the pair loads.
    save_file({"w": torch.ones(2)}, str(path), metadata={"format": "pt"})
    sidecar(path).write_text(json.dumps({"epoch": 2}))
    tensors, meta = load_checkpoint(path)
    assert meta == {"epoch": 2} and torch.equal(tensors["w"], torch.ones(2))


def test_refuses_torch_save_pickle(tmp_path):
    for name in ("m.safetensors", "m.pt"):
        path = tmp_path / name
        torch.save({"w": torch.zeros(2)}, path)
        with pytest.raises(UserError, match="pickle") as e:
            load_checkpoint(path)
        assert "\n" not in str(e.value)


def test_loads_safetensors_whose_first_byte_looks_like_pickle(tmp_path):
    """A safetensors file opens with its header length; one of 0x..80 bytes starts with pickle's 0x80."""
    for width in range(1, 400):
        path = save_checkpoint(tmp_path / "m.safetensors", {"w" * width: torch.zeros(2)}, {})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no tensor name gave a header length with low byte 0x80")
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded["w" * width], torch.zeros(2))


def test_refuses_raw_pickle(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(UserError, match="pickle"):
        load_checkpoint(path)


def test_corrupt_file_is_one_line_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.randn(64)}, {})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError, match="corrupt checkpoint") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_corrupt_sidecar(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.randn(4)}, {"a": 1})
    sidecar(path).write_text("{not json")
    with pytest.raises(UserError, match="sidecar"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_cache_key_is_stable_and_order_free():
    assert cache_key({"a": 1, "b": 2}, 3) == cache_key({"b": 2, "a": 1}, 3)
    assert cache_key({"a": 1}, 3) != cache_key({"a": 1}, 4)


def test_weights_digest_follows_values_not_layout():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    digest = weights_digest(model)
    assert len(digest) == 16 and digest == weights_digest(model)
    assert weights_digest(model.to(memory_format=torch.channels_last)) == digest
    model[1].running_mean[0] += 1e-6  # buffers count: BN statistics are part of the model
    assert weights_digest(model) != digest
