"""Run FGSM, PGD and C&W through foolbox 3 (``foolbox.attacks``), returning plain adversarial images.

Mapping and the foolbox behaviours that change numbers:

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

import torch
from torch import nn

from attacks.base import Attack


def run(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Adversarial images for ``x`` from the foolbox attack matching ``attack``'s settings."""
    import foolbox as fb

    from attacks.cw import CarliniWagnerL2
    from attacks.fgsm import FGSM
    from attacks.pgd import PGD

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    linf = getattr(attack, "norm", "l2") == "linf"
    epsilon: float | None
    if isinstance(attack, FGSM):
        fb_attack = (fb.attacks.LinfFastGradientAttack if linf else fb.attacks.L2FastGradientAttack)(
            random_start=False
        )
        epsilon = attack.eps
    elif isinstance(attack, PGD):
        pgd_cls = (
            fb.attacks.LinfProjectedGradientDescentAttack
            if linf
            else fb.attacks.L2ProjectedGradientDescentAttack
        )
        fb_attack = pgd_cls(
            abs_stepsize=attack.step_size, steps=attack.steps, random_start=attack.random_start
        )
        if attack.restarts > 1:
            fb_attack = fb_attack.repeat(attack.restarts)
        epsilon = attack.eps
    elif isinstance(attack, CarliniWagnerL2):
        fb_attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=attack.binary_search_steps,
            steps=attack.steps,
            stepsize=attack.lr,
            confidence=attack.confidence,
            initial_const=attack.initial_const,
            abort_early=True,
        )
        epsilon = None
    else:
        raise ValueError(f"backend='foolbox' does not support {type(attack).__name__}")
    _, x_adv, _ = fb_attack(fmodel, x, y, epsilons=epsilon)
    if epsilon is None:
        never_broken = (x_adv.flatten(1) == 0).all(dim=1)
        x_adv = torch.where(never_broken.view(-1, *([1] * (x.dim() - 1))), x, x_adv)
    return x_adv
