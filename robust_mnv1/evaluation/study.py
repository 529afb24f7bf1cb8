"""The study: for each model, standard-train, attack, adversarially fine-tune, attack again.

A *unit* is one model of the grid: standard training, its evaluation, fine-tuning and the
fine-tuned model's evaluation. Each (model, regime, attack) writes one run record as soon as
it is done. A unit whose records all match their config hash and agree on one set of weights
(``model.weights``; the fine-tuned ones also on their parent, ``model.parent_weights``) is
skipped without loading its models. A unit that has to run redoes every record that did not
evaluate the weights it has now. So a study killed at any point resumes where it stopped when the
trained models come back from the checkpoint cache, and when they had to be retrained (a fresh
GPU machine: its training is not bit-reproducible) the unit's old records are redone rather
than mixed with records of other weights. Retraining a model whose records exist is asked for
(``study.retrain``): without it the study names such units and stops before any work.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from robust_mnv1.config.spec import attack_spec, model_spec
from robust_mnv1.cost import layer_costs
from robust_mnv1.data import Dataset, load_dataset
from robust_mnv1.evaluation import protocol as ev
from robust_mnv1.evaluation.grid import cheapest_first, unit_configs, unit_label
from robust_mnv1.evaluation.progress import AttackProgress
from robust_mnv1.evaluation.specs import APGDSpec, FGSMSpec, PGDSpec
from robust_mnv1.infra.device import resolve_device
from robust_mnv1.infra.envinfo import environment
from robust_mnv1.infra.errors import UserError
from robust_mnv1.infra.filelock import exclusive
from robust_mnv1.infra.malloc import keep_freed_memory
from robust_mnv1.infra.parent_watch import exit_with_parent
from robust_mnv1.infra.peak_memory import peaks_mib, reset_peaks
from robust_mnv1.infra.units import eps
from robust_mnv1.records.run_record import DataInfo, ModelInfo, RunRecord, SanityResult
from robust_mnv1.records.schema import config_hash, make_run_id
from robust_mnv1.records.store import parse_record, write_record
from robust_mnv1.report.board import generate
from robust_mnv1.training.checkpoint import load_checkpoint, state_digest, weights_digest
from robust_mnv1.training.fit import finished
from robust_mnv1.training.model_cache import (
    cache_root,
    finetuned_key,
    finetuned_model,
    model_dir,
    standard_key,
    standard_model,
)

# In the order a stage runs them: APGD attacks what FGSM and PGD left robust, so it comes after both.
ATTACKS = ("fgsm", "pgd", "apgd", "cw")
BUILDS_ON = {"apgd": ("fgsm", "pgd")}
log = logging.getLogger(__name__)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def record_config(cfg: DictConfig, regime: str, attack: str) -> dict[str, Any]:
    """Everything that determines one record's numbers, and nothing else (no paths, no device)."""
    full = OmegaConf.to_container(cfg, resolve=True)
    out = {k: full[k] for k in ("model", "data", "train", "eval", "seed")}
    out["attack"] = {attack: full["attack"][attack]}
    # A record built on others' results changes with their settings: theirs are in its config too.
    for base in BUILDS_ON.get(attack, ()):
        out["attack"][base] = full["attack"][base]
    if regime != "standard":
        out["finetune"] = full["finetune"]
    out["data"].pop("root", None)
    return out


@dataclass
class _Stage:
    """One regime's model of a unit, with what its records share: the standard model's training
    metadata, layer costs and latency, and the sanity report, made by the regime's first record."""

    regime: str
    model: torch.nn.Module
    meta: dict[str, Any]
    weights: str
    parent: str | None
    std_meta: dict[str, Any]
    costs: Any
    latency: float | None
    sanity: SanityResult | None = None
    sanity_s: float = 0.0


