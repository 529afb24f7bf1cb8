"""Decoding an image-folder tree (``train/<class>/*``, ``test/<class>/*``) into uint8 tensors.

Class indices follow sorted class directory names, as in torchvision's ``ImageFolder``. Every image
is decoded with PIL to RGB and must have the same square size: nothing is resized here, because the
models resize internally and a silent resize would hide a mixed-up dataset.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from robust_mnv1.data.splits import Decoded, Split
from robust_mnv1.infra.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})

_LAYOUT_HINT = "lay it out as train/<class>/<image> and test/<class>/<image>"


def find_tree_root(directory: Path, origin: Path) -> Path:
    """The directory holding ``train/`` and ``test/``: ``directory`` itself or its one wrapper subdirectory.

    ``origin`` is what the user pointed at (the archive, for an extracted one) and is named in errors.
    """
    if _has_splits(directory):
        return directory
    candidates = [d for d in sorted(directory.iterdir()) if d.is_dir() and _has_splits(d)]
    if len(candidates) != 1:
        raise UserError(
            f"{origin} has no train/ and test/ directories at its top level or under one wrapper "
            f"directory; {_LAYOUT_HINT}"
        )
    return candidates[0]


def _has_splits(directory: Path) -> bool:
    return (directory / "train").is_dir() and (directory / "test").is_dir()


def tree_files(tree: Path) -> list[Path]:
    """Every file under ``tree/train`` and ``tree/test`` in a fixed order (for fingerprinting)."""
    return sorted(p for split in ("train", "test") for p in (tree / split).rglob("*") if p.is_file())


def decode_tree(tree: Path, origin: Path) -> Decoded:
    """Decode both splits of the image-folder tree at ``tree``; ``origin`` is named in error messages."""
    classes = _class_names(tree / "train", origin)
    test_classes = _class_names(tree / "test", origin)
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise UserError(
            f"{origin}: train/ and test/ have different class directories (only in train: {only_train}, "
            f"only in test: {only_test}); give both splits the same classes"
        )
    size: tuple[int, int] | None = None
    splits = []
    for split_name in ("train", "test"):
        files, labels = _list_images(tree, split_name, classes, origin)
        x, size = _decode_images(files, tree, origin, size, desc=f"decoding {split_name}")
        splits.append(Split(x, torch.tensor(labels, dtype=torch.int64)))
    return Decoded(classes, splits[0], splits[1])


def _class_names(split_dir: Path, origin: Path) -> tuple[str, ...]:
    # Hidden directories (.ipynb_checkpoints, ...) are tool debris, not classes.
    names = tuple(sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not names:
        raise UserError(f"{origin}: {split_dir.name}/ has no class directories; {_LAYOUT_HINT}")
    return names


def _list_images(
    tree: Path, split_name: str, classes: tuple[str, ...], origin: Path
) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        class_dir = tree / split_name / name
        found = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise UserError(
                f"class directory {_show(class_dir, tree, origin)} has no images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the directory"
            )
        files.extend(found)
        labels.extend([index] * len(found))
    return files, labels


def _decode_images(
    files: list[Path], tree: Path, origin: Path, size: tuple[int, int] | None, desc: str
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode ``files`` into uint8 ``[N, 3, H, W]``; all must be ``size`` (or the first file's size)."""
    out: np.ndarray | None = None
    start = time.perf_counter()
    for i, path in enumerate(tqdm(files, desc=desc, unit="img", disable=None, leave=False)):
        pixels = _decode_one(path, tree, origin)
        h, w = pixels.shape[:2]
        if size is None:
            if h != w:
                raise UserError(
                    f"image {_show(path, tree, origin)} is {w}x{h}; images must be square, crop or "
                    "pad them to one size first"
                )
            size = (h, w)
        if (h, w) != size:
            raise UserError(
                f"image {_show(path, tree, origin)} is {w}x{h} but earlier images are {size[1]}x{size[0]}; "
                "all images must have the same size, resize them first"
            )
        if out is None:
            out = np.empty((len(files), h, w, 3), dtype=np.uint8)
        out[i] = pixels
    assert out is not None and size is not None  # _list_images guarantees at least one file
    logger.info("%s: %d images in %.1f s", desc, len(files), time.perf_counter() - start)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2))), size


def _decode_one(path: Path, tree: Path, origin: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(
            f"cannot decode image {_show(path, tree, origin)} ({type(err).__name__}: "
            f"{' '.join(str(err).split())}); delete or replace the file"
        ) from err


def _show(path: Path, tree: Path, origin: Path) -> str:
    """``path`` as the user knows it: inside the archive they gave, or as is for a plain directory."""
    if origin.is_file():
        return f"{path.relative_to(tree).as_posix()} in {origin}"
    return str(path)
