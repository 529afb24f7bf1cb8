"""Safe, one-time extraction of ``.tar.gz`` / ``.tgz`` / ``.tar`` image-folder archives.

An archive is extracted into ``<extract_root>/<path digest>-<size/mtime digest>``, so it is
extracted once per version of the file; re-running with the same archive reuses the directory.
Extraction goes to a temporary sibling directory that is renamed into place only when complete, so
an interrupted run never leaves a partial tree that a later run would trust. Members with absolute
paths, ``..`` components, links or device files are refused before anything is written, and on
Pythons that have it the ``"data"`` extraction filter is applied as well.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from pathlib import Path, PurePosixPath

from robust_mnv1.data.cache import digest
from robust_mnv1.infra.errors import UserError

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(path: Path) -> bool:
    """Whether ``path`` is named like an archive this module extracts."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: Path) -> str:
    """The archive's file name without its archive suffix (``data.tar.gz`` -> ``data``)."""
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def extract_once(archive: Path, extract_root: Path) -> Path:
    """Extract ``archive`` under ``extract_root`` unless this version of it already is; return the dir.

    Older extractions of the same archive path (from before it changed) are removed afterwards.
    """
    st = archive.stat()
    path_key = digest(archive)
    target = extract_root / f"{path_key}-{digest(st.st_size, st.st_mtime_ns)}"
    if target.is_dir():
        return target
    extract_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=extract_root))
    try:
        start = time.perf_counter()
        _extract_checked(archive, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # A concurrent run finished the same extraction first; its copy is as good as ours.
            if not target.is_dir():
                raise
        logger.info("extracted %s in %.1f s", archive, time.perf_counter() - start)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for stale in extract_root.glob(f"{path_key}-*"):
        if stale != target:
            shutil.rmtree(stale, ignore_errors=True)
    return target


def _extract_checked(archive: Path, dest: Path) -> None:
    """Check every member of ``archive`` is a plain file or directory inside ``dest``, then extract."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python < 3.10.12 / 3.11.4: our own member checks above are the protection
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise UserError(
            f"cannot extract archive {archive} ({type(err).__name__}: {_one_line(err)}); "
            f"check it is a complete .tar.gz/.tgz/.tar file and that {dest.parent} has free space"
        ) from err


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
        raise UserError(
            f"archive {archive} member {name!r} has an absolute or '..' path; refusing to extract it, "
            "re-create the archive with relative paths"
        )
    if not (member.isfile() or member.isdir()):
        raise UserError(
            f"archive {archive} member {name!r} is a link or special file; only regular files and "
            "directories are accepted, re-create the archive without it"
        )


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
