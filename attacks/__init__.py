"""Adversarial attacks for any PyTorch classifier mapping [0, 1] images to logits.

Three lines of research code::

    from attacks import PGD
    res = PGD(eps=8 / 255, steps=20)(model, x, y)
    print(res.robust_accuracy)

``backend="foolbox"`` or ``backend="art"`` runs the same attack through that library and returns the
same :class:`AttackResult`. :class:`APGD` and :class:`APGDT` are Auto-PGD (Croce & Hein, 2020), native
only. :mod:`attacks.checks` flags signs of gradient masking.
"""

from attacks import checks
from attacks.apgd import APGD, APGDT
from attacks.cw import CarliniWagnerL2
from attacks.fgsm import FGSM
from attacks.pgd import PGD
from attacks.result import AttackResult, worst_case
from attacks.square import Square

__all__ = [
    "APGD",
    "APGDT",
    "FGSM",
    "PGD",
    "AttackResult",
    "CarliniWagnerL2",
    "Square",
    "checks",
    "worst_case",
]
