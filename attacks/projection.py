"""Geometry shared by the attacks: norm balls, projections and steepest-ascent steps, all batched.

Every function works per sample on tensors shaped ``[N, ...]`` with tensor ops only, so none of them
synchronises with the device.
"""

from __future__ import annotations

import torch

NORMS = ("linf", "l2")

# Floor for per-sample norms before dividing: a zero gradient must give a zero step, not NaN.
_TINY = 1e-12


def _per_sample_l2(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps`` (rescaling for l2)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _per_sample_l2(delta).clamp_min(_TINY)).clamp(max=1.0)
    return delta * scale


def project_to_box(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Bring ``x_adv`` into the ``eps`` ball around ``x`` and then into [0, 1].

    Clipping to the box after the ball is safe for both norms: clipping moves each coordinate of the
    perturbation towards zero, so its norm can only shrink.
    """
    return (x + project(x_adv - x, eps, norm)).clamp(0.0, 1.0)


def ascent_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Unit steepest-ascent direction: the gradient's sign for linf, the normalised gradient for l2."""
    if norm == "linf":
        return grad.sign()
    return grad / _per_sample_l2(grad).clamp_min(_TINY)


def random_in_ball(
    shape: torch.Size, eps: float, norm: str, *, generator: torch.Generator, dtype: torch.dtype, device
) -> torch.Tensor:
    """Points drawn uniformly from the ``norm`` ball of radius ``eps`` (one per sample).

    For l2 the direction is a normalised Gaussian and the radius ``eps · U^(1/d)``: drawing the radius
    uniformly instead would crowd the samples near the centre of a high-dimensional ball.
    """
    if norm == "linf":
        u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
        return (2.0 * u - 1.0) * eps
    g = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    direction = g / _per_sample_l2(g).clamp_min(_TINY)
    dim = direction[0].numel()
    u = torch.rand((shape[0],), generator=generator, dtype=dtype, device=device)
    radius = eps * u.pow(1.0 / dim)
    return direction * radius.view(-1, *([1] * (len(shape) - 1)))
