"""Fast Gradient (Sign) Method: one steepest-ascent step of size ``eps`` (Goodfellow et al., 2015)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attacks.backends import PEERS
from attacks.backends.art import ART_NORMS
from attacks.base import QueryCounter, model_hygiene
from attacks.fixed_eps import FixedEpsAttack
from attacks.losses import LOSSES, value_and_grad
from attacks.projection import ascent_step
from attacks.result import AttackResult
from attacks.validation import validate_inputs


class FGSM(FixedEpsAttack):
    """One-step attack: ``x + eps·sign(∇loss)`` (linf) or ``x + eps·∇loss/‖∇loss‖₂`` (l2), clipped to [0, 1].

    Args:
        eps: perturbation budget (≥ 0) in the chosen norm, for images in [0, 1].
        norm: ``"linf"`` (FGSM proper) or ``"l2"`` (the fast gradient method).
        loss: ``"ce"`` or ``"margin"`` (native backend only).
        backend: ``"native"``, ``"foolbox"`` (``LinfFastGradientAttack`` / ``L2FastGradientAttack``) or
            ``"art"`` (``FastGradientMethod``).
        batch_size: samples per forward/backward pass.
    """

    name = "FGSM"
    peers = PEERS

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        loss: str = "ce",
        backend: str = "native",
        batch_size: int = 512,
    ) -> None:
        super().__init__(eps=eps, norm=norm, backend=backend, batch_size=batch_size)
        self.loss = self._check_loss(loss, LOSSES)

    @classmethod
    def over_eps(
        cls,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: Sequence[float],
        *,
        norm: str = "linf",
        loss: str = "ce",
        batch_size: int = 512,
    ) -> list[AttackResult]:
        """``[FGSM(eps=e, ...)(model, x, y) for e in eps]``, bit for bit, from one gradient per sample.

        The step's direction does not depend on eps, so the forward and backward pass is shared and each
        eps adds only the forward pass that judges it: about a third of the cost for five eps. Every
        result reports the shared gradient's queries, and its ``seconds`` include the gradient's time.
        Native backend only.
        """
        attacks = [cls(eps=e, norm=norm, loss=loss, batch_size=batch_size) for e in eps]
        if not attacks:
            return []
        x, y = validate_inputs(model, x, y)
        first = attacks[0]
        with model_hygiene(model):
            clean_correct, _ = first._clean_correct(model, x, y)
            counter = QueryCounter(model)
            start = time.perf_counter()
            direction = torch.cat(
                [
                    first._direction(counter, x[i : i + batch_size], y[i : i + batch_size])
                    for i in range(0, x.shape[0], batch_size)
                ]
            )
            results = []
            for a in attacks:
                x_adv = a._step(x, direction, clean_correct)
                results.append(a._result(model, x, y, x_adv, clean_correct, counter.count, start))
            return results

    def _direction(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The unit step (sign of the gradient, or the normalised gradient) that every eps scales."""
        _, _, grad = value_and_grad(model, x, y, LOSSES[self.loss])
        return ascent_step(grad, self.norm)

    def _step(self, x: torch.Tensor, direction: torch.Tensor, todo: torch.Tensor) -> torch.Tensor:
        # A single step costs the same on every sample, so masking afterwards beats a synchronising gather.
        x_adv = (x + self.eps * direction).clamp(0.0, 1.0)
        return torch.where(todo.view(-1, *([1] * (x.dim() - 1))), x_adv, x)

    def _native(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        todo: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        return self._step(x, self._direction(model, x, y), todo)

    def _foolbox_attack(self) -> tuple[Any, float]:
        """foolbox's fast gradient attack for the norm, from ``x`` itself."""
        import foolbox as fb

        fgm = fb.attacks.LinfFastGradientAttack if self.norm == "linf" else fb.attacks.L2FastGradientAttack
        return fgm(random_start=False), self.eps

    def _art_attack(self, classifier: Any, batch_size: int) -> Any:
        """ART's fast gradient method for the norm."""
        from art.attacks.evasion import FastGradientMethod

        # ART insists on a positive eps_step even though plain FGM never reads it.
        return FastGradientMethod(
            classifier,
            norm=ART_NORMS[self.norm],
            eps=self.eps,
            eps_step=self.eps or 1.0,
            batch_size=batch_size,
        )
