"""ONNX files of a MobileNet V1: the fp32 export with the model's resize and normalisation inside, static int8
quantization by onnxruntime, and running either file or the PyTorch model over a batch of images."""

from __future__ import annotations

import copy
import inspect
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robust_mnv1.infra.atomic import atomic_write
from robust_mnv1.models import MobileNetV1

INPUT_NAME, OUTPUT_NAME = "images", "logits"


FORMATS = ("qdq", "qoperator")


# onnxruntime's entropy calibration is left out: quantize_static cannot set its bin count, and with its
# defaults (128 bins into 128 quantized bins) the search has one candidate, the full range, so its files
# came out byte-identical to minmax's.
METHODS = ("minmax", "percentile")


# Images per onnxruntime call when computing accuracies and calibration statistics.
BATCH = 250


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
