"""On-disk cache of decoded datasets, so only the first run pays for decoding.

Each source gets one safetensors file (no pickle: loading a cache file cannot run code), named by a
hash of the dataset name and the source's path. The file's metadata records a *fingerprint* of the
source (sizes and modification times) and the cache format version; when either no longer matches,
the entry is stale and gets rebuilt in place. A file that cannot be read or holds inconsistent
tensors is reported with a warning and rebuilt. Writes go to a temporary file that is then renamed
over the entry, so a killed run never leaves a half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from robust_mnv1.data.splits import Decoded, Split

logger = logging.getLogger(__name__)

# Bump when decoding changes what ends up in the tensors, so old caches are rebuilt.
CACHE_VERSION = "1"

_TENSOR_KEYS = ("train_x", "train_y", "test_x", "test_y")


def digest(*parts: object) -> str:
    """A short stable hex digest of ``parts`` (joined by NUL), for cache file and directory names."""
    joined = "\0".join(str(p) for p in parts)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def stat_fingerprint(files: Iterable[Path], base: Path) -> str:
    """Digest of each file's path relative to ``base``, size and mtime: changes when any file changes."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(base).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_file(cache_dir: Path, name: str, identity: str) -> Path:
    """The cache file for dataset ``name`` read from ``identity`` (typically its resolved path)."""
    return cache_dir / f"{name}-{digest(name, identity)}.safetensors"


def read_cache(path: Path, fingerprint: str) -> Decoded | None:
    """The decoded dataset stored at ``path``, or None when it is absent, stale or corrupt.

    A corrupt file (unreadable, or tensors that do not fit together) triggers a warning; the caller
    then rebuilds it with :func:`write_cache`.
    """
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != fingerprint:
                logger.info("cache %s is stale (source or format changed); rebuilding", path)
                return None
            tensors = {k: f.get_tensor(k) for k in _TENSOR_KEYS}
        classes = tuple(json.loads(meta["classes"]))
        decoded = Decoded(
            classes,
            Split(tensors["train_x"], tensors["train_y"]),
            Split(tensors["test_x"], tensors["test_y"]),
        )
        _check_consistent(decoded)
    except Exception as err:  # any failure to read back means the file is damaged; rebuilding is safe
        warnings.warn(
            f"corrupt dataset cache {path} ({type(err).__name__}: {err}); rebuilding it",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return decoded


def _check_consistent(decoded: Decoded) -> None:
    """Raise ValueError unless both splits share an image shape and every label names a class."""
    if not decoded.classes or not all(isinstance(c, str) for c in decoded.classes):
        raise ValueError("class list is empty or not strings")
    if decoded.train.x.shape[1:] != decoded.test.x.shape[1:]:
        raise ValueError("train and test image shapes differ")
    for split in (decoded.train, decoded.test):
        if len(split) == 0:
            raise ValueError("empty split")
        if int(split.y.min()) < 0 or int(split.y.max()) >= len(decoded.classes):
            raise ValueError("label out of range")


def write_cache(path: Path, decoded: Decoded, fingerprint: str) -> None:
    """Store ``decoded`` at ``path`` atomically (temporary file, then rename over the entry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "train_x": decoded.train.x,
        "train_y": decoded.train.y,
        "test_x": decoded.test.x,
        "test_y": decoded.test.y,
    }
    metadata = {"version": CACHE_VERSION, "fingerprint": fingerprint, "classes": json.dumps(decoded.classes)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("cached decoded dataset at %s", path)
