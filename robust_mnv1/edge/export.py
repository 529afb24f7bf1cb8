"""The deployed model: MobileNet V1 as ONNX files (fp32 and int8) and its latency in onnxruntime.

Edge devices run MobileNet V1 exported, usually int8-quantized, in a runtime such as onnxruntime, not
in eager PyTorch. ``python -m robust_mnv1.export`` takes a trained model from the model cache,
selected as the study selects it (``experiment=study model.alpha=0.25 seed=0``, ``export.regime``),
and writes three files named after the model's cache entry (``<entry>``, e.g.
``MobileNetV1-0.25-32px-standard-30832c60fa7631ff``), next to its checkpoint or into ``export.out_dir``:

* ``<entry>.onnx``: fp32, with the model's resize and normalisation inside, so it takes float32 NCHW
  RGB images in [0, 1] at the dataset's native size (the batch axis is free) and returns logits;
* ``<entry>.int8.onnx``: the same statically quantized by onnxruntime, calibrated on training images;
* ``<entry>.export.json``: what was checked, namely the largest fp32 logit difference from PyTorch,
  and the test accuracy of PyTorch, fp32 and int8 with int8's top-1 agreement with fp32.

The files are made by :mod:`robust_mnv1.edge.onnx_export`; :func:`robust_mnv1.edge.latency.edge_latency`
times PyTorch and the ONNX files as an edge engineer would (batch 1, one thread, after a warm-up, the
spread of many calls); ``bench/edge_bench.py`` prints it. docs/edge.md explains
the choices and holds measured numbers. Needs the ``edge`` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from robust_mnv1.config.check import BOOL, COUNT, Rule, choice, integer, number, optional, pattern, validate
from robust_mnv1.config.compose import preflight, register_experiments, register_resolvers, user_errors_exit
from robust_mnv1.config.spec import model_spec
from robust_mnv1.data import Dataset, Split, load_dataset
from robust_mnv1.edge.onnx_export import (
    FORMATS,
    INPUT_NAME,
    METHODS,
    OUTPUT_NAME,
    export_onnx,
    onnx_logits,
    onnx_session,
    quantize_int8,
    torch_logits,
)
from robust_mnv1.evaluation.protocol import eval_order
from robust_mnv1.infra.atomic import atomic_write_json
from robust_mnv1.infra.device import resolve_device
from robust_mnv1.infra.envinfo import git_commit
from robust_mnv1.infra.errors import UserError
from robust_mnv1.infra.filelock import exclusive
from robust_mnv1.infra.malloc import keep_freed_memory
from robust_mnv1.models import MobileNetV1
from robust_mnv1.training.checkpoint import weights_digest
from robust_mnv1.training.fit import finished
from robust_mnv1.training.model_cache import (
    cache_root,
    finetuned_key,
    finetuned_model,
    model_dir,
    standard_key,
    standard_model,
)

__all__ = [
    "cached_model",
    "check_group",
    "export_cached",
    "export_files",
    "model_source",
    "stratified_images",
]


_EXPORT_RULES = {
    "regime": pattern(r"[A-Za-z0-9_-]+", "standard or the finetune group's regime"),
    "out_dir": optional(pattern(r".*\S.*", "a non-empty path")),
    "train_missing": BOOL,
    "opset": integer(13, 21),
    "tolerance": number(0, open_lo=True),
    "check_images": COUNT,
    "eval_images": optional(COUNT),
    "int8.enabled": BOOL,
    "int8.calibration_images": COUNT,
    "int8.format": choice(*FORMATS),
    "int8.per_channel": BOOL,
    "int8.method": choice(*METHODS),
}


def stratified_images(split: Split, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of ``split`` in the class-stratified evaluation order, as floats in [0, 1].

    Every prefix of that order holds each class in its share of the split: a calibration set drawn
    this way sees every class, and the test images are the ones the study evaluates first.
    """
    idx = eval_order(split.y, "stratified")[:n]
    return split.x[idx].float().div_(255), split.y[idx]


def _accuracy(logits: np.ndarray, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels.numpy()).mean())


