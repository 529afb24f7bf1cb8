"""What the bench scripts share: the CLI, synthetic data, the timed project fit and the plain-loop baseline.

Every figure is a throughput over a timed region that starts and ends with a device synchronisation,
so on CUDA no queued work leaks out of (or into) a measurement. Peak memory is the CUDA allocator's
peak on CUDA, and the process's peak resident set on CPU (reset before each measurement where Linux
allows it, see :func:`reset_peak_memory`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from robust_mnv1.data import Split
from robust_mnv1.infra.device import resolve_device
from robust_mnv1.infra.errors import UserError
from robust_mnv1.infra.malloc import keep_freed_memory
from robust_mnv1.infra.peak_memory import reset_peaks
from robust_mnv1.training.fit import Objective, cudnn_autotuning, fit

IMAGE_SIZE = 32
NUM_CLASSES = 10
# fit() always evaluates after its last epoch; a split this small keeps that under a millisecond or so.
FIT_TEST_IMAGES = 16
# Pixels of shift in the plain loop's random crop (the project's recipe uses 4 as well).
PAD = 4


def bench_parser(description: str) -> argparse.ArgumentParser:
    """The options of the bench scripts built on the suite: ``--device``, ``--quick``, ``--seed``,
    ``--threads`` (``attacks_bench.py`` stands alone, so that it runs without ``robust_mnv1``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu"
    )
    parser.add_argument("--quick", action="store_true", help="tiny workloads: a smoke test, not a figure")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and model init")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op CPU threads (default: 1 with --quick, else torch's choice)",
    )
    return parser


