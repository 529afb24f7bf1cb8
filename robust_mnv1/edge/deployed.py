"""Deployed robustness: how the model an edge device runs, ONNX fp32 and int8, stands up to attack.

``python -m robust_mnv1.deployed`` selects a cached model as ``python -m robust_mnv1.export`` does
(``experiment=study model.alpha=0.25 seed=0 export.regime=pgd-at``; it never trains unless
``export.train_missing=true``), exports it with that command's settings and writes one record,
``<results_dir>/deployed/<run_id>.json`` (:mod:`robust_mnv1.edge.deployed_records`), holding:

* clean accuracy of PyTorch fp32, ONNX fp32 and ONNX int8 on the whole test set, with per-image masks,
  and int8's drop;
* transfer robustness: PGD with the protocol's settings (:func:`craft_pgd`) crafted white-box on the
  PyTorch fp32 model on the first ``deployed.n`` test images of the evaluation order, and those
  examples run through both ONNX files; at each eps, int8 against fp32 image by image (McNemar's
  exact test) and a one-line verdict (:func:`robust_mnv1.edge.deployed_records.paired_comparison`);
* batch-1, one-thread latency of eager PyTorch and both ONNX files
  (:func:`robust_mnv1.edge.export.edge_latency`).

The examples are crafted on fp32 and carried over because that is the attack a shipped int8 binary
meets: its attacker has the float model (or one like it), not gradients of the quantized graph.
:mod:`robust_mnv1.edge.transfer` shares :func:`craft_pgd` and the checks here; docs/edge.md explains the
numbers.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from attacks import PGD
from attacks.base import model_hygiene, predict_logits
from attacks.losses import LOSSES, value_and_grad
from attacks.projection import ascent_step, project_to_box, random_in_ball
from robust_mnv1.config.check import BOOL, COUNT, KNOWN_DATA, integer, number, optional
from robust_mnv1.config.compose import preflight, register_experiments, register_resolvers, user_errors_exit
from robust_mnv1.data import Dataset, load_dataset
from robust_mnv1.edge import export as ex
from robust_mnv1.edge.deployed_records import (
    DEPLOYED,
    ENGINES,
    SCHEMA_VERSION,
    count_entry,
    paired_comparison,
    validate_deployed_record,
    write_record,
)
from robust_mnv1.evaluation.protocol import eval_subset, pgd_arguments
from robust_mnv1.evaluation.study import slug
from robust_mnv1.infra.device import resolve_device
from robust_mnv1.infra.envinfo import cpu_name, environment
from robust_mnv1.infra.errors import UserError
from robust_mnv1.infra.malloc import keep_freed_memory
from robust_mnv1.infra.threads import choose_threads
from robust_mnv1.records.schema import config_hash, make_run_id
from robust_mnv1.training.checkpoint import weights_digest
from robust_mnv1.training.model_cache import cache_root

__all__ = [
    "check_config",
    "craft_pgd",
    "run_deployed",
    "validate_deployed_record",
]

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


# -- shared with robust_mnv1.edge.transfer --------------------------------------------------------------


def craft_pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    acfg: DictConfig,
    eps_255: Iterable[float],
    seed: int,
    *,
    early_exit: bool,
) -> dict[float, tuple[torch.Tensor, np.ndarray]]:
    """PGD examples on ``model`` at each eps of ``eps_255``: ``{eps: (x_adv, robust)}``, where
    ``robust`` marks the images ``model`` still classifies correctly on their example (white-box).

    ``acfg`` is ``attack.pgd``: its loss, steps, step size (2.5·eps/steps), random start, restarts and
    ``seed`` make the examples. The margin-loss stage the protocol adds at some eps is left out, so
    that every example comes from one loss.

    With ``early_exit`` the examples are the protocol's own (:func:`robust_mnv1.evaluation.protocol.run_pgd`):
    each image's first adversarial iterate, the eps grid walked upwards (up to the largest eps asked
    for), each eps attacking only the images the previous one left robust; an image broken at a
    smaller eps keeps the example that broke it, which lies inside every larger ball, and images
    ``model`` misclassifies come back unchanged. Without it (:func:`pgd_last_iterate`) every image
    gets every step at each eps and keeps the last iterate: an example pushed past the boundary
    rather than just across it, as an attacker who cannot query the target would make it.
    """
    wanted = set(eps_255)
    if not early_exit:
        out = {}
        for e in sorted(wanted):
            x_adv = pgd_last_iterate(model, x, y, acfg, e, seed)
            out[e] = (x_adv, correct_on(model, x_adv, y, acfg.batch_size))
        return out
    x_adv, out = x.clone(), {}
    alive = torch.ones(len(y), dtype=torch.bool, device=y.device)
    for e in sorted(acfg.eps_255):
        if e > max(wanted):
            break
        robust = torch.zeros_like(alive)
        idx = alive.nonzero().squeeze(1)
        if idx.numel():
            res = PGD(**pgd_arguments(acfg, e, seed), loss=acfg.loss)(model, x[idx], y[idx])
            x_adv = x_adv.clone()  # the smaller eps's examples, already handed out, stay as they are
            x_adv[idx] = res.x_adv
            robust[idx] = res.clean_correct & ~res.success
        if e in wanted:
            out[e] = (x_adv, robust.cpu().numpy())
        alive = robust
    return out


def pgd_last_iterate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, acfg: DictConfig, eps_255: float, seed: int
) -> torch.Tensor:
    """PGD with ``attack.pgd``'s settings run for all its steps on every image, returning the last
    iterate (of the restart whose last iterate has the highest loss).

    The attack library's PGD stops an image at its first adversarial iterate, the weakest example
    that fools ``model``; rounding in another model (int8, or another network) undoes many of those.
    Its random starts come from one generator seeded with ``seed``, batch after batch.
    """
    eps, loss_fn = eps_255 / 255, LOSSES[acfg.loss]
    step = 2.5 * eps / acfg.steps
    generator = torch.Generator(device=x.device).manual_seed(seed)
    chunks = []
    with model_hygiene(model):
        for xb, yb in zip(x.split(acfg.batch_size), y.split(acfg.batch_size), strict=True):
            best, best_loss = xb.clone(), torch.full((len(yb),), -torch.inf, device=xb.device)
            for _ in range(acfg.restarts):
                xa = xb.clone()
                if acfg.random_start:
                    noise = random_in_ball(
                        xb.shape, eps, "linf", generator=generator, dtype=xb.dtype, device=xb.device
                    )
                    xa = (xb + noise).clamp(0.0, 1.0)
                for _ in range(acfg.steps):
                    _, _, grad = value_and_grad(model, xa, yb, loss_fn)
                    xa = project_to_box(xb, xa + step * ascent_step(grad, "linf"), eps, "linf")
                with torch.no_grad():
                    loss = loss_fn(model(xa), yb)
                better = loss > best_loss
                best[better], best_loss[better] = xa[better], loss[better]
            chunks.append(best)
    return torch.cat(chunks)


def correct_on(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> np.ndarray:
    """Which of ``x`` (on the model's device) ``model``, in eval mode, assigns its label in ``y``."""
    model.eval()
    return (predict_logits(model, x, batch_size).argmax(1) == y).cpu().numpy()


def attack_fields(acfg: DictConfig, seed: int, device: torch.device, *, early_exit: bool) -> dict[str, Any]:
    """How the examples of a record were made, in the record."""
    return {
        "name": "pgd",
        "norm": "linf",
        "loss": acfg.loss,
        "steps": acfg.steps,
        "step_size": "2.5 * eps / steps",
        "restarts": acfg.restarts,
        "random_start": acfg.random_start,
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


# -- the deployed-robustness record ---------------------------------------------------------------


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
    ecfg, dcfg, acfg = cfg.export, cfg.deployed, cfg.attack.pgd
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
    adv = craft_pgd(model.to(device), x, y, acfg, acfg.eps_255, cfg.seed, early_exit=dcfg.early_exit)
    timing["craft_s"] = time.perf_counter() - t1
    sessions = {k: ex.onnx_session(p, torch.get_num_threads()) for k, p in files.items()}
    labels_n = y.cpu().numpy()
    eps_entries = []
    for e, (xa, robust_pt) in sorted(adv.items()):
        robust = {"pytorch fp32": robust_pt}
        robust.update({k: ex.onnx_logits(s, xa).argmax(1) == labels_n for k, s in sessions.items()})
        eps_entries.append(
            {
                "eps": e / 255,
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
    latency = ex.edge_latency(
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
            "attack": attack_fields(acfg, int(cfg.seed), device, early_exit=dcfg.early_exit),
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
