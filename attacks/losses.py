"""Per-sample losses that attacks maximise.

Each returns one value per sample (shape ``[N]``), computed in float32 whatever the logits' dtype, so
that summing them for one backward pass gives every sample its own gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the true class, per sample."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest logit among the classes other than ``y``.

    The true class is masked with −inf rather than multiplied by zero: ``max((1 − onehot) · z)`` silently
    returns 0 instead of the best other logit whenever all the other logits are negative.
    """
    true_class = F.one_hot(y, logits.shape[1]).bool()
    return logits.masked_fill(true_class, float("-inf")).amax(dim=1)


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini–Wagner logit margin ``max_{j≠y} z_j − z_y``, per sample; positive means misclassified.

    Unlike cross-entropy its gradient does not vanish when the softmax saturates, which makes it the
    better loss against over-confident (or gradient-masking) models.
    """
    z = logits.float()
    return other_max(z, y) - z.gather(1, y[:, None]).squeeze(1)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss}

# Keeps the DLR ratios finite when the logits they divide by tie (a constant model, say).
_DLR_FLOOR = 1e-12


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein, 2020): ``(max_{j≠y} z_j − z_y) / (z_π1 − z_π3)``.

    ``π`` sorts the logits in decreasing order. Dividing the margin by a spread of the logits makes the
    loss invariant to shifting and rescaling them, so a model cannot hide behind a saturated softmax or
    a large logit scale. Needs at least 3 classes.
    """
    z = logits.float()
    top = z.topk(3, dim=1).values
    return margin_loss(z, y) / (top[:, 0] - top[:, 2] + _DLR_FLOOR)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein, 2020): ``(z_t − z_y) / (z_π1 − (z_π3 + z_π4) / 2)``, target ``t``.

    Positive once the target's logit beats the true one. Needs at least 4 classes.
    """
    z = logits.float()
    top = z.topk(4, dim=1).values
    gap = (z.gather(1, target[:, None]) - z.gather(1, y[:, None])).squeeze(1)
    return gap / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_FLOOR)


def value_and_grad(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, per-sample loss and its gradient with respect to ``x``, from one forward and one backward.

    Gradients are taken with ``torch.autograd.grad`` for ``x`` alone, so nothing accumulates in the
    model's parameters, and grad mode is forced on so the attack also works under ``torch.no_grad()``.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        loss = loss_fn(logits, y)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return logits.detach(), loss.detach(), grad