def export_files(
    model: MobileNetV1,
    dataset: Dataset,
    out_dir: str | Path,
    stem: str,
    ecfg: DictConfig,
    source: Mapping[str, Any],
    *,
    keep_logits: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write ``stem.onnx``, ``stem.int8.onnx`` (unless ``ecfg.int8.enabled`` is false) and
    ``stem.export.json`` for ``model`` into ``out_dir``; return the report the JSON holds.

    ``ecfg`` is the ``export`` config group; ``source`` names the model (cache entry, regime, weights)
    in the report and in the ONNX files' metadata. ``keep_logits``, when given, receives the logits
    the accuracies come from (keys ``pytorch``, ``onnx fp32``, ``onnx int8``), one row per image of
    ``stratified_images(dataset.test, ecfg.eval_images)``, for callers that need more than accuracy.
    """
    import onnx
    import onnxruntime as ort

    out_dir = Path(out_dir)
    model = model.cpu().eval()
    if ecfg.int8.enabled and ecfg.int8.calibration_images > len(dataset.train):
        raise UserError(
            f"export.int8.calibration_images={ecfg.int8.calibration_images} is more than the "
            f"{len(dataset.train)} training images of {dataset.label}"
        )
    for key, n in (("check_images", ecfg.check_images), ("eval_images", ecfg.eval_images)):
        if n is not None and n > len(dataset.test):
            raise UserError(
                f"export.{key}={n} is more than the {len(dataset.test)} test images of {dataset.label}"
            )
    metadata = {
        **{k: str(v) for k, v in source.items()},
        "data": dataset.label,
        "classes": ",".join(dataset.classes),
        INPUT_NAME: f"float32 [N, 3, {dataset.image_size}, {dataset.image_size}] RGB in [0, 1]",
        OUTPUT_NAME: f"float32 [N, {model.num_classes}], class order as in 'classes'",
    }
    check_x, _ = stratified_images(dataset.test, ecfg.check_images)
    fp32 = out_dir / f"{stem}.onnx"
    diff = export_onnx(
        model,
        dataset.image_size,
        fp32,
        check_x,
        tolerance=ecfg.tolerance,
        opset=ecfg.opset,
        metadata=metadata,
    )
    x, y = stratified_images(dataset.test, ecfg.eval_images)
    threads = torch.get_num_threads()
    logits = {"pytorch": torch_logits(model, x), "onnx fp32": onnx_logits(onnx_session(fp32, threads), x)}
    report: dict[str, Any] = {
        "source": dict(source),
        "data": dataset.label,
        "input": metadata[INPUT_NAME],
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "git_commit": git_commit(),
        "fp32": {
            "file": fp32.name,
            "opset": ecfg.opset,
            "max_abs_logit_diff_vs_pytorch": diff,
            "diff_images": len(check_x),
        },
    }
    if ecfg.int8.enabled:
        q = ecfg.int8
        calibration, _ = stratified_images(dataset.train, q.calibration_images)
        int8 = quantize_int8(
            fp32,
            out_dir / f"{stem}.int8.onnx",
            calibration,
            quant_format=q.format,
            per_channel=q.per_channel,
            method=q.method,
        )
        logits["onnx int8"] = onnx_logits(onnx_session(int8, threads), x)
        report["int8"] = {
            "file": int8.name,
            "format": q.format,
            "per_channel": q.per_channel,
            "activations": "int8" if q.format == "qdq" else "uint8",
            "weights": "int8",
            "calibration": {
                "method": q.method,
                "images": len(calibration),
                "split": "train, class-stratified",
            },
            "top1_agreement_with_fp32": float(
                (logits["onnx int8"].argmax(1) == logits["onnx fp32"].argmax(1)).mean()
            ),
        }
    report["test_accuracy"] = {"images": len(y), **{k: _accuracy(v, y) for k, v in logits.items()}}
    atomic_write_json(out_dir / f"{stem}.export.json", report)
    if keep_logits is not None:
        keep_logits.update(logits)
    return report


def export_cached(
    cfg: DictConfig,
    dataset: Dataset,
    model: MobileNetV1,
    meta: dict,
    entry: Path,
    *,
    keep_logits: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Export :func:`cached_model`'s answer for ``cfg`` as ``python -m robust_mnv1.export`` does: into
    ``export.out_dir``, or next to its checkpoint in the cache entry. Returns the report and the
    directory that holds the files; ``keep_logits`` as for :func:`export_files`."""
    ecfg = cfg.export
    out_dir = Path(os.path.expanduser(ecfg.out_dir)) if ecfg.out_dir else entry
    source = model_source(model, meta, ecfg.regime, entry)
    # Whoever writes into a cache entry holds its lock: a run loading the same model meanwhile clears
    # the entry's temp files (robust_mnv1.training.fit), which would include the export's half-written ones.
    with exclusive(entry / ".lock") if out_dir.resolve() == entry.resolve() else contextlib.nullcontext():
        report = export_files(model, dataset, out_dir, entry.name, ecfg, source, keep_logits=keep_logits)
    return report, out_dir


def cached_model(
    cfg: DictConfig,
    dataset: Dataset,
    device: torch.device,
    *,
    regime: str,
    train_missing: bool,
    train_key: str = "export.train_missing",
) -> tuple[MobileNetV1, dict, Path]:
    """The trained model ``cfg`` and ``regime`` name, its checkpoint's metadata and its cache entry.

    Found by the keys :mod:`robust_mnv1.training.model_cache` files models
    under, so a model the study trained is
    loaded, never retrained. A model the cache lacks is a :class:`UserError` unless
    ``train_missing``: then the model cache trains (and caches) it as the study would. The error names
    ``train_key``, the setting that allows that.
    """
    name = model_spec(cfg, dataset).name
    standard = model_dir(cfg, name, "standard", standard_key(cfg))
    _require_trained(standard, "standard", train_missing, train_key)
    model, meta = standard_model(cfg, dataset, device)
    if regime == "standard":
        return model, meta, standard
    tuned_entry = model_dir(cfg, name, regime, finetuned_key(cfg, meta["key"], weights_digest(model)))
    _require_trained(tuned_entry, regime, train_missing, train_key)
    tuned, tuned_meta = finetuned_model(cfg, dataset, device, model, meta)
    return tuned, tuned_meta, tuned_entry


def model_source(model: MobileNetV1, meta: dict, regime: str, entry: Path) -> dict[str, Any]:
    """What names an exported model in its files and report: :func:`cached_model`'s answer, summarised."""
    return {
        "model": model.name,
        "regime": regime,
        "cache_entry": entry.name,
        "weights": weights_digest(model),
        "trained_test_accuracy": meta["test_acc"],
    }


def _require_trained(entry: Path, regime: str, train_missing: bool, train_key: str) -> None:
    if not train_missing and not finished(entry):
        raise UserError(
            f"no trained {regime} model in the cache at {entry}; pick a cached one (experiment, "
            "model.alpha, model.rho, data, seed, cache_dir as it was trained) or set "
            f"{train_key}=true to train it"
        )


def check_group(name: str, group: DictConfig, rules: Mapping[str, Rule]) -> None:
    """One-line :class:`UserError` for the first key of config group ``name`` that ``rules`` (keyed
    ``key`` or ``sub.key``) does not know, refuses, or lacks."""
    values = OmegaConf.to_container(group, resolve=True)
    flat = {f"{k}.{kk}": vv for k, v in values.items() if isinstance(v, dict) for kk, vv in v.items()}
    flat.update({k: v for k, v in values.items() if not isinstance(v, dict)})
    for key, value in flat.items():
        if key not in rules:
            raise UserError(f"unknown key {name}.{key}; valid keys under {name}: {', '.join(rules)}")
        if not rules[key].ok(value):
            raise UserError(f"{name}.{key} must be {rules[key].text}, got {value!r}")
    missing = [key for key in rules if key not in flat]
    if missing:
        raise UserError(f"{name}.{missing[0]} is missing; it must be {rules[missing[0]].text}")


def check_config(cfg: DictConfig) -> None:
    """The run's checks (:func:`robust_mnv1.config.check.validate`) and the ``export`` group's keys."""
    for module in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            raise UserError(f"{module} is not installed; pip install -e '.[edge]'")
    run = cfg.copy()
    with open_dict(run):
        ecfg = run.pop("export")
    validate(run)
    check_group("export", ecfg, _EXPORT_RULES)
    regimes = ("standard", cfg.finetune.regime)
    if ecfg.regime not in regimes:
        raise UserError(
            f"export.regime={ecfg.regime!r} is not a regime of this config; valid choices: "
            f"{', '.join(regimes)} (another finetune group names another)"
        )


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@user_errors_exit
def _main(cfg: DictConfig) -> None:
    """Export the configured model from the cache to ONNX (fp32 and int8) and report the checks."""
    ecfg = cfg.export
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    model, meta, entry = cached_model(
        cfg, dataset, resolve_device(cfg.device), regime=ecfg.regime, train_missing=ecfg.train_missing
    )
    report, out_dir = export_cached(cfg, dataset, model, meta, entry)
    acc = report["test_accuracy"]
    how = "trained now" if meta["trained"] else "from the cache"
    print(f"{model.name} {ecfg.regime} on {dataset.label} ({how})")
    fp32 = report["fp32"]
    print(
        f"  {out_dir / fp32['file']}: max abs logit difference from PyTorch "
        f"{fp32['max_abs_logit_diff_vs_pytorch']:.2e} on {fp32['diff_images']} test images"
    )
    if "int8" in report:
        q = report["int8"]
        print(
            f"  {out_dir / q['file']}: {q['format']}, {'per-channel' if q['per_channel'] else 'per-tensor'} "
            f"weights, {q['calibration']['method']} calibration on {q['calibration']['images']} training "
            f"images; top-1 agreement with fp32 {q['top1_agreement_with_fp32']:.4f}"
        )
    shown = ", ".join(f"{k} {v:.4f}" for k, v in acc.items() if k != "images")
    print(f"  test accuracy on {acc['images']} images: {shown}")
    print(f"  report: {out_dir / (entry.name + '.export.json')}")


def main() -> None:
    keep_freed_memory()
    register_experiments()
    register_resolvers()
    preflight(sys.argv[1:], "export", check_config)
    _main()