def setup(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and return the device ``--device`` names, or exit with a one-line error.

    ``--quick`` defaults to one CPU thread: when other processes share the cores, OpenMP threads
    wait at every barrier for a preempted peer, which made a 2-thread smoke run 10-100x slower on a
    busy 2-core machine; one thread keeps the smoke test's run time predictable.
    """
    # As the suite's entry points do, so the project and its baselines run with the same allocator.
    keep_freed_memory()
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads is not None:
        if threads < 1:
            parser.error(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        return resolve_device(args.device or "auto")
    except UserError as err:
        parser.error(str(err))


def describe(device: torch.device) -> str:
    """One line naming the hardware and software a table was measured on."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        threads = torch.get_num_threads()
        where = f"CPU, {threads} thread{'' if threads == 1 else 's'}"
    line = f"device: {device.type} ({where}); torch {torch.__version__}"
    if hasattr(os, "getloadavg"):
        # Other processes on the same cores skew every CPU figure (OpenMP threads stall when preempted).
        line += f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at start"
    return line


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so the clock measures work done rather than work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_split(n: int, *, seed: int) -> Split:
    """``n`` uint8 noise images of CIFAR shape with uniform random labels, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return Split(x, y)


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak-memory window; returns False where the CPU peak cannot be reset.

    ``getrusage``'s peak RSS only ever grows, but on Linux writing 5 to ``/proc/self/clear_refs``
    resets it to the current RSS (:func:`robust_mnv1.infra.peak_memory.reset_peaks`, which the study
    uses too), so each measurement gets its own peak rather than the process's.
    """
    resident = reset_peaks(device)
    return device.type == "cuda" or resident


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: peak bytes held by the caching allocator; CPU: peak resident set of the whole process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux but in bytes on macOS.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


@dataclass(frozen=True)
class Throughput:
    """Images processed in a timed region, its length, and the peak memory during it."""

    images: int
    seconds: float
    peak_mib: float

    @property
    def img_per_s(self) -> float:
        """Images per second."""
        return self.images / self.seconds


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow fit()'s progress bar and epoch lines; show them only if it fails."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    except BaseException:
        sys.stderr.write(buffer.getvalue())
        raise


def project_fit(
    model: torch.nn.Module,
    train: Split,
    tcfg: DictConfig,
    objective: Objective,
    *,
    device: torch.device,
    seed: int,
    cuda_graph: bool,
) -> Throughput:
    """The second epoch of a two-epoch :func:`robust_mnv1.training.fit.fit` over ``train``, timed.

    The first epoch is the warm-up (kernel selection, allocations, the CUDA graph's capture). The
    clock runs between the two ``on_epoch_end`` calls, each after a synchronisation, so it covers
    the LR schedule, augmentation, loss/accuracy bookkeeping and a ``FIT_TEST_IMAGES``-image test
    pass, but neither checkpoint.
    """
    cfg = OmegaConf.merge(tcfg, {"epochs": 2})
    marks: dict[int, float] = {}

    def on_epoch_end(epoch: int) -> None:
        synchronize(device)
        marks[epoch] = time.perf_counter()
        if epoch == 1:
            reset_peak_memory(device)

    test = synthetic_split(FIT_TEST_IMAGES, seed=seed + 1)
    with tempfile.TemporaryDirectory(prefix="robust-mnv1-bench-") as run_dir, _quiet():
        fit(
            model,
            train,
            test,
            cfg,
            device=device,
            seed=seed,
            run_dir=run_dir,
            objective=objective,
            desc="bench",
            on_epoch_end=on_epoch_end,
            cuda_graph=cuda_graph,
        )
        peak = peak_memory_mib(device)
    images = len(train) // cfg.batch_size * cfg.batch_size
    return Throughput(images=images, seconds=marks[2] - marks[1], peak_mib=peak)


@dataclass(frozen=True, kw_only=True)
class PGDSpec:
    """L-inf PGD from a uniform random start: radius, step and number of steps (pixels in [0, 1])."""

    eps: float
    step: float
    steps: int

    @classmethod
    def from_recipe(cls, fcfg: DictConfig) -> PGDSpec:
        """The attack of a fine-tuning recipe such as ``conf/finetune/pgd_at.yaml``."""
        return cls(eps=fcfg.eps_255 / 255, step=fcfg.step_255 / 255, steps=fcfg.steps)


class PlainLoop:
    """The baseline: a hand-written eager training loop over uint8 data resident on the device.

    Like the reference loop of the performance targets: each batch is a shuffled gather from the resident
    uint8 images, a random 4-pixel-shifted crop (zero padding) and horizontal flip done on the device,
    and a conversion to float. Same model, batch size, optimizer (SGD, momentum, Nesterov, weight
    decay) and precision policy as :mod:`robust_mnv1.training.fit` (channels_last; fp32 on CPU; bf16
    autocast and cuDNN autotuning on CUDA), but no loader object, schedule or bookkeeping. With
    ``pgd`` each step first crafts the batch with a hand-written sign-gradient PGD, the model in eval
    mode, then trains on it.

    Args:
        model: the network; moved to ``device`` and trained in place.
        split: the images, moved to the device once here, before anything is timed.
        tcfg: recipe with ``batch_size``, ``lr``, ``momentum``, ``nesterov``, ``weight_decay``.
        device: where everything runs.
        pgd: the training-time attack, or None for standard training.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        split: Split,
        tcfg: DictConfig,
        device: torch.device,
        pgd: PGDSpec | None = None,
    ) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.pgd = pgd
        self.model = model.to(device, memory_format=torch.channels_last)
        self.x = F.pad(split.x.to(device), (PAD, PAD, PAD, PAD))  # padded once, uint8
        self.y = split.y.to(device)
        self.batch_size = tcfg.batch_size
        self.steps = len(split) // tcfg.batch_size
        self.opt = torch.optim.SGD(
            model.parameters(),
            lr=tcfg.lr,
            momentum=tcfg.momentum,
            nesterov=tcfg.nesterov,
            weight_decay=tcfg.weight_decay,
        )

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()

    def _craft(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        spec = self.pgd
        assert spec is not None
        self.model.eval()
        delta = (x + (torch.rand_like(x) * 2 - 1) * spec.eps).clamp(0, 1) - x
        for _ in range(spec.steps):
            delta.requires_grad_(True)
            logits = self.model(x + delta)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), y), delta)
            delta = (delta.detach() + spec.step * grad.sign()).clamp_(-spec.eps, spec.eps)
            delta = (x + delta).clamp_(0, 1) - x
        self.model.train()
        return x + delta.detach()

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # One autocast region around crafting and the forward, as fit() has around its objective,
        # so the bf16 copies of the weights are cast once per step.
        with self._autocast():
            if self.pgd is not None:
                x = self._craft(x, y)
            loss = F.cross_entropy(self.model(x).float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, side = idx.numel(), self.x.shape[-1] - 2 * PAD
        shift = torch.randint(0, 2 * PAD + 1, (2, b, 1), device=self.device)
        rows = torch.arange(side, device=self.device) + shift[0]  # [b, side]
        cols = torch.arange(side, device=self.device) + shift[1]
        cols = torch.where(torch.rand(b, 1, device=self.device) < 0.5, cols.flip(1), cols)
        x = self.x[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [b, side, side, C]
        x = x.permute(0, 3, 1, 2).float().div_(255).contiguous(memory_format=torch.channels_last)
        return x, self.y[idx]

    def warm_up(self) -> None:
        """One untimed step, paying the one-off costs (kernel selection, allocations, optimizer state)."""
        self.model.train()
        with cudnn_autotuning(self.cuda):
            self._step(*self._batch(torch.arange(self.batch_size, device=self.device)))
        synchronize(self.device)

    def run(self) -> Throughput:
        """One timed pass over ``len(split) // batch_size`` shuffled, augmented batches."""
        self.model.train()
        synchronize(self.device)
        reset_peak_memory(self.device)
        start = time.perf_counter()
        with cudnn_autotuning(self.cuda):
            order = torch.randperm(len(self.y), device=self.device)
            for i in range(self.steps):
                self._step(*self._batch(order[i * self.batch_size : (i + 1) * self.batch_size]))
        synchronize(self.device)
        seconds = time.perf_counter() - start
        images = self.steps * self.batch_size
        return Throughput(images=images, seconds=seconds, peak_mib=peak_memory_mib(self.device))


def compare_training(
    *,
    model: torch.nn.Module,
    baseline_model: torch.nn.Module,
    split: Split,
    tcfg: DictConfig,
    objective: Objective,
    pgd: PGDSpec | None,
    device: torch.device,
    seed: int,
    repeats: int = 1,
    eager: bool = True,
) -> dict[str, list[Throughput]]:
    """Throughputs of the same training over ``split``, ``repeats`` runs of each path, by path name.

    ``"project"``: ``model`` through :func:`project_fit` with ``objective``, as the suite trains on
    this device (CUDA graphs on CUDA); with ``eager``, on CUDA also ``"project eager"``, the same
    without graphs, to show what the graphs buy. ``"plain"``: ``baseline_model`` through
    :class:`PlainLoop` with ``pgd``, warmed up by one untimed step. The timed runs alternate in ABBA
    order, so drift in the machine's load and allocator state falls on all paths.
    """
    cuda = device.type == "cuda"
    modes = {"project": cuda, **({"project eager": False} if cuda and eager else {})}
    plain = PlainLoop(model=baseline_model, split=split, tcfg=tcfg, device=device, pgd=pgd)
    plain.warm_up()
    runs: dict[str, list[Throughput]] = {"plain": [], **{name: [] for name in modes}}
    for i in range(repeats):
        # ABBA order: neither path always runs right after the other's allocations.
        if i % 2 == 0:
            runs["plain"].append(plain.run())
        for name, cuda_graph in modes.items():
            runs[name].append(
                project_fit(model, split, tcfg, objective, device=device, seed=seed, cuda_graph=cuda_graph)
            )
        if i % 2 == 1:
            runs["plain"].append(plain.run())
    return runs


def print_table(title: str, table: pd.DataFrame, notes: list[str]) -> None:
    """Print the title, the table (pandas ``to_string``, missing cells blank) and the notes on its numbers."""
    print(title)
    print(table.astype(object).where(table.notna(), "").to_string(index=False))
    for note in notes:
        print(f"- {note}")
