"""The tiny digits model that the export, deployed and transfer tests share, trained once per session.

A digits model that learns in about 10 s on one busy core (83% test accuracy), and a one-epoch,
one-step PGD-AT fine-tune of it: enough for int8 to have something to agree with.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from robust_mnv1.config.compose import compose_config
from robust_mnv1.data import load_dataset
from robust_mnv1.training.model_cache import cache_root, finetuned_model, standard_model

TINY = [
    "model.alpha=0.25",
    "train.epochs=3",
    "train.batch_size=64",
    "train.lr=0.1",
    "train.augment=false",
    "finetune.epochs=1",
    "finetune.batch_size=128",
    "finetune.steps=1",
    "finetune.step_255=8",
]


def train_tiny(cache: Path) -> None:
    """Train the tiny model and its fine-tune through the model cache into ``cache``."""
    cfg = compose_config([*TINY, f"cache_dir={cache}"], "export")
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    model, meta = standard_model(cfg, dataset, torch.device("cpu"))
    finetuned_model(cfg, dataset, torch.device("cpu"), model, meta)


def copy_tiny(trained: Path, cache: Path) -> None:
    """Give ``cache`` its own copy of the tiny models in ``trained``, so a test that writes to its cache
    (an export, a record of its own) leaves the other tests' copies as they were."""
    shutil.copytree(trained, cache, dirs_exist_ok=True)
