"""Deployed robustness: how the model an edge device runs, ONNX fp32 and int8, stands up to attack.

``python -m robust_mnv1.deployed`` selects a cached model as ``python -m robust_mnv1.export`` does
(``experiment=study model.alpha=0.25 seed=0 export.regime=pgd-at``; it never trains unless
``export.train_missing=true``), exports it with that command's settings and writes one record,
``<results_dir>/deployed/<run_id>.json`` (:mod:`robust_mnv1.edge.deployed_records`), holding:

* clean accuracy of PyTorch fp32, ONNX fp32 and ONNX int8 on the whole test set, with per-image masks,
  and int8's drop;
* transfer robustness: PGD with the protocol's settings (:func:`robust_mnv1.edge.crafting.craft_pgd`)
  crafted white-box on the PyTorch fp32 model on the first ``deployed.n`` test images of the evaluation
  order, and those examples run through both ONNX files; at each eps, int8 against fp32 image by image
  (McNemar's exact test) and a one-line verdict (:func:`robust_mnv1.edge.deployed_records.paired_comparison`);
* batch-1, one-thread latency of eager PyTorch and both ONNX files
  (:func:`robust_mnv1.edge.latency.edge_latency`).

The examples are crafted on fp32 and carried over because that is the attack a shipped int8 binary
meets: its attacker has the float model (or one like it), not gradients of the quantized graph.
:mod:`robust_mnv1.edge.transfer` shares the crafting (:mod:`robust_mnv1.edge.crafting`) and the record
fields and checks (:mod:`robust_mnv1.edge.record_fields`); docs/edge.md explains the numbers.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from robust_mnv1.config.check import BOOL, COUNT, integer, number, optional
from robust_mnv1.config.compose import preflight, register_experiments, register_resolvers, user_errors_exit
from robust_mnv1.config.spec import attack_spec
from robust_mnv1.data import load_dataset
from robust_mnv1.edge import export as ex
from robust_mnv1.edge import latency as lat
from robust_mnv1.edge import onnx_export as ox
from robust_mnv1.edge.crafting import craft_pgd
from robust_mnv1.edge.deployed_records import (
    DEPLOYED,
    ENGINES,
    SCHEMA_VERSION,
    count_entry,
    paired_comparison,
    validate_deployed_record,
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
    run_environment,
)
from robust_mnv1.evaluation.protocol import eval_subset
from robust_mnv1.infra.device import resolve_device
from robust_mnv1.infra.envinfo import cpu_name
from robust_mnv1.infra.errors import UserError
from robust_mnv1.infra.malloc import keep_freed_memory
from robust_mnv1.infra.threads import choose_threads
from robust_mnv1.infra.units import eps
from robust_mnv1.records.schema import config_hash, make_run_id
from robust_mnv1.training.model_cache import cache_root

__all__ = ["check_config", "run_deployed"]

_RULES = {
    "n": optional(COUNT),
    "early_exit": BOOL,
    "equivalence_pp": number(0, 100, open_lo=True),
    "latency.reps": COUNT,
    "latency.warmup": integer(0),
    "latency.blocks": COUNT,
}
# What the export's logits are called in its report, by the engine names of the records.
_EXPORT_KEYS = dict(zip(ENGINES, ("pytorch", "onnx fp32", "onnx int8"), strict=True))


def _file_fields(path: Path) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}


def check_config(cfg: DictConfig) -> None:
    """The export's checks (:func:`robust_mnv1.edge.export.check_config`) and the ``deployed`` group's."""
    run = cfg.copy()
    with open_dict(run):
        dcfg = run.pop("deployed")
    ex.check_config(run)
    ex.check_group("deployed", dcfg, _RULES)
    if dcfg.latency.reps < dcfg.latency.blocks:
        raise UserError(
            f"deployed.latency.reps={dcfg.latency.reps} must be at least "
            f"deployed.latency.blocks={dcfg.latency.blocks}"
        )
    if not cfg.export.int8.enabled:
        raise UserError(
            "export.int8.enabled=false leaves no int8 model; deployed robustness compares int8 with fp32"
        )
    if cfg.export.eval_images is not None:
        raise UserError(
            f"export.eval_images={cfg.export.eval_images}: deployed robustness takes clean accuracy on "
            "the whole test set; leave it null"
        )
    check_attack(cfg, "deployed")
    check_paths(cfg, "deployed.n", dcfg.n)


def run_deployed(cfg: DictConfig) -> tuple[Path, dict[str, Any]]:
    """Export the model ``cfg`` selects, measure it, and write its deployed-robustness record."""
    ecfg, dcfg, pgd = cfg.export, cfg.deployed, attack_spec("pgd", cfg.attack.pgd)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    model, meta, entry = ex.cached_model(
        cfg, dataset, device, regime=ecfg.regime, train_missing=ecfg.train_missing
    )
    check_images("deployed.n", dcfg.n, len(dataset.test.y), dataset.label)
    margin = dcfg.equivalence_pp / 100

    logits: dict[str, np.ndarray] = {}
    report, out_dir = ex.export_cached(cfg, dataset, model, meta, entry, keep_logits=logits)
    files = {"onnx fp32": out_dir / report["fp32"]["file"], "onnx int8": out_dir / report["int8"]["file"]}
    _, labels = ex.stratified_images(dataset.test, None)
    correct = {e: logits[_EXPORT_KEYS[e]].argmax(1) == labels.numpy() for e in ENGINES}
    clean: dict[str, Any] = {
        "order": "stratified",
        **{e: count_entry(correct[e], "correct") for e in ENGINES},
    }
    clean["int8_drop"] = float(correct["onnx int8"].mean() - correct["onnx fp32"].mean())
    clean["int8_vs_fp32"] = paired_comparison(
        correct["onnx fp32"], correct["onnx int8"], margin=margin, what="clean accuracy"
    )
    timing["export_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    x, y = eval_subset(dataset.test, dcfg.n, device, "stratified")
    adv = craft_pgd(model.to(device), x, y, pgd, pgd.eps_255, cfg.seed, early_exit=dcfg.early_exit)
    timing["craft_s"] = time.perf_counter() - t1
    sessions = {k: ox.onnx_session(p, torch.get_num_threads()) for k, p in files.items()}
    labels_n = y.cpu().numpy()
    eps_entries = []
    for e, (xa, robust_pt) in sorted(adv.items()):
        robust = {"pytorch fp32": robust_pt}
        robust.update({k: ox.onnx_logits(s, xa).argmax(1) == labels_n for k, s in sessions.items()})
        eps_entries.append(
            {
                "eps": eps(e),
                "eps_255": e,
                **{k: count_entry(v, "robust") for k, v in robust.items()},
                "int8_vs_fp32": paired_comparison(
                    robust["onnx fp32"],
                    robust["onnx int8"],
                    margin=margin,
                    what=f"robustness at {e:g}/255 against examples crafted on fp32",
                ),
            }
        )

    t2 = time.perf_counter()
    lcfg = dcfg.latency
    latency = lat.edge_latency(
        model,
        dataset.image_size,
        files,
        reps=lcfg.reps,
        warmup=lcfg.warmup,
        blocks=lcfg.blocks,
        seed=cfg.seed,
    )
    timing["latency_s"] = time.perf_counter() - t2
    timing["total_s"] = time.perf_counter() - t0

    fields = {**model_fields(model, cfg, ecfg.regime), "cache_entry": entry.name}
    fields["trained_test_accuracy"] = meta["test_acc"]
    data = data_fields(dataset)
    config = record_config(cfg, ("export", "deployed"), finetune=ecfg.regime != "standard")
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": DEPLOYED,
        "run_id": make_run_id(model.name, ecfg.regime, "deployed", data["key"], int(cfg.seed)),
        "model": fields,
        "data": data,
        "config": config,
        "config_hash": config_hash(config),
        "onnx": {
            "fp32": {**report["fp32"], **_file_fields(files["onnx fp32"])},
            "int8": {**report["int8"], **_file_fields(files["onnx int8"])},
        },
        "clean": clean,
        "transfer": {
            "n": len(y),
            "order": "stratified",
            "attack": attack_fields(pgd, int(cfg.seed), device, early_exit=dcfg.early_exit),
            "eps": eps_entries,
        },
        "latency": {
            "cpu": cpu_name(),
            "batch": 1,
            "threads": 1,
            "reps": lcfg.reps,
            "warmup": lcfg.warmup,
            "blocks": lcfg.blocks,
            "engines": {k: v.summary() for k, v in latency.items()},
        },
        "timing": timing,
        "env": run_environment(device),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = write_record(
        record, Path(os.path.expanduser(str(cfg.results_dir))) / "deployed", validate_deployed_record
    )
    return path, record


def summary(record: Mapping[str, Any]) -> list[str]:
    """What a run prints: the record's headline numbers, one line each."""
    m, clean = record["model"], record["clean"]
    lines = [f"{m['name']} {m['regime']} seed {m['seed']} on {record['data']['label']}"]
    acc = ", ".join(f"{e} {clean[e]['accuracy']:.4f}" for e in ENGINES)
    lines.append(f"  clean accuracy on {clean['onnx fp32']['n']} test images: {acc}")
    lines.append(f"  {clean['int8_vs_fp32']['statement']}")
    t = record["transfer"]
    lines.append(
        f"  PGD crafted on PyTorch fp32, first {t['n']} test images, run through ONNX fp32 and int8:"
    )
    lines += [f"    {e['eps_255']:g}/255: {e['int8_vs_fp32']['statement']}" for e in t["eps"]]
    lat = record["latency"]
    shown = ", ".join(f"{k} {v['median_ms']:.3f} ms" for k, v in lat["engines"].items())
    lines.append(f"  median latency, batch 1, one thread, {lat['cpu']}: {shown}")
    return lines


@hydra.main(version_base="1.3", config_path="../conf", config_name="deployed")
@user_errors_exit
def _main(cfg: DictConfig) -> None:
    """Write the deployed-robustness record of the configured model and regenerate the tables."""
    torch.set_num_threads(choose_threads(cfg.threads))
    path, record = run_deployed(cfg)
    for line in summary(record):
        print(line)
    print(f"  record: {path}")
    regenerate(Path(os.path.expanduser(str(cfg.results_dir))))


def main() -> None:
    keep_freed_memory()
    register_experiments()
    register_resolvers()
    preflight(sys.argv[1:], "deployed", check_config)
    _main()
