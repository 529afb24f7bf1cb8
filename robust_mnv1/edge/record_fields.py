"""What deployed-robustness and transfer records share: the fields naming the attack, model, data, config and
environment, and the checks both commands run before any work."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from robust_mnv1.config.check import KNOWN_DATA
from robust_mnv1.data import Dataset
from robust_mnv1.evaluation.specs import PGDSpec
from robust_mnv1.evaluation.study import slug
from robust_mnv1.infra.envinfo import environment
from robust_mnv1.infra.errors import UserError
from robust_mnv1.training.checkpoint import weights_digest


def attack_fields(pgd: PGDSpec, seed: int, device: torch.device, *, early_exit: bool) -> dict[str, Any]:
    """How the examples of a record were made, in the record."""
    return {
        "name": "pgd",
        "norm": "linf",
        "loss": pgd.loss,
        "steps": pgd.steps,
        "step_size": "2.5 * eps / steps",
        "restarts": pgd.restarts,
        "random_start": pgd.random_start,
        "seed": seed,
        "early_exit": early_exit,
        "examples": (
            "first adversarial iterate; eps walked up the grid, each attacking the previous one's survivors"
            if early_exit
            else "last iterate of every step, each eps on every image"
        ),
        "crafted_on": "pytorch fp32",
        "device": str(device),
    }


def model_fields(model: torch.nn.Module, cfg: DictConfig, regime: str) -> dict[str, Any]:
    """What names a model in the records: architecture, regime, seed and the weights' digest."""
    return {
        "name": model.name,
        "alpha": float(cfg.model.alpha),
        "rho": float(cfg.model.rho),
        "profile": cfg.model.profile,
        "input_resolution": model.input_resolution,
        "regime": regime,
        "seed": int(cfg.seed),
        "weights": weights_digest(model),
    }


def data_fields(dataset: Dataset) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "label": dataset.label,
        "key": slug(dataset.label),
        "n_train": len(dataset.train.y),
        "n_test": len(dataset.test.y),
    }


def record_config(cfg: DictConfig, groups: Iterable[str], *, finetune: bool) -> dict[str, Any]:
    """What determines a record's numbers: the model's recipe (with ``finetune``, the fine-tune's too),
    data, seed, the protocol's PGD and the entry point's ``groups`` (not where files go, nor whether
    a missing model may be trained)."""
    full = OmegaConf.to_container(cfg, resolve=True)
    keys = ["model", "data", "train", "seed"] + (["finetune"] if finetune else [])
    out = {k: full[k] for k in keys}
    out["data"].pop("root", None)
    out["attack"] = {"pgd": full["attack"]["pgd"]}
    out["order"] = "stratified"
    for group in groups:
        out[group] = {k: v for k, v in full[group].items() if k not in ("out_dir", "train_missing")}
    return out


def run_environment(device: torch.device) -> dict[str, Any]:
    """:func:`robust_mnv1.infra.envinfo.environment` and the onnx and onnxruntime versions."""
    import onnx
    import onnxruntime

    return {**environment(device), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def check_attack(cfg: DictConfig, who: str, eps_255: Iterable[float] = ()) -> None:
    """``who`` crafts the protocol's PGD examples, so ``attack.pgd`` must be there and hold ``eps_255``."""
    if "pgd" not in cfg.attack:
        raise UserError(
            f"{who} crafts the protocol's PGD examples, but the attack group has no pgd; use attack=pgd"
        )
    missing = sorted(set(eps_255) - set(cfg.attack.pgd.eps_255))
    if missing:
        raise UserError(
            f"{who}.eps_255 must be among attack.pgd.eps_255 {list(cfg.attack.pgd.eps_255)}, got {missing}"
        )


def check_images(key: str, n: int | None, n_test: int, label: str) -> None:
    """Refuse an evaluation larger than the test set (it is never cut silently)."""
    if n is not None and n > n_test:
        raise UserError(
            f"{key}={n} is more than the {n_test} test images of {label}; "
            f"set it to at most {n_test}, or null for all of them"
        )


def check_paths(cfg: DictConfig, key: str, n: int | None) -> None:
    """Before anything is loaded: ``key`` (a count of test images) against a dataset of known size, and
    ``results_dir`` a directory this user can write in, or can create."""
    known = KNOWN_DATA.get(cfg.data.name)
    if known is not None:
        check_images(key, n, known[1], cfg.data.name)
    raw = OmegaConf.to_container(cfg, resolve=False)["results_dir"]
    if "${hydra:" in str(raw):  # set by Hydra when the run starts, inside the run directory it makes
        return
    path = Path(os.path.expanduser(str(cfg.results_dir)))
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(
            f"results_dir={cfg.results_dir} is not a writable directory ({probe}); choose another results_dir"
        )


def regenerate(results_dir: Path) -> None:
    """Rewrite deployed.md and the transfer matrix from the records; a bad record elsewhere in the
    results directory is reported, not fatal: this run's record is written already."""
    from robust_mnv1.edge.deployed_report import generate

    try:
        for path in generate(results_dir):
            print(f"  wrote {path}")
    except UserError as err:
        print(f"warning: tables not regenerated: {err}", file=sys.stderr)
