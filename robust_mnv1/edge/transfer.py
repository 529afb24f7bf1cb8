"""The transfer matrix: PGD examples crafted on each model of a grid, run through every model of it.

``python -m robust_mnv1.transfer experiment=study`` takes every model of ``transfer.grid`` (null: the
study's ``study.grid``), standard and fine-tuned, from the model cache (never training one unless
``transfer.train_missing=true``). On each, the *source*, it crafts PGD examples with the protocol's
settings (:func:`robust_mnv1.edge.crafting.craft_pgd`) at each eps of ``transfer.eps_255`` on the first
``transfer.n`` test images of the evaluation order, and runs them through every model of the grid,
the *targets*, the source included: a target's accuracy on the source's examples is one cell of the
matrix, its diagonal the white-box robust accuracy.

Each source writes one record, ``<results_dir>/transfer/<run_id>.json``
(:func:`robust_mnv1.edge.deployed_records.validate_transfer_record`) holding every target's per-image
masks; a rerun skips the sources whose record already names the same config and weights.
``python -m robust_mnv1.deployed_report`` turns the records into ``transfer/transfer_matrix.csv``, a
heatmap per eps and ``deployed.md``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from robust_mnv1.config.check import BOOL, COUNT, SCHEMA, list_of, number, optional, validate
from robust_mnv1.config.compose import preflight, register_experiments, register_resolvers, user_errors_exit
from robust_mnv1.config.spec import attack_spec
from robust_mnv1.data import Dataset, load_dataset
from robust_mnv1.edge import export as ex
from robust_mnv1.edge.crafting import correct_on, craft_pgd
from robust_mnv1.edge.deployed_records import (
    SCHEMA_VERSION,
    TRANSFER,
    count_entry,
    model_id,
    validate_transfer_record,
    write_record,
)
from robust_mnv1.edge.record_fields import (
    attack_fields,
    check_attack,
    check_images,
    check_paths,
    data_fields,
    model_fields,
    record_config,
    regenerate,
)
from robust_mnv1.evaluation.grid import unit_configs
from robust_mnv1.evaluation.protocol import eval_subset
from robust_mnv1.infra.device import resolve_device
from robust_mnv1.infra.envinfo import environment
from robust_mnv1.infra.errors import UserError
from robust_mnv1.infra.malloc import keep_freed_memory
from robust_mnv1.infra.threads import choose_threads
from robust_mnv1.infra.units import eps
from robust_mnv1.records.schema import config_hash, make_run_id
from robust_mnv1.records.store import parse_record
from robust_mnv1.training.model_cache import cache_root

__all__ = ["Member", "check_config", "grid_members", "run_transfer", "validate_transfer_record"]

_RULES = {
    "grid": SCHEMA["study.grid"],
    "eps_255": list_of(number(0, 255, open_lo=True)),
    "n": optional(COUNT),
    "early_exit": BOOL,
    "train_missing": BOOL,
}
log = logging.getLogger(__name__)


@dataclass
class Member:
    """One model of the grid: its unit's config, the model in eval mode and its record fields."""

    cfg: DictConfig
    model: torch.nn.Module
    fields: dict[str, Any]

    @property
    def id(self) -> str:
        return model_id(self.fields["name"], self.fields["regime"], self.fields["seed"])


def _grid_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``study.grid`` set to the transfer grid, the models :func:`unit_configs` yields."""
    run = cfg.copy()
    with open_dict(run):
        if run.transfer.grid is not None:
            run.study.grid = run.transfer.grid
    return run


def check_config(cfg: DictConfig) -> None:
    """The run's checks (:func:`robust_mnv1.config.check.validate`, the grid as ``study.grid``) and the
    ``transfer`` group's keys."""
    run = _grid_config(cfg)
    with open_dict(run):
        tcfg = run.pop("transfer")
    try:
        validate(run)
    except UserError as err:
        raise UserError(
            str(err).replace("study.grid", "transfer.grid") if tcfg.grid is not None else str(err)
        ) from None
    ex.check_group("transfer", tcfg, _RULES)
    check_attack(cfg, "transfer", tcfg.eps_255)
    check_paths(cfg, "transfer.n", tcfg.n)


