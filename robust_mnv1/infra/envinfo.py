"""Where a number came from: device, library versions and the git commit of the code."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

_CODE_ROOT = Path(__file__).resolve().parents[1]
_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "foolbox": "foolbox",
    "art": "adversarial-robustness-toolbox",
    "numpy": "numpy",
}


def device_name(device: torch.device) -> str:
    return (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})"
    )


def device_slug(device: str) -> str:
    """A device name as a file name part: ``cpu (x86_64)`` -> ``cpu-x86-64``."""
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")


def cpu_name() -> str:
    """The host CPU's model name (where the batch-1 CPU latency is measured, whatever the device)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(root: Path = _CODE_ROOT) -> str | None:
    """The commit of the code in ``root``, with ``-dirty`` when the code has uncommitted changes.

    ``results/`` does not count: a study run from a clean checkout writes its records and board
    there, and those are the code's output, not a change to it.

    ``ROBUST_MNV1_GIT_COMMIT`` wins when set: a launching script that copies the code to another
    machine without its ``.git`` (docs/offline-gpu.md) knows the commit better than any ``.git`` there.
    """
    if os.environ.get("ROBUST_MNV1_GIT_COMMIT"):
        return os.environ["ROBUST_MNV1_GIT_COMMIT"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha[:12] + ("-dirty" if dirty else "")


def environment(device: torch.device) -> dict[str, str | None]:
    env: dict[str, str | None] = {
        "device": device_name(device),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    for key, dist in _PACKAGES.items():
        try:
            env[key] = version(dist)
        except PackageNotFoundError:
            env[key] = None
    env["git_commit"] = git_commit()
    return env
