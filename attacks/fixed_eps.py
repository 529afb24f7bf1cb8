"""Base classes of the attacks bounded by a fixed eps-ball: FGSM, and the iterative PGD and APGD(-T).

:class:`FixedEpsAttack` holds the threat model (``eps`` in the ``norm`` ball, inside the [0, 1] box).
:class:`IterativeAttack` adds what PGD and APGD share around their inner loop: the budget, random
starts, restarts on the samples still unbroken, and per-sample best-iterate tracking with early exit
(:class:`~attacks.working_set.BestIterateSet`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from attacks.base import Attack
from attacks.losses import value_and_grad
from attacks.projection import NORMS, project_to_box, random_in_ball
from attacks.validation import check_bool, check_choice, check_float, check_int
from attacks.working_set import BestIterateSet

# Loss of one run from the logits and the working set, whose labels (and targets) are its rows'.
RunLoss = Callable[[torch.Tensor, BestIterateSet], torch.Tensor]


class FixedEpsAttack(Attack):
    """An attack whose perturbations stay in the ``norm`` ball of radius ``eps`` around ``x``."""

    def __init__(self, *, eps: float, norm: str, backend: str = "native", batch_size: int = 512) -> None:
        super().__init__(backend=backend, batch_size=batch_size)
        self.eps = check_float("eps", eps)
        self.norm = check_choice("norm", norm, NORMS)

    def _check_loss(self, loss: str, losses: Iterable[str]) -> str:
        """Return ``loss`` if it is one of ``losses`` and the backend can maximise it.

        The peer libraries maximise cross-entropy only, so another loss raises instead of being ignored.
        """
        loss = check_choice("loss", loss, tuple(losses))
        if loss != "ce" and self.backend != "native":
            raise ValueError(
                f"loss={loss!r} is not available with backend={self.backend!r}: that library's {self.name} "
                "only maximises cross-entropy; use backend='native'"
            )
        return loss

    def _constrain(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return project_to_box(x, x_adv, self.eps, self.norm)


class IterativeAttack(FixedEpsAttack):
    """A fixed-eps attack that runs ``steps`` steps from ``restarts`` starts, keeping each sample's best.

    For each sample the returned point is the first adversarial iterate found (over all steps, restarts
    and objectives); for samples never broken it is the iterate with the highest loss. Each restart runs
    only the samples still unbroken, and samples the model already misclassifies are not attacked.
    """

    def __init__(
        self,
        *,
        eps: float,
        norm: str,
        steps: int,
        restarts: int,
        random_start: bool,
        seed: int,
        backend: str = "native",
        batch_size: int = 512,
    ) -> None:
        super().__init__(eps=eps, norm=norm, backend=backend, batch_size=batch_size)
        self.steps = check_int("steps", steps, minimum=1)
        self.restarts = check_int("restarts", restarts, minimum=1)
        self.random_start = check_bool("random_start", random_start)
        self.seed = check_int("seed", seed, minimum=0)
        if self.restarts > 1 and not self.random_start:
            raise ValueError("restarts > 1 needs random_start=True: restarting from x repeats the same run")

    @property
    def random_seed(self) -> int | None:
        """The seed when starts are random, else None."""
        return self.seed if self.random_start else None

    @abstractmethod
    def _objectives(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> Iterator[tuple[RunLoss, torch.Tensor | None]]:
        """The losses to run ``restarts`` times each, in order, with the per-sample targets they need."""

    @abstractmethod
    def _run_once(self, model: nn.Module, ws: BestIterateSet, loss_fn: RunLoss) -> None:
        """One run from ``ws.xa`` on the samples of ``ws``; its results land in the chunk-wide tensors."""

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
        for loss_fn, targets in self._objectives(model, x, y):
            for _ in range(self.restarts):
                active = (~found).nonzero().squeeze(1)
                if active.numel() == 0:
                    return best
                extra = {} if targets is None else {"target": targets[active]}
                ws = BestIterateSet(
                    active, best=best, found=found, loss=best_loss, x0=x[active], y=y[active], **extra
                )
                ws.xa = self._start(ws.x0, generator)
                self._run_once(model, ws, loss_fn)
        return best

    def _start(self, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The first iterate: a point drawn uniformly from the ball around ``x0`` (in the box), or ``x0``."""
        if not self.random_start:
            return x0.clone()
        assert generator is not None
        noise = random_in_ball(
            x0.shape, self.eps, self.norm, generator=generator, dtype=x0.dtype, device=x0.device
        )
        return (x0 + noise).clamp(0.0, 1.0)

    def _evaluate(
        self, model: nn.Module, ws: BestIterateSet, loss_fn: RunLoss, *, with_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Loss at ``ws.xa`` (and its gradient if ``with_grad``); records each sample's best point."""
        if with_grad:
            logits, loss, grad = value_and_grad(model, ws.xa, ws.y, lambda z, _: loss_fn(z, ws))
        else:
            # A run's last iterate only needs evaluating, not differentiating.
            with torch.no_grad():
                logits = model(ws.xa)
                loss, grad = loss_fn(logits, ws), None
        ws.record(ws.xa, loss, logits.argmax(dim=1) != ws.y)
        return loss, grad
