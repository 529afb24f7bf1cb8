"""The cache of trained models: every experiment that needs the same model shares one training run.

A model's cache entry is named by a hash of everything that determines its weights (model
config, data identity, training recipe, seed and, for fine-tuned models, the parent's key), so
``pgd_alpha050``, ``fgsm_alpha050`` and ``cw_alpha050`` train alpha=0.5 once.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from robust_mnv1.config.spec import model_spec
from robust_mnv1.data import Dataset
from robust_mnv1.infra.device import use_cuda_graph
from robust_mnv1.training.checkpoint import cache_key, weights_digest
from robust_mnv1.training.fit import cross_entropy_objective, fit


def cache_root(cfg: DictConfig) -> Path:
    return Path(os.path.expanduser(str(cfg.cache_dir)))


def data_identity(data_cfg: DictConfig) -> dict[str, Any]:
    """What names a dataset for caching: its loader and source, not its display label.

    An archive is named by its contents (sha256), so a model trained on one machine is found in
    the cache on another that keeps the same archive elsewhere (train on a GPU box, evaluate on a
    laptop); a directory tree by its absolute path, since hashing every image would take longer
    than a short training run.
    """
    ident = {
        k: v
        for k, v in OmegaConf.to_container(data_cfg, resolve=True).items()
        if k not in {"label", "download"}
    }
    if ident.get("root"):
        root = Path(os.path.expanduser(str(ident["root"]))).resolve()
        ident["root"] = f"sha256:{file_sha256(root)}" if root.is_file() else str(root)
    return ident


@functools.cache
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def standard_key(cfg: DictConfig) -> str:
    model = OmegaConf.to_container(cfg.model, resolve=True)
    train = OmegaConf.to_container(cfg.train, resolve=True)
    return cache_key("standard", model, data_identity(cfg.data), train, cfg.seed)


def finetuned_key(cfg: DictConfig, parent_key: str, parent_weights: str) -> str:
    """The cache key of ``cfg.finetune`` applied to the standard model of key ``parent_key`` and weights
    digest ``parent_weights``."""
    fcfg = OmegaConf.to_container(cfg.finetune, resolve=True)
    return cache_key("finetune", parent_key, parent_weights, fcfg, cfg.seed)


def model_dir(cfg: DictConfig, name: str, regime: str, key: str) -> Path:
    """The cache directory of model ``name`` trained in ``regime`` under cache key ``key``."""
    return cache_root(cfg) / "models" / f"{name}-{regime}-{key}"


def standard_model(cfg: DictConfig, dataset: Dataset, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The standard-trained model for ``cfg``: from the cache, or trained now and cached."""
    torch.manual_seed(cfg.seed)
    model = model_spec(cfg, dataset).build()
    key = standard_key(cfg)
    meta = fit(
        model,
        dataset.train,
        dataset.test,
        cfg.train,
        device=device,
        seed=cfg.seed,
        run_dir=model_dir(cfg, model.name, "standard", key),
        objective=cross_entropy_objective(cfg.train.label_smoothing),
        desc=f"{model.name} standard",
        meta={"key": key, "regime": "standard", "model": model.name, "data": dataset.label},
        cuda_graph=use_cuda_graph(cfg, device),
    )
    return model, meta


def finetuned_model(
    cfg: DictConfig, dataset: Dataset, device: torch.device, parent: torch.nn.Module, parent_meta: dict
) -> tuple[torch.nn.Module, dict]:
    """A copy of ``parent`` adversarially fine-tuned by ``cfg.finetune``: from the cache, or trained now."""
    from robust_mnv1.training.objectives import make_objective

    fcfg = cfg.finetune
    torch.manual_seed(cfg.seed)
    model = model_spec(cfg, dataset).build()
    model.load_state_dict(parent.state_dict())
    # The parent's weights, not just its recipe, name the fine-tuned model: a retrained parent (GPU
    # training is not bit-reproducible) must not be paired with a child of its predecessor.
    parent_weights = weights_digest(parent)
    key = finetuned_key(cfg, parent_meta["key"], parent_weights)
    meta = fit(
        model,
        dataset.train,
        dataset.test,
        fcfg,
        device=device,
        seed=cfg.seed,
        run_dir=model_dir(cfg, model.name, fcfg.regime, key),
        objective=make_objective(fcfg, cfg.seed),
        desc=f"{model.name} {fcfg.regime}",
        meta={
            "key": key,
            "parent": parent_meta["key"],
            "parent_weights": parent_weights,
            "regime": fcfg.regime,
            "model": model.name,
            "data": dataset.label,
        },
        cuda_graph=use_cuda_graph(cfg, device),
    )
    return model, meta
