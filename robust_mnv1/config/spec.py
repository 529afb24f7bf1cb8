"""Where config stops: the composed config turned into the typed specs the code below takes.

Only the entry points and the study read the config itself (and the record and cache keys, which
hash it); a model is named and built from a :class:`ModelSpec`, and attacked with the specs of
:mod:`robust_mnv1.evaluation.specs`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from robust_mnv1.config.check import check_data_sizes
from robust_mnv1.data import Dataset
from robust_mnv1.evaluation.specs import APGDSpec, AttackSpec, CWSpec, FGSMSpec, PGDSpec, SquareSpec
from robust_mnv1.infra.errors import UserError
from robust_mnv1.models.spec import ModelSpec

_ATTACK_SPECS: dict[str, type] = {"fgsm": FGSMSpec, "pgd": PGDSpec, "apgd": APGDSpec, "cw": CWSpec}


def model_spec(cfg: DictConfig, dataset: Dataset) -> ModelSpec:
    """The model ``cfg`` names for ``dataset``, once ``cfg`` is checked against the dataset's real size
    (an image folder's is known only once it is read; every task makes its model spec here first)."""
    check_data_sizes(cfg, len(dataset.train.y), len(dataset.test.y), dataset.label)
    num_classes = cfg.model.num_classes if cfg.model.num_classes is not None else dataset.num_classes
    if num_classes != dataset.num_classes:
        raise UserError(
            f"model.num_classes={num_classes} but {dataset.label} has {dataset.num_classes} classes"
        )
    return ModelSpec(
        alpha=cfg.model.alpha, rho=cfg.model.rho, profile=cfg.model.profile, num_classes=num_classes
    )


def _tuples(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def attack_spec(family: str, acfg: DictConfig) -> AttackSpec:
    """The spec of one attack family (``fgsm``, ``pgd``, ``apgd``, ``cw``) from its config group."""
    values = {k: _tuples(v) for k, v in OmegaConf.to_container(acfg, resolve=True).items()}
    if family == "apgd":
        values["square"] = SquareSpec(**values["square"])
    return _ATTACK_SPECS[family](**values)
