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

:func:`edge_latency` times PyTorch and the ONNX files as an edge engineer would (batch 1, one thread,
after a warm-up, the spread of many calls); ``bench/edge_bench.py`` prints it. docs/edge.md explains
the choices and holds measured numbers. Needs the ``edge`` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import inspect
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from robust_mnv1.config.check import BOOL, COUNT, Rule, choice, integer, number, optional, pattern, validate
from robust_mnv1.config.compose import preflight, register_experiments, register_resolvers, user_errors_exit
from robust_mnv1.data import Dataset, Split, load_dataset
from robust_mnv1.evaluation.protocol import eval_order
from robust_mnv1.infra.atomic import atomic_write, atomic_write_json
from robust_mnv1.infra.device import resolve_device
from robust_mnv1.infra.envinfo import git_commit
from robust_mnv1.infra.errors import UserError
from robust_mnv1.infra.filelock import exclusive
from robust_mnv1.infra.malloc import keep_freed_memory
from robust_mnv1.models import MobileNetV1
from robust_mnv1.training.checkpoint import cache_key, sidecar, weights_digest
from robust_mnv1.training.model_cache import (
    cache_root,
    finetuned_model,
    make_model,
    standard_key,
    standard_model,
)

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "DeployedMobileNetV1",
    "Latency",
    "SeparableResize",
    "cached_model",
    "check_group",
    "compare_latency",
    "edge_latency",
    "export_cached",
    "export_files",
    "export_onnx",
    "model_source",
    "onnx_logits",
    "onnx_session",
    "quantize_int8",
    "stratified_images",
]

INPUT_NAME, OUTPUT_NAME = "images", "logits"
FORMATS = ("qdq", "qoperator")
# onnxruntime's entropy calibration is left out: quantize_static cannot set its bin count, and with its
# defaults (128 bins into 128 quantized bins) the search has one candidate, the full range, so its files
# came out byte-identical to minmax's.
METHODS = ("minmax", "percentile")
# Images per onnxruntime call when computing accuracies and calibration statistics.
BATCH = 250

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


