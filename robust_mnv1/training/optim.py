"""SGD with momentum, Nesterov and per-group weight decay, whose learning rate is a device tensor.

The update is ``torch.optim.SGD``'s (dampening 0): ``g += wd * p; buf = momentum * buf + g;
p -= lr * (g + momentum * buf)`` (Nesterov) or ``p -= lr * buf``. It exists because a CUDA graph
replays the kernels it captured with the scalars baked in: ``torch.optim.SGD`` passes a float
learning rate into its kernels, so a captured step would keep the first step's rate forever.
Here the rate lives in a 0-d tensor on the device; :meth:`set_lr` writes it outside the graph,
and the captured step reads it. Momentum buffers start at zero, which makes the first step
``buf = g``, the same as ``torch.optim.SGD``'s first step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


class TensorLRSGD:
    """Foreach SGD over parameter groups ``(params, weight_decay)`` with a shared tensor learning rate.

    Args:
        groups: ``(parameters, weight_decay)`` pairs.
        lr: initial learning rate.
        momentum: momentum factor (> 0).
        nesterov: use Nesterov momentum.
    """

    def __init__(
        self,
        groups: Iterable[tuple[Sequence[torch.nn.Parameter], float]],
        *,
        lr: float,
        momentum: float,
        nesterov: bool,
    ) -> None:
        self.groups = [(list(params), float(wd)) for params, wd in groups if len(params)]
        self.params = [p for params, _ in self.groups for p in params]
        if not self.params:
            raise ValueError("TensorLRSGD got no parameters")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.lr = torch.tensor(float(lr), device=self.params[0].device)
        self.buffers = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of the next steps (an on-device write, no host sync)."""
        self.lr.fill_(lr)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        start = 0
        for params, wd in self.groups:
            bufs = self.buffers[start : start + len(params)]
            start += len(params)
            grads = [p.grad for p in params]
            if any(g is None for g in grads):
                raise RuntimeError("TensorLRSGD.step: a parameter has no gradient (unused or frozen?)")
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            torch._foreach_mul_(bufs, self.momentum)
            torch._foreach_add_(bufs, grads)
            update = torch._foreach_add(grads, bufs, alpha=self.momentum) if self.nesterov else bufs
            torch._foreach_sub_(params, torch._foreach_mul(update, self.lr))
