"""Training-time adversaries: the losses of PGD-AT, fast-AT and TRADES as :data:`Objective` s.

These are the lean inner loops of adversarial *training*: no success bookkeeping, restarts or
validation, which the evaluation attacks in :mod:`attacks` need but a training step pays for on
every batch. Perturbations are crafted with the model in eval mode, so the attack's forward
passes do not move BN running statistics, then the model is trained on them in train mode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from robust_mnv1.infra.errors import UserError
from robust_mnv1.infra.units import eps as to_pixels
from robust_mnv1.training.fit import Objective

METHODS = ("pgd", "fgsm_rs", "trades")


def linf_ascent(
    model: torch.nn.Module,
    x: torch.Tensor,
    delta: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    eps: float,
    step: float,
    steps: int,
) -> torch.Tensor:
    """Signed-gradient ascent on ``loss_fn(logits)`` from ``delta``, kept in the L-inf ball and [0, 1]."""
    was_training = model.training
    model.eval()
    # A random start near a black or white pixel leaves [0, 1]; no forward may see such an input.
    delta = (x + delta).clamp(0, 1) - x
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = loss_fn(model(x + delta).float())
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step * grad.sign()).clamp_(-eps, eps)
            delta = (x + delta).clamp_(0, 1) - x
    finally:
        model.train(was_training)
    return delta.detach()


def make_objective(fcfg: DictConfig, seed: int) -> Objective:
    """The fine-tuning loss named by ``fcfg.method``."""
    if fcfg.method not in METHODS:
        raise UserError(f"unknown finetune.method {fcfg.method!r}; valid choices: {', '.join(METHODS)}")
    eps, step = to_pixels(fcfg.eps_255), to_pixels(fcfg.step_255)
    if eps <= 0 or step <= 0:
        raise UserError(
            f"finetune.eps_255 and finetune.step_255 must be > 0, got {fcfg.eps_255}, {fcfg.step_255}"
        )
    generators: dict[str, torch.Generator] = {}
    epoch_seed = [seed]

    def set_epoch(epoch: int) -> None:
        # Random starts derive from (seed, epoch), like the loader's shuffle, so a run resumed at
        # an epoch boundary draws exactly what the uninterrupted run drew.
        generators.clear()
        epoch_seed[0] = seed * 1_000_003 + epoch

    def generator(device: torch.device) -> torch.Generator:
        if str(device) not in generators:
            generators[str(device)] = torch.Generator(device=device).manual_seed(epoch_seed[0])
        return generators[str(device)]

    def draw(x: torch.Tensor) -> torch.Tensor:
        """The random start of the inner attack (kept out of the step so a CUDA graph can replay it)."""
        gen = generator(x.device)
        if fcfg.method == "trades":
            return 0.001 * torch.randn(x.shape, generator=gen, device=x.device)
        return (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * eps

    def pgd(model, x, y, start):
        ce = lambda logits: F.cross_entropy(logits, y)
        delta = linf_ascent(model, x, start, ce, eps=eps, step=step, steps=fcfg.steps)
        logits = model(x + delta)
        return F.cross_entropy(logits.float(), y, label_smoothing=fcfg.label_smoothing), logits

    def trades(model, x, y, start):
        logits_clean = model(x)
        p_clean = F.softmax(logits_clean.detach().float(), dim=1)
        kl = lambda logits: F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="batchmean")
        delta = linf_ascent(model, x, start, kl, eps=eps, step=step, steps=fcfg.steps)
        robust = F.kl_div(
            F.log_softmax(model(x + delta).float(), dim=1),
            F.softmax(logits_clean.float(), dim=1),
            reduction="batchmean",
        )
        return F.cross_entropy(logits_clean.float(), y) + fcfg.beta * robust, logits_clean

    objective = {"pgd": pgd, "fgsm_rs": pgd, "trades": trades}[fcfg.method]
    objective.set_epoch = set_epoch
    objective.draw = draw
    objective.generator = generator  # whose state a run stopped inside an epoch saves and restores
    return objective
