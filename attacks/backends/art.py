"""Run an attack through the Adversarial Robustness Toolbox (ART), returning adversarial images.

The attack builds ART's attack on the classifier made here (``_art_attack``); the ART behaviours that
change numbers:

* The model is wrapped in ``PyTorchClassifier(loss=CrossEntropyLoss(), input_shape, nb_classes,
  clip_values=(0, 1))``. Its gradient calls put the model in eval mode and leave it there, call
  ``zero_grad()`` on it and move it to ``cuda:<current device>``; the :class:`~attacks.base.Attack` base
  restores the caller's train/eval mode and ``.grad`` afterwards, and the estimator is built under
  ``torch.cuda.device(x.device)`` so the model stays where it is.
* Data goes through numpy on the host every call, which costs a device round trip per batch.
* ``FastGradientMethod(norm, eps)``: ``eps_step`` only matters for ART's "minimal" mode, which is unused.
* ``ProjectedGradientDescentPyTorch(norm, eps, eps_step=step_size, max_iter=steps,
  num_random_init=restarts if random_start else 0)``. ART returns the last iterate (no best-iterate
  tracking), and with several random inits a later successful restart overwrites an earlier one.
  Random starts come from numpy's global RNG; its state is saved, seeded with ``seed`` and restored.
  ART rejects a zero step, so ``eps=0`` returns ``x`` without calling it.
* ``CarliniL2Method(confidence, learning_rate=lr, binary_search_steps, max_iter=steps, initial_const)``
  optimises with line-searched gradient descent, not Adam, has no abort-early, doubles ``c`` until
  success (instead of ×10) and computes one class gradient per logit it needs: it is orders of
  magnitude slower than the native attack and its distances differ.
* ART can maximise only its estimator's loss, so margin-loss PGD/FGSM raise at construction.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

# ART's ``norm`` argument for each of our norms.
ART_NORMS = {"linf": np.inf, "l2": 2}


class ArtAttack(Protocol):
    """An attack that ART can run."""

    def _art_attack(self, classifier: Any, batch_size: int) -> Any | None:
        """ART's attack on ``classifier`` with this attack's settings, or None where ``x`` is the answer."""
        ...


def run(
    attack: ArtAttack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Adversarial images for ``x`` from the ART attack matching ``attack``'s settings."""
    from art.estimators.classification import PyTorchClassifier

    device_scope = torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()
    with device_scope:
        classifier = PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=num_classes,
            clip_values=(0.0, 1.0),
            device_type="gpu" if x.device.type == "cuda" else "cpu",
        )
    art_attack = attack._art_attack(classifier, int(x.shape[0]))
    if art_attack is None:
        return x.clone()
    x_np = x.detach().cpu().numpy().astype(np.float32)
    x_adv = art_attack.generate(x=x_np, y=y.cpu().numpy())
    return torch.from_numpy(np.asarray(x_adv, dtype=np.float32)).to(device=x.device, dtype=x.dtype)
