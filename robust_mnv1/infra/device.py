"""Which device a run uses, and whether its training steps replay from a CUDA graph."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from robust_mnv1.infra.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for, but no CUDA device is available; use device=cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"unknown device {name!r}; valid choices: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def use_cuda_graph(cfg: DictConfig, device: torch.device) -> bool:
    """Whether training steps replay from a CUDA graph: ``cuda_graph`` auto/true/false in the config."""
    choice = cfg.cuda_graph
    if choice == "auto":
        return device.type == "cuda"
    if choice is True and device.type != "cuda":
        raise UserError(f"cuda_graph=true needs a CUDA device, but device is {device}; use cuda_graph=auto")
    if not isinstance(choice, bool):
        raise UserError(f"cuda_graph={choice!r} is not one of auto, true, false")
    return choice
