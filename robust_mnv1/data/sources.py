"""The three datasets (``cifar10``, ``imagefolder``, ``digits``) and :func:`load_dataset`.

Each dataset is described by a :class:`Source`: which cache file it uses, a fingerprint of its files
that tells whether that cache is current, and how to decode it from scratch. :func:`load_dataset`
serves the cache when it is current and otherwise decodes once and writes it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import to_absolute_path

from robust_mnv1.data import archive, cache, imagefolder
from robust_mnv1.data.splits import Dataset, Decoded, Split
from robust_mnv1.infra.errors import UserError

logger = logging.getLogger(__name__)

CIFAR10_LABEL = "CIFAR-10"
CIFAR10_JPEG_LABEL = "CIFAR-10 (JPEG q75)"
DIGITS_LABEL = "digits (sklearn 8x8→32x32)"

# digits: 20% held out, stratified, with a fixed seed so every run sees the same split.
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0
_DIGITS_UPSCALE = 4  # 8x8 -> 32x32, nearest neighbour


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from, enough to find its cache entry, check it is current and rebuild it.

    ``identity`` (the resolved source path) picks the cache file; ``fingerprint()`` digests the
    source's sizes and modification times, or returns None while the source is not on disk yet (a
    CIFAR-10 that ``build`` would download); ``build()`` decodes from scratch.
    """

    name: str
    label: str
    identity: str
    fingerprint: Callable[[], str | None]
    build: Callable[[], Decoded]


def load_dataset(cfg: Mapping[str, Any], cache_dir: str | Path) -> Dataset:
    """Load the dataset that ``cfg`` (the ``data`` config group) names, decoding it at most once.

    Decoded arrays are cached under ``cache_dir`` (safetensors, keyed by the source's path, sizes and
    mtimes), so later runs start in seconds; archives are extracted under ``cache_dir/extracted``.
    A stale cache (the source changed) is rebuilt silently, a corrupt one with a warning.

    Raises:
        UserError: the data is missing or malformed, or ``cfg`` disagrees with it
            (``num_classes``, ``image_size``); the message is one line naming the path and the fix.
    """
    name = cfg.get("name")
    if name not in _SOURCES:
        raise UserError(f"unknown dataset data.name={name!r}; use one of: data={', data='.join(_SOURCES)}")
    cache_root = Path(os.path.expanduser(str(cache_dir)))
    source = _SOURCES[name](cfg, cache_root)
    entry = cache.cache_file(cache_root, name, source.identity)
    fingerprint = source.fingerprint()
    decoded = cache.read_cache(entry, fingerprint) if fingerprint is not None else None
    if decoded is None:
        start = time.perf_counter()
        decoded = source.build()
        logger.info("decoded %s in %.1f s", source.label, time.perf_counter() - start)
        # Keep the pre-build fingerprint when there was one: if the source changed while it was being
        # decoded, the next run then sees a mismatch and decodes again rather than trusting a mix.
        if fingerprint is None:
            fingerprint = source.fingerprint()
        if fingerprint is None:
            raise RuntimeError(f"{name} source has no fingerprint right after it was built")
        cache.write_cache(entry, decoded, fingerprint)
    dataset = Dataset(name, source.label, decoded.classes, decoded.train, decoded.test)
    _check_matches_config(dataset, cfg)
    return dataset


def _check_matches_config(dataset: Dataset, cfg: Mapping[str, Any]) -> None:
    """Fail early when the config's num_classes/image_size (which size the model) disagree with the data."""
    for key, actual in (("num_classes", dataset.num_classes), ("image_size", dataset.image_size)):
        expected = cfg.get(key)
        if expected is not None and int(expected) != actual:
            raise UserError(
                f"data.{key}={expected} but the {dataset.label} data has {key}={actual}; "
                f"set data.{key}={actual}"
            )


def _resolve_root(cfg: Mapping[str, Any], hint: str) -> Path:
    root = cfg.get("root")
    if root is None or str(root) == "":
        raise UserError(f"data.root is not set for data={cfg.get('name')}; {hint}")
    # Relative roots are relative to where the user launched, even if Hydra changed directory; the
    # resolved path names the data, so runs from two checkouts (../data from each) share one cache entry.
    return Path(to_absolute_path(os.path.expanduser(str(root)))).resolve()