def grid_members(cfg: DictConfig, dataset: Dataset, device: torch.device) -> list[Member]:
    """Every model of the grid, standard and fine-tuned, from the cache: all are loaded before any
    attack runs, so a missing one is an error before any work."""
    members = []
    for unit in unit_configs(_grid_config(cfg)):
        for regime in ("standard", unit.finetune.regime):
            model, _, entry = ex.cached_model(
                unit,
                dataset,
                device,
                regime=regime,
                train_missing=cfg.transfer.train_missing,
                train_key="transfer.train_missing",
            )
            fields = {**model_fields(model, unit, regime), "cache_entry": entry.name}
            members.append(Member(unit, model.to(device).eval(), fields))
    return members


def _done(path: Path, digest: str, members: list[Member]) -> bool:
    """Whether ``path`` holds a valid record of this config whose source and targets are these weights."""
    try:
        record = parse_record(path.read_text(encoding="utf-8"))
        validate_transfer_record(record)
    except (OSError, ValueError):  # RecordError is a ValueError: an invalid record is redone
        return False
    weights = {tid: t["weights"] for tid, t in record["targets"].items()}
    return record["config_hash"] == digest and weights == {m.id: m.fields["weights"] for m in members}


def run_transfer(cfg: DictConfig) -> list[Path]:
    """Write the transfer record of every source of the grid that lacks one; return their paths."""
    tcfg, pgd = cfg.transfer, attack_spec("pgd", cfg.attack.pgd)
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    members = grid_members(cfg, dataset, device)
    check_images("transfer.n", tcfg.n, len(dataset.test.y), dataset.label)
    x, y = eval_subset(dataset.test, tcfg.n, device, "stratified")
    data = data_fields(dataset)
    out_dir = Path(os.path.expanduser(str(cfg.results_dir))) / "transfer"
    clean: dict[str, np.ndarray] = {}
    paths = []
    for source in members:
        # The targets include fine-tuned models, so every record depends on the fine-tune's recipe.
        config = record_config(source.cfg, ("transfer",), finetune=True)
        config["transfer"]["eps_255"] = sorted(config["transfer"]["eps_255"])
        config["transfer"].pop("grid")
        config["targets"] = [m.id for m in members]
        digest = config_hash(config)
        seed = int(source.cfg.seed)
        run_id = make_run_id(source.fields["name"], source.fields["regime"], "transfer", data["key"], seed)
        path = out_dir / f"{run_id}.json"
        if _done(path, digest, members):
            log.info("%s: recorded already, skipping", source.id)
            print(f"{source.id}: recorded already ({path})")
            continue
        if not clean:
            clean.update({m.id: correct_on(m.model, x, y, pgd.batch_size) for m in members})
        t0 = time.perf_counter()
        adv = craft_pgd(source.model, x, y, pgd, tcfg.eps_255, seed, early_exit=tcfg.early_exit)
        t1 = time.perf_counter()
        eps_entries = [
            {
                "eps": eps(e),
                "eps_255": e,
                "source_white_box": count_entry(robust, "robust"),
                "targets": {
                    m.id: count_entry(correct_on(m.model, xa, y, pgd.batch_size), "robust") for m in members
                },
            }
            for e, (xa, robust) in sorted(adv.items())
        ]
        record = {
            "schema_version": SCHEMA_VERSION,
            "kind": TRANSFER,
            "run_id": run_id,
            "source": source.fields,
            "data": data,
            "config": config,
            "config_hash": digest,
            "n": len(y),
            "order": "stratified",
            "attack": attack_fields(pgd, seed, device, early_exit=tcfg.early_exit),
            "targets": {m.id: {**m.fields, "clean": count_entry(clean[m.id], "correct")} for m in members},
            "eps": eps_entries,
            "timing": {"craft_s": t1 - t0, "evaluate_s": time.perf_counter() - t1},
            "env": environment(device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        paths.append(write_record(record, out_dir, validate_transfer_record))
        shown = ", ".join(
            f"{e['eps_255']:g}/255 {e['source_white_box']['accuracy']:.3f}" for e in eps_entries
        )
        print(f"{source.id}: white-box {shown}; crafted in {t1 - t0:.1f} s -> {paths[-1]}")
    return paths


@hydra.main(version_base="1.3", config_path="../conf", config_name="transfer")
@user_errors_exit
def _main(cfg: DictConfig) -> None:
    """Write the transfer records of the configured grid and regenerate the matrix."""
    torch.set_num_threads(choose_threads(cfg.threads))
    run_transfer(cfg)
    regenerate(Path(os.path.expanduser(str(cfg.results_dir))))


def main() -> None:
    keep_freed_memory()
    register_experiments()
    register_resolvers()
    preflight(sys.argv[1:], "transfer", check_config)
    _main()