class SeparableResize(nn.Module):
    """The model's resize of ``in_size`` images to ``out_size``, as a matrix product per axis.

    ``MobileNetV1.preprocess`` resizes bilinearly, antialiased when shrinking. The TorchScript ONNX
    exporter has no symbolic for the antialiased kernel (``aten::_upsample_bilinear2d_aa``); ONNX's
    ``Resize`` gained ``antialias`` only at opset 18 and many edge runtimes and converters lack it.
    From a fixed input size that resize is linear and separable, so each axis is an ``(out, in)``
    matrix, read off here by resizing an identity with the very call the model makes; two
    ``MatMul`` nodes then reproduce it on any runtime, to float rounding.
    """

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
        super().__init__()
        # Decided as MobileNetV1.preprocess decides it: over the whole image, not per axis.
        antialias = in_size[0] > out_size[0] or in_size[1] > out_size[1]

        def resize(eye: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            out = F.interpolate(
                eye[None, None], size=size, mode="bilinear", align_corners=False, antialias=antialias
            )
            return out[0, 0]

        # rows: out_h x in_h (applied on the left); cols: in_w x out_w (on the right).
        self.register_buffer("rows", resize(torch.eye(in_size[0]), (out_size[0], in_size[0])))
        self.register_buffer("cols", resize(torch.eye(in_size[1]), (in_size[1], out_size[1])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows @ x @ self.cols


class DeployedMobileNetV1(nn.Module):
    """``model`` for images of a fixed ``image_size``, in a form every ONNX exporter and runtime takes.

    The resize becomes a :class:`SeparableResize`; the model's own forward then sees images at its
    input resolution, so it only normalises them and runs the network, unchanged.
    """

    def __init__(self, model: MobileNetV1, image_size: int) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).cpu().eval()
        size, target = (image_size, image_size), (model.input_resolution, model.input_resolution)
        self.resize = SeparableResize(size, target) if size != target else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.resize(x))


def onnx_session(path: str | Path, threads: int = 1):
    """An onnxruntime session on the CPU execution provider with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_logits(session, images: torch.Tensor, batch_size: int = BATCH) -> np.ndarray:
    """Logits of float [0, 1] ``images`` (N, 3, H, W) from an onnxruntime ``session``."""
    x = images.detach().cpu().float().numpy()
    return np.concatenate(
        [
            session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch_size]})[0]
            for i in range(0, len(x), batch_size)
        ]
    )


@torch.inference_mode()
def torch_logits(model: nn.Module, images: torch.Tensor, batch_size: int = BATCH) -> np.ndarray:
    """Logits of ``images`` from ``model`` in eval mode on the CPU."""
    model = model.cpu().eval()
    return torch.cat(
        [model(images[i : i + batch_size].cpu()) for i in range(0, len(images), batch_size)]
    ).numpy()


def stratified_images(split: Split, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of ``split`` in the class-stratified evaluation order, as floats in [0, 1].

    Every prefix of that order holds each class in its share of the split: a calibration set drawn
    this way sees every class, and the test images are the ones the study evaluates first.
    """
    idx = eval_order(split.y, "stratified")[:n]
    return split.x[idx].float().div_(255), split.y[idx]


def _exporter_options() -> dict[str, Any]:
    # torch >= 2.9 defaults to the dynamo exporter, which needs onnxscript; the TorchScript exporter
    # needs only onnx and takes the separable resize. Before torch 2.5 there was no choice to make.
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def export_onnx(
    model: MobileNetV1,
    image_size: int,
    path: str | Path,
    check_images: torch.Tensor,
    *,
    tolerance: float,
    opset: int = 17,
    metadata: Mapping[str, str] | None = None,
) -> float:
    """Write ``model`` to ``path`` as fp32 ONNX that takes ``image_size`` images in [0, 1].

    The file is checked before it takes its name: onnxruntime's logits on ``check_images`` must be
    within ``tolerance`` (max abs) of PyTorch's, or nothing is written and a RuntimeError says by how
    much they differ. Returns that largest difference. ``metadata`` goes into the file's
    ``metadata_props``.
    """
    import onnx

    deployed = DeployedMobileNetV1(model, image_size).eval()
    reference = torch_logits(model, check_images)
    diff: list[float] = []

    def write(tmp: Path) -> None:
        example = torch.rand(1, 3, image_size, image_size)
        with warnings.catch_warnings():
            # The TorchScript exporter is chosen on purpose (_exporter_options), so neither its
            # deprecation notice nor the one it raises from its own internals is the user's to act
            # on; the tracer's warning is about preprocess's size test, which a fixed-size export
            # rightly freezes.
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
            warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                deployed,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                **_exporter_options(),
            )
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        if metadata:
            onnx.helper.set_model_props(proto, dict(metadata))
        onnx.save(proto, str(tmp))
        logits = onnx_logits(onnx_session(tmp, torch.get_num_threads()), check_images)
        diff.append(float(np.abs(logits - reference).max()))
        if not diff[0] <= tolerance:
            raise RuntimeError(
                f"the exported {model.name} differs from PyTorch by {diff[0]:.3g} (max abs logit) on "
                f"{len(check_images)} images, more than the tolerance {tolerance:g}; nothing written"
            )

    atomic_write(path, write)
    return diff[0]


