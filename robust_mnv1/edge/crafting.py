"""Adversarial examples crafted on the PyTorch fp32 model and carried to the deployed files: PGD with the
protocol's settings, returning the examples themselves, and which images a model gets right."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from attacks.base import model_hygiene, predict_logits
from attacks.losses import LOSSES, value_and_grad
from attacks.projection import ascent_step, project_to_box, random_in_ball
from robust_mnv1.evaluation.specs import PGDSpec
from robust_mnv1.infra.units import eps


def craft_pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: PGDSpec,
    eps_255: Iterable[float],
    seed: int,
    *,
    early_exit: bool,
) -> dict[float, tuple[torch.Tensor, np.ndarray]]:
    """PGD examples on ``model`` at each eps of ``eps_255``: ``{eps: (x_adv, robust)}``, where
    ``robust`` marks the images ``model`` still classifies correctly on their example (white-box).

    ``spec`` is the protocol's PGD: its loss, steps, step size (2.5·eps/steps), random start, restarts and
    ``seed`` make the examples. The margin-loss stage the protocol adds at some eps is left out, so
    that every example comes from one loss.

    With ``early_exit`` the examples are the protocol's own (:func:`robust_mnv1.evaluation.protocol.run_pgd`):
    each image's first adversarial iterate, the eps grid walked upwards (up to the largest eps asked
    for), each eps attacking only the images the previous one left robust; an image broken at a
    smaller eps keeps the example that broke it, which lies inside every larger ball, and images
    ``model`` misclassifies come back unchanged. Without it (:func:`pgd_last_iterate`) every image
    gets every step at each eps and keeps the last iterate: an example pushed past the boundary
    rather than just across it, as an attacker who cannot query the target would make it.
    """
    wanted = set(eps_255)
    if not early_exit:
        out = {}
        for e in sorted(wanted):
            x_adv = pgd_last_iterate(model, x, y, spec, e, seed)
            out[e] = (x_adv, correct_on(model, x_adv, y, spec.batch_size))
        return out
    x_adv, out = x.clone(), {}
    alive = torch.ones(len(y), dtype=torch.bool, device=y.device)
    for e in sorted(spec.eps_255):
        if e > max(wanted):
            break
        robust = torch.zeros_like(alive)
        idx = alive.nonzero().squeeze(1)
        if idx.numel():
            res = spec.attack(e, seed)(model, x[idx], y[idx])
            x_adv = x_adv.clone()  # the smaller eps's examples, already handed out, stay as they are
            x_adv[idx] = res.x_adv
            robust[idx] = res.clean_correct & ~res.success
        if e in wanted:
            out[e] = (x_adv, robust.cpu().numpy())
        alive = robust
    return out


def pgd_last_iterate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, spec: PGDSpec, eps_255: float, seed: int
) -> torch.Tensor:
    """PGD with ``spec``'s settings run for all its steps on every image, returning the last
    iterate (of the restart whose last iterate has the highest loss).

    The attack library's PGD stops an image at its first adversarial iterate, the weakest example
    that fools ``model``; rounding in another model (int8, or another network) undoes many of those.
    Its random starts come from one generator seeded with ``seed``, batch after batch.
    """
    radius, loss_fn = eps(eps_255), LOSSES[spec.loss]
    step = 2.5 * radius / spec.steps
    generator = torch.Generator(device=x.device).manual_seed(seed)
    chunks = []
    with model_hygiene(model):
        for xb, yb in zip(x.split(spec.batch_size), y.split(spec.batch_size), strict=True):
            best, best_loss = xb.clone(), torch.full((len(yb),), -torch.inf, device=xb.device)
            for _ in range(spec.restarts):
                xa = xb.clone()
                if spec.random_start:
                    noise = random_in_ball(
                        xb.shape, radius, "linf", generator=generator, dtype=xb.dtype, device=xb.device
                    )
                    xa = (xb + noise).clamp(0.0, 1.0)
                for _ in range(spec.steps):
                    _, _, grad = value_and_grad(model, xa, yb, loss_fn)
                    xa = project_to_box(xb, xa + step * ascent_step(grad, "linf"), radius, "linf")
                with torch.no_grad():
                    loss = loss_fn(model(xa), yb)
                better = loss > best_loss
                best[better], best_loss[better] = xa[better], loss[better]
            chunks.append(best)
    return torch.cat(chunks)


def correct_on(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> np.ndarray:
    """Which of ``x`` (on the model's device) ``model``, in eval mode, assigns its label in ``y``."""
    model.eval()
    return (predict_logits(model, x, batch_size).argmax(1) == y).cpu().numpy()
