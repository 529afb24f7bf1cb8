"""One compact, resumable training loop for standard training and adversarial fine-tuning.

The whole uint8 dataset stays on the training device (see :mod:`robust_mnv1.data`), so a step
is: gather a batch, augment it on the device, forward, backward, SGD. The loss is pluggable
(:data:`Objective`), which is how PGD-AT, fast-AT and TRADES reuse this loop.

A run directory holds ``final.safetensors`` once training is done and ``last.safetensors`` after
every epoch before that, and within an epoch every few minutes (an adversarial fine-tuning epoch of
a large model takes over an hour of one CPU core); a killed run resumes from ``last`` and, on CPU,
ends bit-identical to an uninterrupted one: every epoch's shuffle and augmentation derive from
(seed, epoch), a mid-epoch checkpoint keeps the state of the epoch's generators and running sums,
and the LR is a pure function of the step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from robust_mnv1.data import DeviceLoader, Split
from robust_mnv1.infra.envinfo import device_name
from robust_mnv1.infra.errors import UserError
from robust_mnv1.infra.filelock import exclusive
from robust_mnv1.training.checkpoint import (
    load_checkpoint,
    load_state,
    require_meta,
    save_checkpoint,
    sidecar,
)
from robust_mnv1.training.optim import TensorLRSGD
from robust_mnv1.training.step import CapturedStep, EagerStep, autocast_for, precision_for

# (model, x, y) -> (loss to minimise, logits whose argmax is the prediction the loss trained on).
# An objective that needs random numbers draws them only in ``draw(x)``, whose result it takes as
# a fourth argument (see robust_mnv1.training.step), from ``generator(device)``, and has
# ``set_epoch(epoch)``, called at each epoch start.
Objective = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
log = logging.getLogger(__name__)
# What the rest of the suite reads from a finished run's sidecar, and what a resume needs.
_FINAL_META = ("test_acc", "train_seconds", "history")
_LAST_META = ("epoch", "history", "elapsed")


def cross_entropy_objective(label_smoothing: float = 0.0) -> Objective:
    def objective(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing), logits

    return objective


def lr_at(step: int, total_steps: int, tcfg: DictConfig) -> float:
    """Learning rate at ``step``: linear warm-up then cosine to zero (onecycle), or plain cosine."""
    warmup = int(tcfg.warmup_frac * total_steps) if tcfg.schedule == "onecycle" else 0
    if step < warmup:
        return tcfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return tcfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate_accuracy(
    model: torch.nn.Module, split: Split, device: torch.device, batch_size: int = 1024
) -> float:
    """Top-1 accuracy over a whole split, in eval mode, restoring the caller's mode."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    try:
        loader = DeviceLoader(
            split, batch_size=batch_size, device=device, shuffle=False, augment=False, drop_last=False, seed=0
        )
        for x, y in loader:
            with autocast_for(device):
                correct += (model(x).argmax(1) == y).sum()
    finally:
        model.train(was_training)
    return correct.item() / len(split.y)


def fit(
    model: torch.nn.Module,
    train: Split,
    test: Split,
    tcfg: DictConfig,
    *,
    device: torch.device,
    seed: int,
    run_dir: str | Path,
    objective: Objective,
    desc: str = "train",
    meta: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    cuda_graph: bool = False,
    save_every_s: float = 300.0,
) -> dict[str, Any]:
    """Train ``model`` in place, or load it when ``run_dir`` already holds a finished run.

    Returns the sidecar metadata of ``final.safetensors`` with ``trained`` set to whether this
    call did any training. ``on_epoch_end(epoch)`` runs after each epoch's checkpoint; tests
    use it to kill a run part-way. ``cuda_graph`` replays each step from a CUDA graph
    (:class:`robust_mnv1.training.step.CapturedStep`); it needs a CUDA ``device``. Inside an epoch,
    ``last`` is saved after the first batch that ends ``save_every_s`` seconds or more after the
    previous save (0: after every batch), so a kill loses about that much work at most.
    """
    # Epoch lines go to the log (so to Hydra's run.log too); on the console they print above the bars.
    # The lock makes parallel sweep jobs that need one model train it once: the others wait, then load it.
    with exclusive(Path(run_dir) / ".lock"), cudnn_autotuning(device.type == "cuda"), logging_redirect_tqdm():
        return _fit(
            model,
            train,
            test,
            tcfg,
            device=device,
            seed=seed,
            run_dir=Path(run_dir),
            objective=objective,
            desc=desc,
            meta=meta,
            on_epoch_end=on_epoch_end,
            cuda_graph=cuda_graph,
            save_every_s=save_every_s,
        )


def cudnn_autotuning(on: bool):
    """A context in which cuDNN searches for the fastest algorithm of each new convolution shape.

    Training repeats a few shapes thousands of times, so the search pays off there. Nowhere else:
    attacks shrink their batch as samples break, and searching again for every new shape made a
    GPU PGD run many times slower than with cuDNN's heuristics.
    """
    cudnn = torch.backends.cudnn
    return cudnn.flags(
        enabled=cudnn.enabled, benchmark=on, deterministic=cudnn.deterministic, allow_tf32=cudnn.allow_tf32
    )


def finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished training run, which :func:`fit` loads instead of training."""
    return sidecar(run_dir / "final.safetensors").exists()


def _fit(
    model,
    train,
    test,
    tcfg,
    *,
    device,
    seed,
    run_dir,
    objective,
    desc,
    meta,
    on_epoch_end,
    cuda_graph,
    save_every_s,
) -> dict[str, Any]:
    final, last = run_dir / "final.safetensors", run_dir / "last.safetensors"
    # channels_last on every device: 1.5-1.75x faster steps on CPU (bench/layout_bench.py; the GPU
    # figure is still to be measured). Attacks on the returned model inherit its layout.
    model.to(device, memory_format=torch.channels_last)
    if finished(run_dir):
        state, done = load_checkpoint(final, device)
        load_state(model, state, final)
        require_meta(done, _FINAL_META, final)
        _drop_partial(run_dir)
        return {**done, "trained": False}

    decay, no_decay = [], []
    for p in model.parameters():
        # Weight decay on BN affine parameters and biases only hurts small nets; skip them.
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = TensorLRSGD(
        [(decay, tcfg.weight_decay), (no_decay, 0.0)],
        lr=tcfg.lr,
        momentum=tcfg.momentum,
        nesterov=tcfg.nesterov,
    )
    step = (CapturedStep if cuda_graph else EagerStep)(model, objective, opt, device)
    loader = DeviceLoader(
        train,
        batch_size=tcfg.batch_size,
        device=device,
        shuffle=True,
        augment=tcfg.augment,
        drop_last=True,
        seed=seed,
        memory_format=torch.channels_last,
    )
    total_steps = tcfg.epochs * len(loader)
    # The device the batches (so the objective's random starts) live on: "cuda" names "cuda:0".
    rng_device = torch.empty(0, device=device).device
    history: list[dict[str, Any]] = []
    start_epoch, elapsed, partial = 0, 0.0, None
    if sidecar(last).exists():
        start_epoch, history, elapsed, partial = _resume(last, model, opt, device)

    for epoch in range(start_epoch, tcfg.epochs):
        model.train()
        # Epoch e draws the loader's stream e + 1: tqdm.auto's bar once took an iter() of the loader
        # before the loop took its own, and every model trained since depends on that, so it stays.
        stream = epoch + 1
        loader.set_epoch(stream)
        if hasattr(objective, "set_epoch"):
            objective.set_epoch(epoch)
        sums = _EpochSums.zeros(device)
        if partial is not None:  # the epoch a mid-epoch checkpoint stopped in
            sums = partial
            loader.resume(stream, sums.batches, sums.loader_rng)
            if sums.objective_rng is not None:
                objective.generator(rng_device).set_state(sums.objective_rng)
            partial = None
        t0 = time.perf_counter() - sums.seconds
        saved = time.perf_counter()
        bar = tqdm(
            iter(loader),  # one iter(): the bar's own would start the loader's next epoch
            desc=f"{desc} {epoch + 1}/{tcfg.epochs}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            initial=sums.batches,
            total=len(loader),
        )
        for i, (x, y) in enumerate(bar, start=sums.batches):
            lr = lr_at(epoch * len(loader) + i, total_steps, tcfg)
            opt.set_lr(lr)
            loss, logits = step(x, y)
            # Running sums stay on the device; reading them every 25 batches bounds host syncs.
            sums.loss += loss * len(y)
            sums.correct += (logits.argmax(1) == y).sum()
            sums.seen += len(y)
            if i % 25 == 24:
                rate = sums.seen / (time.perf_counter() - t0)
                bar.set_postfix(
                    loss=f"{sums.loss.item() / sums.seen:.3f}",
                    acc=f"{sums.correct.item() / sums.seen:.3f}",
                    img_s=f"{rate:.0f}",
                )
            if i + 1 < len(loader) and time.perf_counter() - saved >= save_every_s:
                sums.batches, sums.seconds = i + 1, time.perf_counter() - t0
                sums.loader_rng = loader.rng_state()
                if hasattr(objective, "generator"):
                    sums.objective_rng = objective.generator(rng_device).get_state()
                _save_last(last, model, opt, epoch, history, elapsed, sums)
                saved = time.perf_counter()
        # .item() waits for the device, so the epoch's time is taken after the last kernel ran.
        seen = sums.seen
        loss_mean, train_acc = sums.loss.item() / max(1, seen), sums.correct.item() / max(1, seen)
        if not math.isfinite(loss_mean):
            # Caught before this epoch is saved: a diverged model never reaches the cache.
            raise UserError(
                f"{desc}: training diverged (loss {loss_mean} in epoch {epoch + 1}); "
                f"lower the learning rate (lr={tcfg.lr}) and rerun"
            )
        seconds = time.perf_counter() - t0
        elapsed += seconds
        row = {
            "epoch": epoch + 1,
            "loss": loss_mean,
            "train_acc": train_acc,
            "lr_end": lr,
            "seconds": seconds,
            "img_per_s": seen / seconds,
        }
        if (epoch + 1) % tcfg.eval_every == 0 or epoch + 1 == tcfg.epochs:
            row["test_acc"] = evaluate_accuracy(model, test, device, tcfg.eval_batch_size)
        history.append(row)
        log.info(
            "%s epoch %d/%d: loss %.4f train_acc %.4f%s %.0f img/s %.1fs",
            desc,
            epoch + 1,
            tcfg.epochs,
            loss_mean,
            train_acc,
            f" test_acc {row['test_acc']:.4f}" if "test_acc" in row else "",
            row["img_per_s"],
            seconds,
        )
        if epoch + 1 < tcfg.epochs:
            _save_last(last, model, opt, epoch + 1, history, elapsed)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)

    # A captured step's gradients live in its graph's memory pool; dropping them frees the pool.
    opt.zero_grad()
    done = {
        **(meta or {}),
        "epochs": tcfg.epochs,
        # Where and how the weights were trained: a model trained on a GPU may be evaluated elsewhere.
        "device": device_name(device),
        "precision": precision_for(device),
        "test_acc": history[-1]["test_acc"],
        "train_seconds": elapsed,
        "history": history,
    }
    save_checkpoint(final, model.state_dict(), done)
    _drop_partial(run_dir)
    return {**done, "trained": True}


def _drop_partial(run_dir: Path) -> None:
    """Delete what a killed run can leave beside ``final``: the last epoch's checkpoint, half-written
    temp files. Safe under the run directory's lock, which every writer of ``run_dir`` holds."""
    last = run_dir / "last.safetensors"
    for stale in (last, sidecar(last), *run_dir.glob(".*.tmp")):
        stale.unlink(missing_ok=True)