def _calibration_reader(images: torch.Tensor, batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            x = images.detach().cpu().float().numpy()
            self._batches = iter([{INPUT_NAME: x[i : i + batch_size]} for i in range(0, len(x), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return Batches()


def quantize_int8(
    fp32_path: str | Path,
    path: str | Path,
    calibration: torch.Tensor,
    *,
    quant_format: str = "qdq",
    per_channel: bool = True,
    method: str = "minmax",
) -> Path:
    """Write an int8 copy of the fp32 ONNX file at ``fp32_path`` to ``path``, statically quantized.

    Activation scales come from running ``calibration`` images (float [0, 1]) through the fp32 graph
    (``method``: each tensor's min and max, or its 0.001th and 99.999th percentiles). Weights are
    int8, with one scale per output channel if ``per_channel``. Activations are int8 in the QDQ
    format (S8S8, onnxruntime's recommended default, native to ARM's dot-product instructions) and
    uint8 in the QOperator format (U8S8), where onnxruntime warns that S8S8 is slow on x86-64. The
    graph first goes through onnxruntime's quantization pre-processing (shape inference, graph
    optimisation), the flow its quantizer asks for. The input resize stays fp32: its weights are
    interpolation coefficients, and in int8 they would distort the image before the network sees it.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="robust-mnv1-quant-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        # Linear layers export as Gemm, so the only MatMul nodes are the SeparableResize's.
        resize_nodes = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "MatMul"]

        def write(tmp: Path) -> None:
            quantize_static(
                str(prepared),
                str(tmp),
                _calibration_reader(calibration, BATCH),
                quant_format={"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[quant_format],
                per_channel=per_channel,
                activation_type=QuantType.QInt8 if quant_format == "qdq" else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=resize_nodes,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "percentile": CalibrationMethod.Percentile,
                }[method],
            )

        return atomic_write(path, write)


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
    models = cache_root(cfg) / "models"
    name = make_model(cfg, dataset).name
    entry = models / f"{name}-standard-{standard_key(cfg)}"
    _require_trained(entry, "standard", train_missing, train_key)
    model, meta = standard_model(cfg, dataset, device)
    if regime == "standard":
        return model, meta, entry
    fcfg = OmegaConf.to_container(cfg.finetune, resolve=True)
    key = cache_key("finetune", meta["key"], weights_digest(model), fcfg, cfg.seed)
    entry = models / f"{name}-{regime}-{key}"
    _require_trained(entry, regime, train_missing, train_key)
    tuned, tuned_meta = finetuned_model(cfg, dataset, device, model, meta)
    return tuned, tuned_meta, entry


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
    if not train_missing and not sidecar(entry / "final.safetensors").exists():
        raise UserError(
            f"no trained {regime} model in the cache at {entry}; pick a cached one (experiment, "
            "model.alpha, model.rho, data, seed, cache_dir as it was trained) or set "
            f"{train_key}=true to train it"
        )


@dataclass(frozen=True)
class Latency:
    """Wall times of single calls, in milliseconds, in the order they ran."""

    times_ms: tuple[float, ...]

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.times_ms, q))

    @property
    def median(self) -> float:
        return self.percentile(50)

    def summary(self) -> dict[str, float]:
        """Median, p10, p90 and interquartile range (ms), and the number of calls."""
        p = {q: self.percentile(q) for q in (10, 25, 50, 75, 90)}
        return {
            "median_ms": p[50],
            "p10_ms": p[10],
            "p90_ms": p[90],
            "iqr_ms": p[75] - p[25],
            "n": len(self.times_ms),
        }


def compare_latency(
    calls: Mapping[str, Callable[[], object]], *, reps: int, warmup: int, blocks: int = 10
) -> dict[str, Latency]:
    """Time ``reps`` single calls of each of ``calls``, after ``warmup`` untimed calls of each.

    The calls run in ``blocks`` rounds, each engine taking its turn in a rotated order, so a change
    in the machine's load during the measurement falls on every engine rather than on one of them.
    """
    if reps < blocks:
        raise ValueError(f"reps={reps} must be at least blocks={blocks}")
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for b in range(blocks):
        n = reps // blocks + (b < reps % blocks)
        for name in names[b % len(names) :] + names[: b % len(names)]:
            call = calls[name]
            for _ in range(n):
                start = time.perf_counter_ns()
                call()
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    return {name: Latency(tuple(t)) for name, t in times.items()}


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def edge_latency(
    model: MobileNetV1,
    image_size: int,
    onnx_files: Mapping[str, str | Path],
    *,
    reps: int = 1000,
    warmup: int = 50,
    blocks: int = 10,
    seed: int = 0,
) -> dict[str, Latency]:
    """Batch-1 latency of ``model`` in eager PyTorch (key ``"pytorch eager"``) and of each ONNX file of
    ``onnx_files`` (by its key) in onnxruntime's CPU execution provider, all on one thread.

    One thread for both, as on a single edge core, and so that the figures do not depend on how many
    cores the host has. Each engine gets the same image, ``warmup`` untimed calls and ``reps`` timed
    ones, interleaved (:func:`compare_latency`). PyTorch runs under ``inference_mode`` with the
    model's own (antialiased) resize, the way the study times it.
    """
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, image_size, image_size, generator=gen)
    array = image.numpy()
    eager = copy.deepcopy(model).cpu().eval()
    sessions = {name: onnx_session(path, threads=1) for name, path in onnx_files.items()}
    calls: dict[str, Callable[[], object]] = {"pytorch eager": lambda: eager(image)}
    for name, session in sessions.items():
        calls[name] = lambda s=session: s.run([OUTPUT_NAME], {INPUT_NAME: array})
    with _torch_threads(1), torch.inference_mode():
        return compare_latency(calls, reps=reps, warmup=warmup, blocks=blocks)


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
