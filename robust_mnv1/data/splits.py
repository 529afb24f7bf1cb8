"""The in-memory form of a decoded dataset: uint8 image tensors and int64 labels, per split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset, decoded: ``x`` is uint8 ``[N, 3, H, W]`` and ``y`` int64 ``[N]``, both on CPU.

    Images stay uint8 until a batch is taken (see :class:`robust_mnv1.data.DeviceLoader`), which keeps
    a whole CIFAR-sized split at 150 MB instead of 600 MB so it fits on the device next to the model.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"Split.x must be uint8 [N, 3, H, W], got {x.dtype} {tuple(x.shape)}")
        if y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"Split.y must be int64 [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}")
        if x.device.type != "cpu" or y.device.type != "cpu":
            raise ValueError("Split tensors must be on the CPU; DeviceLoader moves them to the device")
        if not (x.is_contiguous() and y.is_contiguous()):
            raise ValueError("Split tensors must be contiguous")

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, image={tuple(self.x.shape[1:])})"


class Decoded(NamedTuple):
    """What a source decodes to and the cache stores: class names in label order and both splits."""

    classes: tuple[str, ...]
    train: Split
    test: Split


@dataclass(frozen=True, eq=False)
class Dataset:
    """A decoded dataset with its train and test splits.

    ``name`` is the config name (``cifar10``, ``imagefolder``, ``digits``); ``label`` is the human
    name that reports print; ``classes`` lists class names in label order.
    """

    name: str
    label: str
    classes: tuple[str, ...]
    train: Split
    test: Split

    def __post_init__(self) -> None:
        if self.train.x.shape[1:] != self.test.x.shape[1:]:
            raise ValueError(
                f"train images are {tuple(self.train.x.shape[1:])} but test images are "
                f"{tuple(self.test.x.shape[1:])}"
            )
        if self.train.x.shape[2] != self.train.x.shape[3]:
            raise ValueError(f"images must be square, got {tuple(self.train.x.shape[2:])}")

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """Native side length of the (square) images, in pixels."""
        return self.train.x.shape[-1]

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, label={self.label!r}, classes={len(self.classes)}, "
            f"train={self.train!r}, test={self.test!r})"
        )
