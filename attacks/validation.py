"""Argument and input validation: every mistake raises ``ValueError`` naming the bad argument.

Constructor arguments are checked when an attack is built; tensors are checked at call time, before
the model runs, so a bad batch never costs a forward pass.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_int(name: str, value: int, *, minimum: int) -> int:
    """Return ``value`` if it is an int (not a bool) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def check_float(name: str, value: float, *, minimum: float = 0.0, strict: bool = False) -> float:
    """Return ``value`` as float if it is a finite real number ``>= minimum`` (``> minimum`` if strict)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}; got {value!r}")
    return float(value)


def check_bool(name: str, value: bool) -> bool:
    """Return ``value`` if it is a bool (so ``random_start="no"`` does not silently mean True)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return value


def validate_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a batch before attacking it; return detached ``x`` and int64 ``y``.

    Requires a float ``x`` shaped ``[N, ...]`` with N ≥ 1, finite and inside [0, 1]; integer labels
    shaped ``[N]`` on the same device; and a model whose parameters (if any) live on that device.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if torch.is_inference_mode_enabled():
        raise ValueError(
            "attacks need input gradients, which torch.inference_mode() disables: call the attack outside "
            "it (under torch.no_grad() is fine, attacks turn gradients back on where they need them)"
        )
    if any(t.is_inference() for t in itertools.chain(model.parameters(), model.buffers())):
        raise ValueError(
            "the model's parameters or buffers were made under torch.inference_mode(), and autograd cannot "
            "differentiate through such tensors: build or load the model outside inference mode"
        )
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor of images in [0, 1]")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be shaped [N, ...] with N >= 1; got shape {tuple(x.shape)}")
    if (
        not isinstance(y, torch.Tensor)
        or y.dtype.is_floating_point
        or y.dtype.is_complex
        or y.dtype == torch.bool
    ):
        raise ValueError("y must be an integer tensor of class labels")
    if y.shape != (x.shape[0],):
        raise ValueError(
            f"y must have shape ({x.shape[0]},) to match x {tuple(x.shape)}; got {tuple(y.shape)}"
        )
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x is on {x.device}; put them on the same device")
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    if tensor is not None and tensor.device != x.device:
        raise ValueError(f"model is on {tensor.device} but x is on {x.device}; put them on the same device")
    # A tensor made under inference mode cannot enter autograd; a copy made outside it can.
    x = x.clone() if x.is_inference() else x.detach()
    y = y.clone() if y.is_inference() else y
    # One synchronisation, before any work: NaN fails both comparisons, so it is caught here too.
    if not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError("x must lie in [0, 1] with no NaN; normalisation belongs inside the model")
    return x, y.detach().long()


def check_output(output: object) -> torch.Tensor:
    """Return ``output`` if the model returned one tensor (not a tuple, dict or model-output object)."""
    if not isinstance(output, torch.Tensor):
        raise ValueError(
            f"model must return one logits tensor; got {type(output).__name__}. Wrap a model that returns "
            "several outputs in a module whose forward returns only the logits, e.g. model(x)[0]"
        )
    return output


def check_logits(logits: torch.Tensor, y: torch.Tensor) -> None:
    """Check the model returned ``[N, num_classes]`` logits and that every label indexes a class."""
    if logits.dim() != 2 or logits.shape[0] != y.shape[0] or logits.shape[1] < 2:
        raise ValueError(
            f"model must return logits shaped [N, num_classes >= 2]; "
            f"got {tuple(logits.shape)} for N={y.shape[0]}"
        )
    if bool((y < 0).any() | (y >= logits.shape[1]).any()):
        raise ValueError(f"y must hold class indices in [0, {logits.shape[1] - 1}]")
