"""The :class:`Attack` base class: everything an attack does besides computing perturbations.

An attack call validates the inputs, puts the model in eval mode with frozen parameters (restoring
both afterwards, even on exceptions), runs the backend chunk by chunk, and assembles an
:class:`~attacks.result.AttackResult` whose ``success`` comes from a fresh eval-mode forward pass, so
no backend's own bookkeeping is trusted.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from attacks.result import AttackResult
from attacks.validation import check_choice, check_int, check_logits, check_output, validate_inputs

BACKENDS = ("native", "foolbox", "art")


@contextlib.contextmanager
def model_hygiene(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode with parameters frozen; restore the caller's state on exit.

    Each module's train/eval flag, each parameter's ``requires_grad`` and each parameter's ``.grad``
    are put back exactly as they were, even if the body raises. Freezing the parameters keeps
    gradients out of them (ART's estimator calls ``backward()`` and ``zero_grad()`` on the model) and
    lets autograd skip weight gradients altogether.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _, _ in params:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


class QueryCounter(nn.Module):
    """Wraps a model and counts per-sample forward passes (``count``), whoever makes them.

    Counting in a wrapper rather than analytically measures native and peer backends the same way;
    it reads only the batch size, so it never synchronises with the device.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.count = 0
        # A fresh module starts in training mode; mirror the wrapped model so peers see eval mode.
        self.training = model.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Forward ``x`` through the wrapped model, adding its batch size to ``count``."""
        self.count += int(x.shape[0])
        return self.model(x)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of ``model`` on ``x``, computed ``batch_size`` samples at a time without autograd."""
    return torch.cat([check_output(model(x[i : i + batch_size])) for i in range(0, x.shape[0], batch_size)])


class Attack(ABC):
    """Base class of the attacks: shared validation, model hygiene, chunking and result assembly.

    Subclasses implement :meth:`_native`, and map themselves onto the peer libraries they list in
    ``peers``. Samples that the model misclassifies on clean input are not attacked by the native
    backend: they come back unchanged, as they already count as non-robust.
    """

    name: ClassVar[str]
    minimization: ClassVar[bool] = False
    # Peer backend name -> the adapter that runs this attack there (``attacks.backends``). The attack
    # classes name their adapters, so that this module imports no backend and no backend an attack.
    peers: ClassVar[Mapping[str, Callable[..., torch.Tensor]]] = {}

    def __init__(self, *, backend: str = "native", batch_size: int = 512) -> None:
        self.backend = check_choice("backend", backend, BACKENDS)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    @property
    def random_seed(self) -> int | None:
        """Seed of the attack's randomness, or None for a deterministic attack."""
        return None

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> AttackResult:
        """Attack ``model`` on images ``x`` (float, [0, 1], NCHW) with integer labels ``y``.

        ``model`` must map ``x`` to logits ``[N, num_classes]`` and live on ``x``'s device.

        ``generator`` (native backend only) is the stream a randomised attack draws from instead of a
        fresh one seeded with its ``seed``, and is left advanced. Consecutive slices of ``x``, each but
        the last a multiple of ``batch_size`` long, attacked in turn with one generator seeded with
        ``seed``, give exactly the results of one call on all of ``x``: a long attack can be split,
        and resumed from the generator's saved state. A deterministic attack ignores it.
        """
        x, y = validate_inputs(model, x, y)
        with model_hygiene(model):
            clean_correct, num_classes = self._clean_correct(model, x, y)
            counter = QueryCounter(model)
            start = time.perf_counter()
            with self._rng_scope(x.device, generator) as generator:
                x_adv = torch.cat(
                    [
                        self._perturb(
                            counter,
                            x[i : i + self.batch_size],
                            y[i : i + self.batch_size],
                            clean_correct[i : i + self.batch_size],
                            num_classes,
                            generator,
                        ).detach()
                        for i in range(0, x.shape[0], self.batch_size)
                    ]
                )
            return self._result(model, x, y, x_adv, clean_correct, counter.count, start)

    def _clean_correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Which samples the model classifies correctly on clean input, and its number of classes."""
        clean_logits = predict_logits(model, x, self.batch_size)
        check_logits(clean_logits, y)
        self._check_num_classes(clean_logits.shape[1])
        return clean_logits.argmax(dim=1) == y, int(clean_logits.shape[1])

    def _result(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        x_adv: torch.Tensor,
        clean_correct: torch.Tensor,
        queries: int,
        start: float,
    ) -> AttackResult:
        """Constrain the backend's ``x_adv`` to the threat model and judge it with a fresh forward pass."""
        x_adv = self._constrain(x, x_adv.to(x.dtype))
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        seconds = time.perf_counter() - start
        adv_pred = predict_logits(model, x_adv, self.batch_size).argmax(dim=1)
        success = clean_correct & (adv_pred != y)
        if self.minimization:
            # A minimization attack reports the original image where it failed, never a stale iterate.
            x_adv = torch.where(success.view(-1, *([1] * (x.dim() - 1))), x_adv, x)
        diff = (x_adv - x).flatten(1).float()
        return AttackResult(
            x_adv=x_adv,
            success=success,
            clean_correct=clean_correct,
            linf=diff.abs().amax(dim=1),
            l2=diff.norm(dim=1),
            queries=queries,
            seconds=seconds,
            attack=self.name,
            backend=self.backend,
            minimization=self.minimization,
        )

    @contextlib.contextmanager
    def _rng_scope(
        self, device: torch.device, given: torch.Generator | None
    ) -> Iterator[torch.Generator | None]:
        """Seed the randomness of the chosen backend for one call, leaving global RNG state untouched.

        Native attacks draw from their own ``torch.Generator`` on ``device`` (the caller's ``given``
        one if any). The peers draw from global generators (foolbox from torch's, ART from numpy's,
        and from torch's through a ``DataLoader``), so both are forked or saved, seeded with the
        attack's seed, and restored afterwards.
        """
        seed = self.random_seed
        if given is not None and self.backend != "native":
            raise ValueError(f"generator= needs backend='native'; the {self.backend} backend seeds its own")
        if given is not None and given.device.type != device.type:
            raise ValueError(f"generator on {given.device} cannot draw noise for inputs on {device}")
        if self.backend == "native":
            generator = given
            if seed is not None and generator is None:
                generator = torch.Generator(device=device)
                generator.manual_seed(seed)
            yield generator
            return
        # ART reads numpy's legacy global RNG, so that is the state to seed and restore.
        numpy_state = np.random.get_state()  # noqa: NPY002
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
                np.random.seed(seed)  # noqa: NPY002
            try:
                yield None
            finally:
                np.random.set_state(numpy_state)  # noqa: NPY002

    def _check_num_classes(self, num_classes: int) -> None:  # noqa: B027 (optional hook)
        """Raise ``ValueError`` if the attack's settings need more classes than the model has.

        Every attack works with two classes or more, which :func:`check_logits` checks already.
        """

    def _perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        todo: torch.Tensor,
        num_classes: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Adversarial images for one chunk, from the configured backend."""
        if self.backend == "native":
            return self._native(model, x, y, todo, generator)
        run = self.peers.get(self.backend)
        if run is None:
            raise ValueError(f"backend={self.backend!r} does not support {type(self).__name__}")
        return run(self, model, x, y, num_classes)

    @abstractmethod
    def _native(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        todo: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Adversarial images for one chunk; samples where ``todo`` is False may be returned unchanged."""

    @abstractmethod
    def _constrain(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Enforce the threat model on any backend's output (ball and box for fixed-eps attacks)."""
