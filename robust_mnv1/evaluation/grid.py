"""The study's grid: one config per model to train and attack, and the order to run them in."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from robust_mnv1.cost import layer_costs
from robust_mnv1.models.spec import ModelSpec


def unit_configs(cfg: DictConfig) -> list[DictConfig]:
    """One config per model of the grid; without a grid, the single model of ``cfg.model``.

    A grid point may name its own ``seed`` (another training run of the same architecture);
    otherwise it takes ``cfg.seed``.
    """
    grid = cfg.study.grid or [{"alpha": cfg.model.alpha, "rho": cfg.model.rho}]
    units = []
    for point in grid:
        unit = cfg.copy()
        OmegaConf.set_struct(unit, False)
        unit.model.alpha, unit.model.rho = point["alpha"], point["rho"]
        unit.seed = point.get("seed", cfg.seed)
        units.append(unit)
    return units


def unit_label(cfg: DictConfig) -> str:
    """How the study's log names a unit: ``alpha/rho/sSEED``."""
    return f"{cfg.model.alpha}/{cfg.model.rho}/s{cfg.seed}"


def cheapest_first(units: list[DictConfig], num_classes: int) -> list[DictConfig]:
    """``units`` ordered by the mult-adds of their model's forward pass, which set the time of its
    training and its attacks alike, then by seed."""

    def cost(unit: DictConfig) -> tuple[int, int]:
        m = unit.model
        spec = ModelSpec(alpha=m.alpha, rho=m.rho, profile=m.profile, num_classes=num_classes)
        return int(layer_costs(spec.build())["macs"].sum()), int(unit.seed)

    return sorted(units, key=cost)
