"""The study: for each model, standard-train, attack, adversarially fine-tune, attack again.

A *unit* is one model of the grid: standard training, its evaluation, fine-tuning and the
fine-tuned model's evaluation. Each (model, regime, attack) writes one run record as soon as
it is done, and a record whose config hash matches is never recomputed, so a study killed at
any point resumes where it stopped (trained models come back from the checkpoint cache).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from robust_mnv1 import evaluate as ev
from robust_mnv1.cost import layer_costs
from robust_mnv1.data import Dataset, load_dataset
from robust_mnv1.envinfo import environment
from robust_mnv1.leaderboard import generate
from robust_mnv1.records import config_hash, make_run_id, write_record
from robust_mnv1.zoo import cache_root, finetuned_model, make_model, resolve_device, standard_model

ATTACKS = ("fgsm", "pgd", "cw")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def record_config(cfg: DictConfig, regime: str, attack: str) -> dict[str, Any]:
    """Everything that determines one record's numbers, and nothing else (no paths, no device)."""
    full = OmegaConf.to_container(cfg, resolve=True)
    out = {k: full[k] for k in ("model", "data", "train", "eval", "seed")}
    out["attack"] = {attack: full["attack"][attack]}
    if regime != "standard":
        out["finetune"] = full["finetune"]
    out["data"].pop("root", None)
    return out


def unit_configs(cfg: DictConfig) -> list[DictConfig]:
    """One config per model of the grid; without a grid, the single model of ``cfg.model``."""
    grid = cfg.study.grid or [{"alpha": cfg.model.alpha, "rho": cfg.model.rho}]
    units = []
    for point in grid:
        unit = cfg.copy()
        OmegaConf.set_struct(unit, False)
        unit.model.alpha, unit.model.rho = point["alpha"], point["rho"]
        units.append(unit)
    return units


class Unit:
    """One model of the study and the records it owes."""

    def __init__(self, cfg: DictConfig, dataset: Dataset, device: torch.device, runs_dir: Path):
        self.cfg, self.dataset, self.device, self.runs_dir = cfg, dataset, device, runs_dir
        self.name = make_model(cfg, dataset).name
        self.regimes = ("standard", cfg.finetune.regime)
        self.attacks = [a for a in ATTACKS if a in cfg.attack]

    def path(self, regime: str, attack: str) -> tuple[Path, str]:
        cfgd = record_config(self.cfg, regime, attack)
        run_id = make_run_id(self.name, regime, attack, slug(self.dataset.label), self.cfg.seed)
        return self.runs_dir / f"{run_id}.json", config_hash(cfgd)

    def done(self, regime: str, attack: str) -> bool:
        import json

        path, digest = self.path(regime, attack)
        try:
            return json.loads(path.read_text())["config_hash"] == digest
        except (OSError, ValueError, KeyError):
            return False

    def run(self) -> None:
        if all(self.done(r, a) for r in self.regimes for a in self.attacks):
            tqdm.write(f"{self.name}: every record is done, skipping")
            return
        cfg, device = self.cfg, self.device
        model, meta = standard_model(cfg, self.dataset, device)
        stages = {"standard": (model, meta)}
        if not all(self.done(self.regimes[1], a) for a in self.attacks):
            stages[self.regimes[1]] = finetuned_model(cfg, self.dataset, device, model, meta)
        costs = layer_costs(model)
        latency = (
            ev.cpu_latency_ms(model, self.dataset.image_size, cfg.eval.latency.reps)
            if cfg.eval.latency.enabled
            else None
        )
        for regime in self.regimes:
            if regime not in stages:
                continue
            m, m_meta = stages[regime]
            self.evaluate(regime, m, m_meta, meta, costs, latency)

    def evaluate(self, regime, model, meta, std_meta, costs, latency) -> None:
        cfg, ds, device = self.cfg, self.dataset, self.device
        sanity, sanity_s = None, 0.0
        for attack in self.attacks:
            if self.done(regime, attack):
                continue
            t0 = time.perf_counter()
            n = cfg.eval.n_cw if attack == "cw" else cfg.eval.n_examples
            x, y = ev.eval_subset(ds.test, n, device)
            clean = ev.clean_accuracy(model, x, y)
            ev.check_clean(clean, meta["test_acc"], cfg.eval.max_clean_drop, f"{self.name} {regime}")
            acfg = cfg.attack[attack]
            eps_results, cw = [], None
            if attack == "fgsm":
                eps_results = ev.run_fgsm(model, x, y, acfg)
            elif attack == "pgd":
                eps_results = ev.run_pgd(model, x, y, acfg, cfg.seed)
            else:
                cw = ev.run_cw(model, x, y, acfg, cfg.seed)
            eval_s = time.perf_counter() - t0
            if sanity is None and cfg.eval.sanity.enabled:
                t1 = time.perf_counter()
                xs, ys = ev.eval_subset(ds.test, cfg.eval.sanity.n, device)
                sanity, sanity_s = (
                    ev.sanity(model, xs, ys, eps=8 / 255, seed=cfg.seed),
                    time.perf_counter() - t1,
                )
            path, digest = self.path(regime, attack)
            timing = {
                "train_s": std_meta["train_seconds"],
                "finetune_s": meta["train_seconds"] if regime != "standard" else 0.0,
                "eval_s": eval_s,
                "sanity_s": sanity_s,
            }
            timing["total_s"] = sum(timing.values())
            record = {
                "schema_version": 1,
                "run_id": path.stem,
                "model": {
                    "name": self.name,
                    "alpha": float(cfg.model.alpha),
                    "rho": float(cfg.model.rho),
                    "profile": cfg.model.profile,
                    "input_resolution": model.input_resolution,
                    "params": int(costs["params"].sum()),
                    "macs": int(costs["macs"].sum()),
                },
                "regime": regime,
                "attack": attack,
                "data": {
                    "name": ds.name,
                    "label": ds.label,
                    "key": slug(ds.label),
                    "n_train": len(ds.train.y),
                    "n_test": len(ds.test.y),
                },
                "seed": int(cfg.seed),
                "config": record_config(cfg, regime, attack),
                "config_hash": digest,
                "clean": clean,
                "eps_results": eps_results,
                "cw": cw,
                "sanity": sanity or {"passed": True, "flags": [], "reports": []},
                "timing": timing,
                "latency_ms_cpu_b1": latency,
                "env": environment(device),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_record(record, self.runs_dir)
            tqdm.write(f"{self.name} {regime} {attack}: clean {clean['accuracy']:.3f} -> {path}")


def study_task(cfg: DictConfig) -> float:
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    results = Path(cfg.results_dir)
    t0 = time.perf_counter()
    for unit_cfg in tqdm(unit_configs(cfg), desc="study units", unit="model", leave=False):
        Unit(unit_cfg, dataset, device, results / "runs").run()
    generate(results)
    print(f"study done in {time.perf_counter() - t0:.1f} s; leaderboard: {results / 'leaderboard.md'}")
    return time.perf_counter() - t0
