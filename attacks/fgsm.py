"""Fast Gradient (Sign) Method: one steepest-ascent step of size ``eps`` (Goodfellow et al., 2015)."""

from __future__ import annotations

import torch
from torch import nn

from attacks.base import Attack
from attacks.losses import LOSSES, value_and_grad
from attacks.projection import NORMS, ascent_step, project_to_box
from attacks.validation import check_choice, check_float


class FGSM(Attack):
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

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        loss: str = "ce",
        backend: str = "native",
        batch_size: int = 512,
    ) -> None:
        super().__init__(backend=backend, batch_size=batch_size)
        self.eps = check_float("eps", eps)
        self.norm = check_choice("norm", norm, NORMS)
        self.loss = check_choice("loss", loss, tuple(LOSSES))
        if self.loss != "ce" and self.backend != "native":
            raise ValueError(
                f"loss={loss!r} is not available with backend={backend!r}: that library's fast gradient "
                "method only uses cross-entropy; use backend='native'"
            )

    def _native(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        todo: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        # A single step costs the same on every sample, so masking afterwards beats a synchronising gather.
        _, _, grad = value_and_grad(model, x, y, LOSSES[self.loss])
        x_adv = (x + self.eps * ascent_step(grad, self.norm)).clamp(0.0, 1.0)
        return torch.where(todo.view(-1, *([1] * (x.dim() - 1))), x_adv, x)

    def _constrain(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return project_to_box(x, x_adv, self.eps, self.norm)