@dataclass
class _EpochSums:
    """An epoch under way: its running loss and correct-prediction sums (on the device), the images and
    batches done, the seconds spent, and the state of its generators (the loader's, and the
    objective's when it draws random starts): what a mid-epoch checkpoint keeps."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    batches: int = 0
    seconds: float = 0.0
    loader_rng: torch.Tensor | None = None
    objective_rng: torch.Tensor | None = None

    @classmethod
    def zeros(cls, device: torch.device) -> _EpochSums:
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))


def _save_last(
    path: Path, model, opt, epoch: int, history: list, elapsed: float, sums: _EpochSums | None = None
) -> None:
    """``epoch`` epochs done, and with ``sums`` that many batches of the next one."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"opt.{i}": buf for i, buf in enumerate(opt.buffers)})
    meta = {"epoch": epoch, "history": history, "elapsed": elapsed}
    if sums is not None:
        tensors.update(
            {"epoch.loss": sums.loss, "epoch.correct": sums.correct, "rng.loader": sums.loader_rng}
        )
        if sums.objective_rng is not None:
            tensors["rng.objective"] = sums.objective_rng
        meta.update(batch=sums.batches, seen=sums.seen, epoch_seconds=sums.seconds)
    save_checkpoint(path, tensors, meta)


def _resume(path: Path, model, opt, device) -> tuple[int, list, float, _EpochSums | None]:
    tensors, meta = load_checkpoint(path, device)
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    require_meta(meta, _LAST_META, path)
    saved = [tensors.get(f"opt.{i}") for i in range(len(opt.buffers))]
    if any(t is None or t.shape != buf.shape for t, buf in zip(saved, opt.buffers, strict=True)):
        raise UserError(
            f"checkpoint {path} lacks this model's optimizer state; delete it to restart that training run"
        )
    with torch.no_grad():
        for t, buf in zip(saved, opt.buffers, strict=True):
            buf.copy_(t)
    if not meta.get("batch"):
        log.info("resuming %s from epoch %d", path.parent.name, meta["epoch"])
        return meta["epoch"], meta["history"], meta["elapsed"], None
    require_meta(meta, ("seen", "epoch_seconds"), path)
    if any(k not in tensors for k in ("epoch.loss", "epoch.correct", "rng.loader")):
        raise UserError(f"checkpoint {path} lacks its epoch's sums; delete it to restart that training run")
    rng = tensors.get("rng.objective")
    partial = _EpochSums(
        tensors["epoch.loss"],
        tensors["epoch.correct"],
        seen=meta["seen"],
        batches=meta["batch"],
        seconds=meta["epoch_seconds"],
        loader_rng=tensors["rng.loader"].cpu(),  # generator states live on the host
        objective_rng=None if rng is None else rng.cpu(),
    )
    log.info("resuming %s from epoch %d, batch %d", path.parent.name, meta["epoch"], meta["batch"])
    return meta["epoch"], meta["history"], meta["elapsed"], partial
