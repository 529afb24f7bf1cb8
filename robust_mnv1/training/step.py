"""The training step, run eagerly or replayed from a CUDA graph.

MobileNet V1 on 32x32 images is a few dozen small kernels per pass: on a GPU the step is bound
by the CPU launching them (Python, autograd, autocast dispatch), not by the math. A CUDA graph
records the whole step once (objective forward, backward, optimizer update, and for
adversarial training every attack iteration) and replays it with a single launch.

Replaying is only correct for work whose shapes and scalars never change, so everything that
varies stays outside the graph: the batch (copied into fixed input buffers), the random start
of an adversarial objective (drawn by its ``draw`` and copied in), and the learning rate (a
device tensor, see :class:`robust_mnv1.training.optim.TensorLRSGD`).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from robust_mnv1.training.optim import TensorLRSGD

# Eager steps before capture, on a side stream: they pay for cuDNN autotuning and lazy
# allocations, which must not happen inside the graph (3 is what PyTorch's docs use).
WARMUP_STEPS = 3


def autocast_for(device: torch.device, *, cache: bool = True):
    """bf16 autocast on CUDA (tensor cores); fp32 on CPU, where bf16 is slower and less exact.

    ``cache=False`` for graph capture: autocast's cache of bf16 weight copies is freed when the
    region exits, which a captured graph would still read from on replay.
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return nullcontext()


def precision_for(device: torch.device) -> str:
    """The name of what :func:`autocast_for` does on ``device``, as records state it."""
    return "bf16-autocast" if device.type == "cuda" else "fp32"


class EagerStep:
    """``step(x, y) -> (loss, logits)``: one SGD step on ``objective``, run op by op.

    An objective with a ``draw(x)`` method takes its result as a fourth argument: that is the
    only place it may use random numbers, so the captured step below can feed fresh ones.
    """

    def __init__(self, model: torch.nn.Module, objective, opt: TensorLRSGD, device: torch.device) -> None:
        self.model, self.objective, self.opt, self.device = model, objective, opt, device
        self.draw = getattr(objective, "draw", None)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        extra = () if self.draw is None else (self.draw(x),)
        return self._run(x, y, *extra)

    def _run(self, x, y, *extra, cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast_for(self.device, cache=cache):
            loss, logits = self.objective(self.model, x, y, *extra)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.detach(), logits.detach()


class CapturedStep(EagerStep):
    """The same step, captured into a CUDA graph at the first call and replayed after that.

    Every call must pass batches of one shape (``fit`` drops the last short batch), and returns the
    same two output tensors, which the next call overwrites: read them before that. The warm-up
    steps before capture would otherwise train the model on the first batch several times, so the
    model's and optimizer's state is restored after them: the captured run makes the same updates
    as the eager one, up to the run-to-run nondeterminism of GPU kernels.
    """

    def __init__(self, model: torch.nn.Module, objective, opt: TensorLRSGD, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        super().__init__(model, objective, opt, device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = (x, y) if self.draw is None else (x, y, self.draw(x))
        # Capture and replay on the step's own GPU, whichever is current (device=cuda:1).
        with torch.cuda.device(self.device):
            if self.graph is None:
                self._capture(inputs)
            with torch.no_grad():  # an objective may have made its start tensor a leaf that requires grad
                for static, value in zip(self.inputs, inputs, strict=True):
                    static.copy_(value)
            self.graph.replay()
        return self.outputs

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> None:
        self.inputs = tuple(t.clone() for t in inputs)
        state = [*self.model.state_dict().values(), *self.opt.buffers]
        saved = [t.clone() for t in state]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._run(*self.inputs, cache=False)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.opt.zero_grad()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self._run(*self.inputs, cache=False)
        with torch.no_grad():
            for tensor, value in zip(state, saved, strict=True):
                tensor.copy_(value)