class Unit:
    """One model of the study and the records it owes."""

    def __init__(self, cfg: DictConfig, dataset: Dataset, device: torch.device, runs_dir: Path):
        self.cfg, self.dataset, self.device, self.runs_dir = cfg, dataset, device, runs_dir
        self.spec = model_spec(cfg, dataset)
        self.name = self.spec.name
        self.regimes = ("standard", cfg.finetune.regime)
        self.attacks = [a for a in ATTACKS if a in cfg.attack]

    def path(self, regime: str, attack: str) -> tuple[Path, str]:
        cfgd = record_config(self.cfg, regime, attack)
        run_id = make_run_id(self.name, regime, attack, slug(self.dataset.label), self.cfg.seed)
        return self.runs_dir / f"{run_id}.json", config_hash(cfgd)

    def record(self, regime: str, attack: str) -> RunRecord | None:
        """The stored record for (regime, attack) if it exists, is valid and was made with this config."""
        path, digest = self.path(regime, attack)
        try:
            record = RunRecord.from_dict(parse_record(path.read_text()))
        except (OSError, ValueError):  # RecordError is a ValueError: an invalid record is redone
            return None
        return record if record.config_hash == digest else None

    def done(self, regime: str, attack: str, weights: str | None = None, parent: str | None = None) -> bool:
        """Whether the record exists with this config and, when given, these weights and parent weights."""
        record = self.record(regime, attack)
        return (
            record is not None
            and (weights is None or record.model.weights == weights)
            and (parent is None or record.model.parent_weights == parent)
        )

    def agreed_weights(self, regime: str, parent: str | None = None) -> str | None:
        """The one weights digest of the regime's records when they all exist and share it (and, when
        ``parent`` is given, all name it as their parent); else None. Digest-less records agree on ""."""
        records = [self.record(regime, a) for a in self.attacks]
        if any(r is None for r in records):
            return None
        if parent is not None and any(r.model.parent_weights != parent for r in records):
            return None
        digests = {r.model.weights or "" for r in records}
        return digests.pop() if len(digests) == 1 else None

    def complete(self) -> bool:
        """Every record exists with this config, and they agree on the unit's weights: one digest per
        regime, the fine-tuned records naming the standard one as their parent. Decided from the
        records alone, so a finished unit is skipped without loading (or retraining) its models."""
        if not self.attacks:
            return True
        standard = self.agreed_weights("standard")
        if standard is None:
            return False
        return self.agreed_weights(self.regimes[1], parent=standard or None) is not None

    def stranded(self) -> list[str]:
        """The regimes with records whose model the cache cannot give back, so that running the unit
        trains it again and redoes those records (hours on a CPU). Empty for a complete unit, which is
        skipped without loading its models."""
        if self.complete():
            return []
        with_records = [r for r in self.regimes if any(self.record(r, a) for a in self.attacks)]
        key = standard_key(self.cfg)
        standard = model_dir(self.cfg, self.name, "standard", key)
        if not finished(standard):
            # A retrained standard model gives its fine-tune a new parent: every record is redone.
            return with_records
        tuned = self.regimes[1]
        if tuned not in with_records:
            return []
        parent = state_digest(load_checkpoint(standard / "final.safetensors")[0])
        tuned_dir = model_dir(self.cfg, self.name, tuned, finetuned_key(self.cfg, key, parent))
        return [] if finished(tuned_dir) else [tuned]

    def run(self, evaluate: bool = True) -> None:
        """Train (or fetch) the unit's models and, with ``evaluate``, write the records it owes."""
        if evaluate and self.complete():
            log.info("%s seed %d: every record is done, skipping", self.name, self.cfg.seed)
            return
        cfg, device = self.cfg, self.device
        reset_peaks(device)  # a worker runs units one after another: each record names its own unit's peak
        model, meta = standard_model(cfg, self.dataset, device)
        std_weights = weights_digest(model)
        stages = {"standard": (model, meta, std_weights)}
        tuned = self.regimes[1]
        # The fine-tuned model is loaded (or trained) unless its records already agree on one set of
        # weights fine-tuned from this standard model: records split between two fine-tunes are redone.
        if not evaluate:
            finetuned_model(cfg, self.dataset, device, model, meta)
            log.info("%s seed %d: trained and fine-tuned", self.name, cfg.seed)
            return
        if self.agreed_weights(tuned, parent=std_weights) is None:
            m, m_meta = finetuned_model(cfg, self.dataset, device, model, meta)
            stages[tuned] = (m, m_meta, weights_digest(m))
        costs = layer_costs(model)
        latency = (
            ev.cpu_latency_ms(model, self.dataset.image_size, cfg.eval.latency.reps)
            if cfg.eval.latency.enabled
            else None
        )
        for regime, (m, m_meta, weights) in stages.items():
            parent = None if regime == "standard" else std_weights
            self.evaluate(_Stage(regime, m, m_meta, weights, parent, meta, costs, latency))

    def evaluate(self, stage: _Stage) -> None:
        """Write every record the stage's model still owes."""
        stage.sanity, stage.sanity_s = self.written_sanity(stage)
        for attack in self.attacks:
            if self.done(stage.regime, attack, stage.weights, stage.parent):
                continue
            path, _ = self.path(stage.regime, attack)
            # Parallel runs of one experiment evaluate each record once: a run that waited for the
            # lock finds the record written by the one that held it.
            with exclusive(path.with_name(f".{path.name}.lock")):
                if not self.done(stage.regime, attack, stage.weights, stage.parent):
                    self._evaluate_one(stage, attack)

    def written_sanity(self, stage: _Stage) -> tuple[SanityResult | None, float]:
        """The sanity report and its seconds from a record the stage's model already has (APGD's aside:
        its report adds the record's own Square check), or (None, 0.0). The checks are seeded, so a
        resumed stage takes them from there instead of running them again (minutes for a large
        model), and all of a model's records name the one run's seconds."""
        for attack in (a for a in self.attacks if a != "apgd"):
            if self.done(stage.regime, attack, stage.weights, stage.parent):
                record = self.record(stage.regime, attack)
                return record.sanity, record.timing["sanity_s"]
        return None, 0.0

    def _evaluate_one(self, stage: _Stage, attack: str) -> None:
        """Attack the stage's model with one family and write the record."""
        cfg, ds, device = self.cfg, self.dataset, self.device
        regime, model, meta, std_meta = stage.regime, stage.model, stage.meta, stage.std_meta
        path, digest = self.path(regime, attack)
        # PGD and APGD keep their finished batches here, C&W its binary search: a stop costs at most
        # one batch, or one binary-search step.
        progress = AttackProgress(
            cache_root(cfg) / "attack-progress" / f"{path.stem}.json",
            {"record": path.stem, "config_hash": digest, "weights": stage.weights, "parent": stage.parent},
        )
        n = cfg.eval.n_cw if attack == "cw" else cfg.eval.n_examples
        x, y = ev.eval_subset(ds.test, n, device, cfg.eval.order)
        clean = ev.clean_accuracy(model, x, y)
        ev.check_clean(clean, meta["test_acc"], cfg.eval.max_clean_drop, f"{self.name} {regime}")
        spec = attack_spec(attack, cfg.attack[attack])
        eps_results, cw, square = [], None, None
        if isinstance(spec, FGSMSpec):
            eps_results = ev.run_fgsm(model, x, y, spec)
        elif isinstance(spec, PGDSpec):
            eps_results = ev.run_pgd(model, x, y, spec, cfg.seed, progress)
        elif isinstance(spec, APGDSpec):
            earlier = [e for base in BUILDS_ON[attack] for e in self.record(regime, base).eps_results]
            before = {e: ev.survivors(earlier, e, len(y)) for e in spec.eps_255}
            eps_results = ev.run_apgd(model, x, y, spec, cfg.seed, before, progress)
            headline = eps_results[-1]
            robust = torch.from_numpy(headline.mask())
            square = ev.square_check(model, x, y, robust, headline.eps_255, spec.square, cfg.seed)
        else:
            cw = ev.run_cw(model, x, y, spec, cfg.seed, progress)
        eval_s = progress.seconds()  # a resumed record adds the seconds of the runs it resumes
        if stage.sanity is None and cfg.eval.sanity.enabled:
            t1 = time.perf_counter()
            xs, ys = ev.eval_subset(ds.test, cfg.eval.sanity.n, device, cfg.eval.order)
            stage.sanity = ev.sanity(model, xs, ys, eps=eps(cfg.eval.sanity.eps_255), seed=cfg.seed)
            stage.sanity_s = time.perf_counter() - t1
        timing = {
            "train_s": std_meta["train_seconds"],
            "finetune_s": meta["train_seconds"] if regime != "standard" else 0.0,
            "eval_s": eval_s,
            "sanity_s": stage.sanity_s,
        }
        timing["total_s"] = sum(timing.values())
        record = RunRecord(
            run_id=path.stem,
            model=ModelInfo(
                name=self.name,
                alpha=float(self.spec.alpha),
                rho=float(self.spec.rho),
                profile=self.spec.profile,
                input_resolution=self.spec.resolution,
                params=int(stage.costs["params"].sum()),
                macs=int(stage.costs["macs"].sum()),
                weights=stage.weights,
                parent_weights=stage.parent,
                trained_on={"device": meta.get("device"), "precision": meta.get("precision")},
            ),
            regime=regime,
            attack=attack,
            data=DataInfo(ds.name, ds.label, slug(ds.label), len(ds.train.y), len(ds.test.y)),
            seed=int(cfg.seed),
            config=record_config(cfg, regime, attack),
            config_hash=digest,
            clean=clean,
            eps_results=tuple(eps_results),
            cw=cw,
            sanity=_with_report(stage.sanity, square),
            timing=timing,
            latency_ms_cpu_b1=stage.latency,
            env=environment(device),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            memory=peaks_mib(device),
        )
        write_record(record, self.runs_dir)
        progress.discard()
        log.info(
            "%s %s %s: clean %.3f, %.0f s -> %s",
            self.name,
            regime,
            attack,
            clean.accuracy,
            eval_s,
            path,
        )


