"""Projected Gradient Descent with random restarts, best-iterate tracking and per-sample early exit.

Per-sample bookkeeping is done with masks and ``torch.where``. The only host-device synchronisations
are one per restart (which samples are still unbroken) and one every ``CHECK_EVERY`` steps, where the
samples already broken are dropped from the working batch, once they are at least ``COMPACT_FRACTION``
of it, so that later steps stop paying for them (``attacks.working_set``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from attacks.backends import PEERS
from attacks.backends.art import ART_NORMS
from attacks.fixed_eps import IterativeAttack, RunLoss
from attacks.losses import LOSSES
from attacks.projection import ascent_step, project_to_box
from attacks.validation import check_float
from attacks.working_set import BestIterateSet


class PGD(IterativeAttack):
    """Untargeted PGD (Madry et al., 2018) in the linf or l2 ball, maximising ``loss``.

    For each sample the returned point is the first adversarial iterate found (over all steps and
    restarts); for samples never broken it is the iterate with the highest loss, so the result is never
    weaker than any intermediate step. Restarts only rerun samples that are still unbroken.

    Args:
        eps: radius of the threat model (≥ 0), for images in [0, 1].
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps per restart (≥ 1).
        step_size: step length; ``None`` means ``2.5 · eps / steps``.
        random_start: start from a point drawn uniformly from the ball (else from ``x``).
        restarts: independent random starts (≥ 1; more than one needs ``random_start``).
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (C&W logit margin; native backend only).
        backend: ``"native"``, ``"foolbox"`` (``LinfPGD`` / ``L2PGD``) or ``"art"``
            (``ProjectedGradientDescentPyTorch``).
        batch_size: samples per forward/backward pass.
        seed: seed of the random starts; the same seed gives the same result on the same device.
    """

    name = "PGD"
    peers = PEERS

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        steps: int = 20,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        backend: str = "native",
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(
            eps=eps,
            norm=norm,
            steps=steps,
            restarts=restarts,
            random_start=random_start,
            seed=seed,
            backend=backend,
            batch_size=batch_size,
        )
        self.step_size = (
            2.5 * self.eps / self.steps
            if step_size is None
            else check_float("step_size", step_size, strict=True)
        )
        self.loss = self._check_loss(loss, LOSSES)

    def _objectives(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> Iterator[tuple[RunLoss, torch.Tensor | None]]:
        loss_fn = LOSSES[self.loss]
        yield (lambda logits, ws: loss_fn(logits, ws.y)), None

    def _run_once(self, model: nn.Module, ws: BestIterateSet, loss_fn: RunLoss) -> None:
        """``steps`` projected steps of ``step_size`` from ``ws.xa``; the last iterate is only evaluated."""
        for t in range(self.steps + 1):
            _, grad = self._evaluate(model, ws, loss_fn, with_grad=t < self.steps)
            if t == self.steps:
                break
            step = self.step_size * ascent_step(grad, self.norm)
            ws.xa = project_to_box(ws.x0, ws.xa + step, self.eps, self.norm)
            if not ws.drop_found(t + 1):
                return
        ws.store()

    def _foolbox_attack(self) -> tuple[Any, float]:
        """foolbox's PGD with our step size and steps; ``repeat`` keeps the first successful restart."""
        import foolbox as fb

        pgd = (
            fb.attacks.LinfProjectedGradientDescentAttack
            if self.norm == "linf"
            else fb.attacks.L2ProjectedGradientDescentAttack
        )
        fb_attack = pgd(abs_stepsize=self.step_size, steps=self.steps, random_start=self.random_start)
        return (fb_attack.repeat(self.restarts) if self.restarts > 1 else fb_attack), self.eps

    def _art_attack(self, classifier: Any, batch_size: int) -> Any | None:
        """ART's PGD, or None for ``eps=0``: ART rejects a zero step, and ``x`` is then the answer."""
        from art.attacks.evasion import ProjectedGradientDescentPyTorch

        if self.eps == 0:
            return None
        return ProjectedGradientDescentPyTorch(
            classifier,
            norm=ART_NORMS[self.norm],
            eps=self.eps,
            eps_step=self.step_size,
            max_iter=self.steps,
            num_random_init=self.restarts if self.random_start else 0,
            batch_size=batch_size,
            verbose=False,
        )
