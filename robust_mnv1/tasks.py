"""The tasks a run can do, one function each; ``cfg.task`` picks one."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig

from robust_mnv1.data import load_dataset
from robust_mnv1.infra.device import resolve_device
from robust_mnv1.infra.threads import choose_threads
from robust_mnv1.training.model_cache import cache_root, standard_model

log = logging.getLogger(__name__)


def train_task(cfg: DictConfig) -> float:
    """Train (or fetch from the cache) the standard model and report its test accuracy."""
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    model, meta = standard_model(cfg, dataset, device)
    how = f"trained in {meta['train_seconds']:.1f} s" if meta["trained"] else "from the cache"
    acc = meta["test_acc"]
    log.info("%s on %s: test accuracy %.4f (%s, %s)", model.name, dataset.label, acc, how, device)
    return meta["test_acc"]


def run_task(cfg: DictConfig) -> float:
    from robust_mnv1.evaluation.study import study_task

    threads = choose_threads(cfg.threads)
    torch.set_num_threads(threads)
    log.info("%d torch CPU thread(s) (threads=%s)", threads, cfg.threads)
    return {"train": train_task, "study": study_task}[cfg.task](cfg)
