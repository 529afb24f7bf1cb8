"""Auto-PGD (Croce & Hein, ICML 2020): PGD whose step size adapts itself, untargeted and targeted.

"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks"
(arXiv:2003.01690), Algorithm 1, written from the paper. Per sample, from a start ``x⁽⁰⁾`` in the ball:

* ``z = P(x⁽ᵏ⁾ + η·s(∇f(x⁽ᵏ⁾)))`` and ``x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))``, with
  ``s`` the sign (linf) or the normalised gradient (l2), ``P`` the projection onto the ball and the
  [0, 1] box, ``α = 0.75`` and no momentum on the first step;
* ``η`` starts at ``2·eps`` and is halved at checkpoint ``w_j = ⌈p_j·steps⌉`` (``p₀ = 0``,
  ``p₁ = 0.22``, ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``) when fewer than ``ρ = 0.75`` of
  the steps since the last checkpoint raised the loss, or when ``η`` was not halved at the last
  checkpoint and the best loss has not risen since; a halving also moves the iterate back to the
  highest-loss point found so far.

The losses are cross-entropy and the difference of logits ratio (DLR); APGD-T maximises the targeted
DLR towards each of the ``n_target_classes`` classes the model ranks highest after the true one on the
clean input, one after the other, as AutoAttack's standard version does with 9. Samples leave the
working batch once broken (``attacks.working_set``), which changes no other sample's trajectory: each
sample's iterates depend only on its own losses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from attacks.fixed_eps import IterativeAttack, RunLoss
from attacks.losses import ce_loss, dlr_loss, targeted_dlr_loss
from attacks.projection import ascent_step, project_to_box
from attacks.validation import check_int
from attacks.working_set import BestIterateSet

# Momentum: the weight of the new gradient step against the last move (the paper's α).
MOMENTUM = 0.75
# Condition 1: halve η when fewer than this fraction of the steps since the last checkpoint raised the loss.
RHO = 0.75
# Checkpoints p_j in hundredths of the budget, so that ⌈p_j·steps⌉ is exact integer arithmetic
# (0.41 · 100 is 41.00000000000001 in floating point, which would round up to 42).
_FIRST_CHECKPOINT = 22
_CHECKPOINT_SHRINK = 3
_MIN_CHECKPOINT_GAP = 6

UNTARGETED_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": ce_loss,
    "dlr": dlr_loss,
}


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ⌈p_j·steps⌉`` (j ≥ 1) where APGD may halve its step, below ``steps``.

    Small budgets make some ``w_j`` coincide; each is kept once.
    """
    p = [0, _FIRST_CHECKPOINT]
    while p[-1] < 100:
        p.append(p[-1] + max(p[-1] - p[-2] - _CHECKPOINT_SHRINK, _MIN_CHECKPOINT_GAP))
    w = {-(-pj * steps // 100) for pj in p[1:]}
    return sorted(wj for wj in w if 0 < wj < steps)


class _AutoPGD(IterativeAttack):
    """What APGD and APGD-T share: the APGD run itself."""

    def _run_once(self, model: nn.Module, ws: BestIterateSet, loss_fn: RunLoss) -> None:
        """One APGD run (Algorithm 1) from ``ws.xa``; see the module docstring."""
        shape = (-1, *([1] * (ws.x0.dim() - 1)))
        ws.f, ws.grad = self._evaluate(model, ws, loss_fn, with_grad=True)
        # This run's highest-loss point (where a halving restarts from) and its gradient.
        ws.x_max, ws.f_max, ws.grad_max = ws.xa, ws.f, ws.grad
        ws.x_prev = ws.xa
        ws.eta = torch.full_like(ws.f, 2.0 * self.eps, dtype=ws.x0.dtype)
        # Per checkpoint interval: steps that raised the loss, the best loss at its start, and whether
        # the step size was halved at its start.
        ws.n_up = torch.zeros_like(ws.f)
        ws.f_max_check = ws.f_max
        ws.halved = torch.zeros_like(ws.found)
        marks = checkpoints(self.steps)
        last_mark = 0
        for k in range(1, self.steps + 1):
            eta = ws.eta.view(shape)
            z = project_to_box(ws.x0, ws.xa + eta * ascent_step(ws.grad, self.norm), self.eps, self.norm)
            if k > 1:
                move = MOMENTUM * (z - ws.xa) + (1.0 - MOMENTUM) * (ws.xa - ws.x_prev)
                z = project_to_box(ws.x0, ws.xa + move, self.eps, self.norm)
            ws.x_prev, ws.xa = ws.xa, z
            f, grad = self._evaluate(model, ws, loss_fn, with_grad=k < self.steps)
            if k == self.steps:
                break
            ws.n_up = ws.n_up + (f > ws.f).float()
            ws.f, ws.grad = f, grad
            higher = (f > ws.f_max).view(shape)
            ws.x_max = torch.where(higher, ws.xa, ws.x_max)
            ws.grad_max = torch.where(higher, grad, ws.grad_max)
            ws.f_max = torch.maximum(f, ws.f_max)
            if k in marks:
                stalled = ws.n_up < RHO * (k - last_mark)
                flat = ~ws.halved & (ws.f_max <= ws.f_max_check)
                halve = stalled | flat
                ws.eta = torch.where(halve, 0.5 * ws.eta, ws.eta)
                ws.xa = torch.where(halve.view(shape), ws.x_max, ws.xa)
                ws.grad = torch.where(halve.view(shape), ws.grad_max, ws.grad)
                ws.f = torch.where(halve, ws.f_max, ws.f)
                ws.halved, ws.f_max_check, ws.n_up = halve, ws.f_max, torch.zeros_like(ws.n_up)
                last_mark = k
            if not ws.drop_found(k):
                return
        ws.store()


class APGD(_AutoPGD):
    """Untargeted Auto-PGD (APGD-CE or APGD-DLR) in the linf or l2 ball; see the module docstring.

    For each sample the returned point is the first adversarial iterate found (over all steps and
    restarts); for samples never broken it is the iterate with the highest loss.

    Args:
        eps: radius of the threat model (≥ 0), for images in [0, 1].
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps per restart (≥ 1); the paper and AutoAttack use 100.
        loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (difference of logits ratio; needs 3 classes or more).
        restarts: runs from independent random starts (≥ 1), each on the samples still unbroken.
        random_start: start from a point drawn uniformly from the ball (else from ``x``).
        batch_size: samples per forward/backward pass.
        seed: seed of the random starts; the same seed gives the same result on the same device.
    """

    name = "APGD"

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        steps: int = 100,
        loss: str = "ce",
        restarts: int = 1,
        random_start: bool = True,
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
            batch_size=batch_size,
        )
        self.loss = self._check_loss(loss, UNTARGETED_LOSSES)

    def _check_num_classes(self, num_classes: int) -> None:
        if self.loss == "dlr" and num_classes < 3:
            raise ValueError(f"loss='dlr' needs a model with 3 classes or more; this one has {num_classes}")

    def _objectives(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> Iterator[tuple[RunLoss, torch.Tensor | None]]:
        loss_fn = UNTARGETED_LOSSES[self.loss]
        yield (lambda logits, ws: loss_fn(logits, ws.y)), None


class APGDT(_AutoPGD):
    """Targeted Auto-PGD (APGD-T) with the targeted DLR loss, as in AutoAttack's standard version.

    For each of the ``n_target_classes`` classes the model ranks highest on the clean input after the
    true one (in that order), ``restarts`` runs of APGD maximise the targeted DLR towards that class,
    on the samples no earlier run broke. A sample counts as broken once misclassified as any class.

    Args:
        eps, norm, steps, restarts, random_start, batch_size, seed: as for :class:`APGD`.
        n_target_classes: target classes tried per sample (≥ 1); the model needs at least
            ``n_target_classes + 1`` classes, and 4 for the loss.
    """

    name = "APGD-T"

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        steps: int = 100,
        n_target_classes: int = 9,
        restarts: int = 1,
        random_start: bool = True,
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
            batch_size=batch_size,
        )
        self.n_target_classes = check_int("n_target_classes", n_target_classes, minimum=1)

    def _check_num_classes(self, num_classes: int) -> None:
        if num_classes < 4:
            raise ValueError(
                f"the targeted DLR loss needs a model with 4 classes or more; this one has {num_classes}"
            )
        if self.n_target_classes >= num_classes:
            raise ValueError(
                f"n_target_classes={self.n_target_classes} needs a model with more classes than that; "
                f"this one has {num_classes}: pass n_target_classes <= {num_classes - 1}"
            )

    def _objectives(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> Iterator[tuple[RunLoss, torch.Tensor | None]]:
        # Rank the other classes with the true one masked, so that no tie can make it a target.
        with torch.no_grad():
            others = model(x).float().scatter(1, y[:, None], float("-inf"))
        ranked = others.argsort(dim=1, descending=True)
        for rank in range(self.n_target_classes):
            yield (lambda logits, ws: targeted_dlr_loss(logits, ws.y, ws.target)), ranked[:, rank]
