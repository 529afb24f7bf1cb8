"""Checkpoints as safetensors plus a JSON sidecar, cache keys, and digests of trained weights.

Only safetensors is ever read: a pickle (``torch.save`` output) can run arbitrary code when
loaded, so a file that is not valid safetensors is refused, never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from robust_mnv1.infra.atomic import atomic_write, atomic_write_json
from robust_mnv1.infra.errors import UserError

# Pickle protocol 2+ streams start with 0x80; torch.save's zip container starts with "PK".
_PICKLE_MAGICS = (b"\x80", b"PK\x03\x04")
# The key, in both files of a checkpoint, of the save they were written by.
_SAVE = "save_id"


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` to ``path`` (safetensors) and ``meta`` to ``path.json``, each atomically.

    The sidecar is written last, so its presence means the weights beside it are complete.
    """
    path = Path(path)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # Each file is renamed into place atomically, but a kill between the two renames would pair these
    # weights with the previous save's sidecar: both name their save, and the reader compares.
    save = uuid.uuid4().hex
    atomic_write(path, lambda p: save_file(flat, str(p), metadata={"format": "pt", _SAVE: save}))
    atomic_write_json(sidecar(path), {**meta, _SAVE: save})
    return path


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`; refuse anything that is not safetensors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    pickled = UserError(
        f"refusing to load {path}: it is a pickle/torch.save file; only .safetensors checkpoints are read"
    )
    if path.suffix in {".pt", ".pth", ".pkl", ".ckpt"}:
        raise pickled
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
            save = (f.metadata() or {}).get(_SAVE)
    except (SafetensorError, OSError, ValueError) as e:
        # Only now look for pickle magic: a valid safetensors header length can start with 0x80.
        if head.startswith(_PICKLE_MAGICS):
            raise pickled from None
        raise UserError(
            f"corrupt checkpoint {path}: {str(e).splitlines()[0]}; delete it to retrain"
        ) from None
    meta_path = sidecar(path)
    if not meta_path.exists():
        return tensors, {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"corrupt checkpoint sidecar {meta_path}: {e}; delete it to retrain") from None
    # Checkpoints written before saves were named have the name in neither file.
    if meta.pop(_SAVE, None) != save:
        raise UserError(
            f"checkpoint {path} and its sidecar come from two different saves (a run stopped between "
            "writing them); delete both to retrain"
        )
    return tensors, meta


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load ``state`` read from ``path`` into ``model``; weights of another model are a corrupt checkpoint.

    ``load_state_dict`` would raise a multi-line RuntimeError (or, for a broadcastable shape, copy
    silently), so names and shapes are compared first.
    """
    expected = model.state_dict()
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing:
        problem = f"{len(missing)} tensors missing, e.g. {missing[0]}"
    elif extra:
        problem = f"{len(extra)} unexpected tensors, e.g. {extra[0]}"
    elif reshaped:
        k = reshaped[0]
        problem = f"{k} has shape {list(state[k].shape)}, not {list(expected[k].shape)}"
    else:
        model.load_state_dict(state)
        return
    raise UserError(f"corrupt checkpoint {path}: not this model's weights ({problem}); delete it to retrain")


def require_meta(meta: dict, keys: tuple[str, ...], path: str | Path) -> None:
    """The corrupt-sidecar error when the sidecar of ``path`` lacks any of ``keys``."""
    absent = [k for k in keys if k not in meta]
    if absent:
        raise UserError(
            f"corrupt checkpoint sidecar {sidecar(path)}: it lacks {', '.join(absent)}; delete it to retrain"
        )


def sidecar(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def cache_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (configs, seeds) naming a cached artifact."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def weights_digest(model: torch.nn.Module) -> str:
    """A short sha256 of ``model``'s state (names, dtypes, shapes, values), independent of device and
    memory format: run records carry it so that records of different weights are never combined."""
    return state_digest(model.state_dict())


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """:func:`weights_digest` of a model whose ``state_dict()`` is ``state`` (as a checkpoint holds it)."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{flat.dtype}:{tuple(t.shape)};".encode())
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
