"""Projected Gradient Descent with random restarts, best-iterate tracking and per-sample early exit.

Per-sample bookkeeping is done with masks and ``torch.where``. The only host-device synchronisations
are one per restart (which samples are still unbroken) and one every ``CHECK_EVERY`` steps, where the
samples already broken are dropped from the working batch, once they are at least ``COMPACT_FRACTION``
of it, so that later steps stop paying for them (``attacks.working_set``).
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.base import Attack
from attacks.losses import LOSSES, LossFn, value_and_grad
from attacks.projection import NORMS, ascent_step, project, project_to_box, random_in_ball
from attacks.validation import check_bool, check_choice, check_float, check_int
from attacks.working_set import CHECK_EVERY, COMPACT_FRACTION, WorkingSet


class PGD(Attack):
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
        super().__init__(backend=backend, batch_size=batch_size)
        self.eps = check_float("eps", eps)
        self.norm = check_choice("norm", norm, NORMS)
        self.steps = check_int("steps", steps, minimum=1)
        self.step_size = (
            2.5 * self.eps / self.steps
            if step_size is None
            else check_float("step_size", step_size, strict=True)
        )
        self.random_start = check_bool("random_start", random_start)
        self.restarts = check_int("restarts", restarts, minimum=1)
        self.loss = check_choice("loss", loss, tuple(LOSSES))
        self.seed = check_int("seed", seed, minimum=0)
        if self.restarts > 1 and not self.random_start:
            raise ValueError("restarts > 1 needs random_start=True: restarting from x repeats the same run")
        if self.loss != "ce" and self.backend != "native":
            raise ValueError(
                f"loss={loss!r} is not available with backend={backend!r}: that library's PGD only "
                "maximises cross-entropy; use backend='native'"
            )

    @property
    def random_seed(self) -> int | None:
        """The seed when starts are random, else None."""
        return self.seed if self.random_start else None

    def _constrain(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return project_to_box(x, x_adv, self.eps, self.norm)

    def _native(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        todo: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        best = x.clone()
        if self.eps == 0:
            return best
        # Samples not to attack count as done from the start.
        found = ~todo
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        loss_fn = LOSSES[self.loss]
        for _ in range(self.restarts):
            active = (~found).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            self._run_once(model, x, y, active, best, found, best_loss, loss_fn, generator)
        return best

    def _run_once(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        idx: torch.Tensor,
        best: torch.Tensor,
        found: torch.Tensor,
        best_loss: torch.Tensor,
        loss_fn: LossFn,
        generator: torch.Generator | None,
    ) -> None:
        """One PGD run from a (random) start on samples ``idx``; updates best, found, best_loss in place."""
        x0 = x[idx]
        if self.random_start:
            assert generator is not None
            noise = random_in_ball(
                x0.shape, self.eps, self.norm, generator=generator, dtype=x0.dtype, device=x0.device
            )
            xa = (x0 + noise).clamp(0.0, 1.0)
        else:
            xa = x0.clone()
        ws = WorkingSet(idx, {"best": best, "found": found, "loss": best_loss}, x0=x0, y=y[idx], xa=xa)
        shape = (-1, *([1] * (x.dim() - 1)))
        for t in range(self.steps + 1):
            if t == self.steps:
                # The last iterate only needs evaluating, not differentiating.
                with torch.no_grad():
                    logits = model(ws.xa)
                    loss = loss_fn(logits, ws.y)
            else:
                logits, loss, grad = value_and_grad(model, ws.xa, ws.y, loss_fn)
            is_adv = logits.argmax(dim=1) != ws.y
            # Keep the first adversarial iterate; until then, the highest-loss one.
            take = ~ws.found & (is_adv | (loss > ws.loss))
            ws.best = torch.where(take.view(shape), ws.xa, ws.best)
            ws.loss = torch.where(take, loss, ws.loss)
            ws.found = ws.found | is_adv
            if t == self.steps:
                break
            step = self.step_size * ascent_step(grad, self.norm)
            ws.xa = (ws.x0 + project(ws.xa + step - ws.x0, self.eps, self.norm)).clamp(0.0, 1.0)
            if (t + 1) % CHECK_EVERY == 0:
                keep = (~ws.found).nonzero().squeeze(1)
                if not ws.compact(keep, min_fraction=COMPACT_FRACTION):
                    return
        ws.store()
