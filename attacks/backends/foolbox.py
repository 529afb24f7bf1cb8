"""Run an attack through foolbox 3 (``foolbox.attacks``), returning plain adversarial images.

The attack names foolbox's attack and epsilon (``_foolbox_attack``); the foolbox behaviours that change
numbers:

* ``PyTorchModel(model, bounds=(0, 1))`` does not switch the model to eval mode (it only warns when it
  is training); the :class:`~attacks.base.Attack` base does that and restores the caller's mode.
* The epsilon is passed at call time (``epsilons=``), not to the constructor.
* ``LinfPGD`` defaults to ``rel_stepsize=0.01/0.3`` and 40 steps, ``L2PGD`` to ``rel_stepsize=0.025`` and
  50 steps; we always pass ``abs_stepsize=step_size`` and ``steps``, so our defaults
  (``2.5·eps/steps``) apply. foolbox PGD returns the last iterate (no best-iterate tracking).
* Restarts use ``attack.repeat(restarts)``, which, like the native attack, keeps the first successful
  restart per sample. Random starts come from torch's global RNG, which is forked and seeded with
  ``seed`` for the call.
* foolbox's own ``success`` counts samples that were already misclassified as successes; it is
  ignored, and success is recomputed from a fresh forward pass.
* ``L2CarliniWagnerAttack`` returns an all-zero image for samples it never breaks (and the zero image
  may well be misclassified); those are replaced by ``x``. Its abort-early check is on the loss summed
  over the whole batch, and its tanh shrink of 0.999999 barely lets pixels at exactly 0 or 1 move.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class FoolboxAttack(Protocol):
    """An attack that foolbox can run."""

    def _foolbox_attack(self) -> tuple[Any, float | None]:
        """foolbox's attack with this attack's settings, and its epsilon (None for a minimization attack)."""
        ...


def run(
    attack: FoolboxAttack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Adversarial images for ``x`` from the foolbox attack matching ``attack``'s settings."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    fb_attack, epsilon = attack._foolbox_attack()
    _, x_adv, _ = fb_attack(fmodel, x, y, epsilons=epsilon)
    if epsilon is None:
        never_broken = (x_adv.flatten(1) == 0).all(dim=1)
        x_adv = torch.where(never_broken.view(-1, *([1] * (x.dim() - 1))), x, x_adv)
    return x_adv
