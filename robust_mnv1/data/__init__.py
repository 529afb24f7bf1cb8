"""Datasets for the suite: CIFAR-10, any image-folder tree (e.g. the shared CIFAR-10 JPEGs), sklearn digits.

:func:`load_dataset` decodes a dataset once into uint8 tensors and caches them on disk;
:class:`DeviceLoader` serves float batches from a copy held on the training device.
"""

from robust_mnv1.data.loader import DeviceLoader, crop_flip, eval_batches
from robust_mnv1.data.sources import load_dataset
from robust_mnv1.data.splits import Dataset, Split

__all__ = ["Dataset", "DeviceLoader", "Split", "crop_flip", "eval_batches", "load_dataset"]
