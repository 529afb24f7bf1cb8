"""Batches from a split held entirely on the training device.

CIFAR-sized data is small enough (150 MB as uint8) to live on the GPU, so there is no worker
process, no pinned-memory copy and no per-image Python: each batch is one gather from the resident
uint8 tensor, an optional batched crop+flip, and a conversion to float in [0, 1].

Randomness comes from a ``torch.Generator`` on the device seeded from ``(seed, epoch)``, so epoch
``e`` produces the same order and the same augmentations whenever it is replayed, e.g. after a
resume. The generator's stream differs between CPU and CUDA, so reproducibility is per device type.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from robust_mnv1.data.splits import Split
from robust_mnv1.infra.errors import UserError


class DeviceLoader:
    """Batches of ``(float32 images in [0, 1] NCHW, int64 labels)`` from a split moved once to ``device``.

    Args:
        split: the decoded split; its uint8 images are copied to ``device`` once, here.
        batch_size: images per batch.
        device: where the split lives and batches are produced (``"cpu"``, ``"cuda"``, ...).
        shuffle: visit samples in a fresh random order each epoch.
        augment: random crop from a ``pad``-pixel reflect-padded image plus random horizontal flip.
        drop_last: skip the final short batch (keeps batch-norm statistics and step sizes uniform).
        seed: base seed; with the epoch it fixes the order and augmentations.
        pad: reflect padding for the random crop, in pixels (less than the image side).
        memory_format: layout of the float batches, e.g. ``torch.channels_last``.

    Each ``iter()`` runs one epoch and then advances the epoch counter; :meth:`set_epoch` sets the
    epoch the next ``iter()`` uses, which is how a resumed run replays epoch ``e`` exactly.
    :meth:`rng_state` and :meth:`resume` let a run stopped inside an epoch go on from the batch after
    its last one, with the augmentations the uninterrupted run drew.
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        device: str | torch.device,
        shuffle: bool,
        augment: bool,
        drop_last: bool,
        seed: int,
        pad: int = 4,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        if int(batch_size) < 1:
            raise UserError(f"batch_size={batch_size} must be at least 1; set a positive batch size")
        side = min(split.x.shape[2:])
        if augment and not 0 <= pad < side:
            raise UserError(
                f"pad={pad} must be in [0, {side - 1}] for {side}-pixel images; lower the padding"
            )
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.seed = int(seed)
        self.pad = int(pad)
        self.memory_format = memory_format
        self._x = split.x.to(self.device)
        self._y = split.y.to(self.device)
        self._epoch = 0
        self._start: tuple[int, torch.Tensor] | None = None  # (batch, generator state) for resume()
        self._gen: torch.Generator | None = None
        if len(self) == 0:
            raise UserError(
                f"batch_size={batch_size} with drop_last={drop_last} leaves no batch from {len(split)} "
                "samples; use a smaller batch size or a non-empty split"
            )

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` (its order and augmentations)."""
        self._epoch = int(epoch)
        self._start = None

    def rng_state(self) -> torch.Tensor:
        """The running epoch's generator state, after the batches produced so far."""
        if self._gen is None:
            raise RuntimeError("rng_state() needs an epoch under way")
        return self._gen.get_state()

    def resume(self, epoch: int, batch: int, rng_state: torch.Tensor) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` from batch ``batch`` on, as the epoch would
        have gone on after the :meth:`rng_state` taken when it had produced ``batch`` batches."""
        if not 0 <= batch <= len(self):
            raise ValueError(f"batch {batch} is not within an epoch of {len(self)} batches")
        self._epoch, self._start = int(epoch), (int(batch), rng_state)

    def __len__(self) -> int:
        """Batches per epoch."""
        n = self._y.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start = self._epoch, self._start
        self._epoch, self._start = epoch + 1, None
        return self._batches(epoch, start)

    def _generator(self, epoch: int) -> torch.Generator:
        # SeedSequence mixes (seed, epoch) so neighbouring seeds/epochs give unrelated streams.
        words = np.random.SeedSequence([self.seed, epoch]).generate_state(2, dtype=np.uint32)
        gen = torch.Generator(device=self.device)
        gen.manual_seed((int(words[0]) << 31) ^ int(words[1]))
        return gen

    def _batches(
        self, epoch: int, start: tuple[int, torch.Tensor] | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = self._generator(epoch)
        n = self._y.shape[0]
        order = torch.randperm(n, generator=gen, device=self.device) if self.shuffle else None
        first = 0
        if start is not None:  # the order is the epoch's; the augmentations go on from the saved state
            first = start[0]
            gen.set_state(start[1])
        self._gen = gen
        for b in range(first, len(self)):
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                x, y = self._x[start:stop], self._y[start:stop]
            else:
                idx = order[start:stop]
                x, y = self._x.index_select(0, idx), self._y.index_select(0, idx)
            if self.augment:
                x = crop_flip(x, self.pad, gen)
            yield x.to(dtype=torch.float32, memory_format=self.memory_format).div_(255), y


def crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random ``pad``-pixel reflect-padded crop and random horizontal flip of each image in ``x``.

    Equivalent to torchvision's ``RandomCrop(size, padding=pad, padding_mode="reflect")`` followed by
    ``RandomHorizontalFlip()`` per image, but done for the whole batch as one gather: each output pixel
    reads its source pixel through a mirrored row/column index, so the padded batch is never built.
    """
    b, c, h, w = x.shape
    dev = x.device
    span = 2 * pad + 1
    dy = torch.randint(0, span, (b, 1), generator=generator, device=dev) - pad
    dx = torch.randint(0, span, (b, 1), generator=generator, device=dev) - pad
    flip = torch.randint(0, 2, (b, 1), generator=generator, device=dev).bool()
    cols = torch.arange(w, device=dev)
    rows = _reflect(torch.arange(h, device=dev) + dy, h)  # [b, h]
    cols = _reflect(torch.where(flip, cols.flip(0), cols) + dx, w)  # [b, w]; flip mirrors the crop
    flat = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(x.reshape(b, c, h * w), 2, flat).reshape(b, c, h, w)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in ``[-(size-1), 2*size-2]`` into ``[0, size-1]`` by mirroring, edge not repeated."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def eval_batches(
    split: Split,
    batch_size: int,
    device: str | torch.device,
    *,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> DeviceLoader:
    """A loader over ``split`` in dataset order, unaugmented, keeping the last short batch."""
    return DeviceLoader(
        split,
        batch_size=batch_size,
        device=device,
        shuffle=False,
        augment=False,
        drop_last=False,
        seed=0,
        memory_format=memory_format,
    )