def _cifar10(cfg: Mapping[str, Any], cache_dir: Path) -> Source:
    """Canonical CIFAR-10 through torchvision, downloading it on first use if ``data.download``.

    torchvision reads the official ``cifar-10-batches-py`` pickle files. Unpickling can run code, so
    this trusts those files: they come from the dataset authors and torchvision checks every file's
    md5 against the published sums before reading it.
    """
    del cache_dir  # torchvision keeps the raw batches under data.root itself
    from torchvision.datasets import CIFAR10

    root = _resolve_root(cfg, "set data.root=DIR (the directory holding cifar-10-batches-py)")
    download = bool(cfg.get("download", True))
    batches = root / CIFAR10.base_folder
    files = [batches / n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [
        batches / CIFAR10.meta["filename"]
    ]

    def fingerprint() -> str | None:
        return cache.stat_fingerprint(files, root) if all(f.is_file() for f in files) else None

    def build() -> Decoded:
        try:
            train = CIFAR10(str(root), train=True, download=download)
            test = CIFAR10(str(root), train=False, download=False)
        except Exception as err:  # torchvision raises RuntimeError, URLError, HTTPError, tar errors, ...
            reason = f"{type(err).__name__}: {' '.join(str(err).split())}"
            fallback = "or use data=imagefolder data.root=PATH"
            if download:
                raise UserError(
                    f"CIFAR-10 not found under {batches} and the download failed ({reason}); download it "
                    f"on a machine with internet and copy it there, {fallback}"
                ) from err
            raise UserError(
                f"CIFAR-10 not found (or failed its md5 check) under {batches} and data.download=false "
                f"({reason}); set data.download=true on a machine with internet, {fallback}"
            ) from err
        return Decoded(tuple(train.classes), _cifar_split(train), _cifar_split(test))

    return Source("cifar10", cfg.get("label") or CIFAR10_LABEL, str(batches), fingerprint, build)


def _cifar_split(ds: Any) -> Split:
    # torchvision holds HWC; the batches on disk (and our tensors) are CHW.
    x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return Split(x, torch.tensor(ds.targets, dtype=torch.int64))


def _imagefolder(cfg: Mapping[str, Any], cache_dir: Path) -> Source:
    """Any ``train/<class>/*`` + ``test/<class>/*`` tree, as a directory or a tar(.gz) archive of one."""
    hint = "set data.root=PATH to a directory with train/<class>/* and test/<class>/*, or a .tar.gz of one"
    root = _resolve_root(cfg, hint)
    if not root.exists():
        raise UserError(f"ImageFolder root {root} does not exist; {hint}")
    stem = archive.archive_stem(root) if root.is_file() else root.name
    label = cfg.get("label") or (CIFAR10_JPEG_LABEL if "cifar10-jpeg" in stem else f"ImageFolder({stem})")

    if root.is_file():
        if not archive.is_archive(root):
            raise UserError(f"ImageFolder root {root} is a file but not a .tar.gz/.tgz/.tar archive; {hint}")

        def archive_fingerprint() -> str:
            st = root.stat()
            return cache.digest(cache.CACHE_VERSION, st.st_size, st.st_mtime_ns)

        def build_from_archive() -> Decoded:
            extracted = archive.extract_once(root, cache_dir / "extracted")
            return imagefolder.decode_tree(imagefolder.find_tree_root(extracted, root), root)

        return Source("imagefolder", label, str(root), archive_fingerprint, build_from_archive)

    def tree_fingerprint() -> str:
        tree = imagefolder.find_tree_root(root, root)
        return cache.digest(cache.CACHE_VERSION, cache.stat_fingerprint(imagefolder.tree_files(tree), root))

    def build_from_tree() -> Decoded:
        return imagefolder.decode_tree(imagefolder.find_tree_root(root, root), root)

    return Source("imagefolder", label, str(root), tree_fingerprint, build_from_tree)


def _digits(cfg: Mapping[str, Any], cache_dir: Path) -> Source:
    """scikit-learn's bundled 8x8 handwritten digits, upsampled to 32x32 RGB; fully offline.

    Values 0..16 are scaled to 0..255 and each pixel becomes a 4x4 block (nearest neighbour): the
    32x32 image carries exactly the information of the 8x8 one, with no interpolation artefacts that
    an attack could exploit or a model could learn. The gray image is copied to all three channels.
    The split is a fixed stratified 80/20 (``train_test_split(random_state=0, stratify=y)``).
    """
    del cache_dir
    import sklearn

    def fingerprint() -> str:
        return cache.digest(
            cache.CACHE_VERSION,
            sklearn.__version__,
            _DIGITS_TEST_FRACTION,
            _DIGITS_SPLIT_SEED,
            _DIGITS_UPSCALE,
        )

    return Source(
        "digits", cfg.get("label") or DIGITS_LABEL, "sklearn.datasets.load_digits", fingerprint, _build_digits
    )


def _build_digits() -> Decoded:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    gray = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    big = gray.repeat(_DIGITS_UPSCALE, axis=1).repeat(_DIGITS_UPSCALE, axis=2)
    x = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(big[:, None], (len(big), 3, *big.shape[1:]))))
    y = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(y)),
        test_size=_DIGITS_TEST_FRACTION,
        random_state=_DIGITS_SPLIT_SEED,
        stratify=digits.target,
    )
    # Keep the original order inside each split: easier to inspect, and shuffling is the loader's job.
    splits = [torch.from_numpy(np.sort(idx)) for idx in (train_idx, test_idx)]
    classes = tuple(str(c) for c in digits.target_names)
    return Decoded(classes, *(Split(x[i].contiguous(), y[i].contiguous()) for i in splits))


_SOURCES: dict[str, Callable[[Mapping[str, Any], Path], Source]] = {
    "cifar10": _cifar10,
    "imagefolder": _imagefolder,
    "digits": _digits,
}