def _with_report(sanity: SanityResult | None, report: dict[str, Any] | None) -> SanityResult:
    """The stage's sanity reports, plus one made by this record alone (APGD's Square check)."""
    reports = [*(sanity.reports if sanity else ()), *([report] if report else [])]
    return SanityResult.combined(reports)


def run_unit(cfg: DictConfig, device_name: str, threads: int | None) -> None:
    """Run one unit start to finish; the body of a worker process when units run in parallel."""
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    Unit(cfg, dataset, device, Path(cfg.results_dir) / "runs").run(evaluate=cfg.study.evaluate)


def _worker(container: dict, device_name: str, threads: int | None, study_pid: int) -> str:
    cfg = OmegaConf.create(container)
    exit_with_parent(study_pid)
    keep_freed_memory()  # a spawned worker is a fresh process: the CLI's allocator settings are not inherited
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    run_unit(cfg, device_name, threads)
    return unit_label(cfg)


def _run_units(
    cfg: DictConfig, units: list[DictConfig], jobs: int, dataset: Dataset, device: torch.device, results: Path
) -> None:
    """Run every unit, one after the other, or in ``jobs`` worker processes."""
    if jobs <= 1:
        for unit_cfg in tqdm(units, desc="study units", unit="model", leave=False):
            Unit(unit_cfg, dataset, device, results / "runs").run(evaluate=cfg.study.evaluate)
    else:
        # Units run in worker processes, handed out in order as workers free up (with study.order=grid,
        # put the costly models first so that the workers finish together). Each unit is a different
        # model, and the cache's per-model lock keeps two studies started side by side from training
        # one model twice.
        threads = max(1, torch.get_num_threads() // jobs) if device.type == "cpu" else None
        log.info("running %d units in %d worker processes (%s threads each)", len(units), jobs, threads)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [
                pool.submit(
                    _worker, OmegaConf.to_container(u, resolve=True), str(device), threads, os.getpid()
                )
                for u in units
            ]
            try:
                for future in tqdm(
                    as_completed(futures), total=len(futures), desc="study units", leave=False
                ):
                    log.info("unit %s finished", future.result())
            except BaseException:
                # A failed unit (or Ctrl-C) stops the study: units not yet started are dropped.
                pool.shutdown(wait=False, cancel_futures=True)
                raise


def refuse_retraining(units: list[Unit], cache: Path) -> None:
    """A one-line :class:`UserError` when any unit's records were made from models ``cache`` lacks.

    Such a unit would retrain its models and replace its records with those of the new weights: on a
    CPU, hours of work that a restored cache makes unnecessary, so it is done only when asked for.
    """
    stranded = [
        f"{u.name} seed {u.cfg.seed} ({', '.join(regimes)})" for u in units if (regimes := u.stranded())
    ]
    if stranded:
        raise UserError(
            f"{len(stranded)} unit(s) have records made from models that {cache / 'models'} does not hold: "
            f"{'; '.join(stranded)}; running them would retrain those models and redo their records. "
            "Restore the trained models (docs/offline-gpu.md, step 3), or set study.retrain=true"
        )


def study_task(cfg: DictConfig) -> float:
    device = resolve_device(cfg.device)
    # Decode the dataset once here, so that parallel workers only read the decoded cache.
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    results = Path(cfg.results_dir)
    units = unit_configs(cfg)
    if cfg.study.order == "cheapest":
        units = cheapest_first(units, dataset.num_classes)
        log.info("units, cheapest first: %s", ", ".join(map(unit_label, units)))
    if cfg.study.evaluate and not cfg.study.retrain:
        refuse_retraining([Unit(u, dataset, device, results / "runs") for u in units], cache_root(cfg))
    jobs = min(cfg.study.jobs, len(units))
    t0 = time.perf_counter()
    with logging_redirect_tqdm():  # log lines above the bars, not glued onto them
        _run_units(cfg, units, jobs, dataset, device, results)
    if cfg.study.evaluate:
        generate(results)
        log.info("leaderboard: %s", results / "leaderboard.md")
    elapsed = time.perf_counter() - t0
    log.info("study done in %.1f s", elapsed)
    return elapsed
