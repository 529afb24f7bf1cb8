"""Paper-exact cost analysis of MobileNet V1: mult-adds and parameters per layer.

Counts follow Howard et al. 2017 (https://arxiv.org/abs/1704.04861), Section 3 and Table 2:

* full conv:  D_K * D_K * M * N * D_F * D_F mult-adds, D_K * D_K * M * N weights
* depthwise:  D_K * D_K * M * D_F * D_F mult-adds,     D_K * D_K * M weights
* pointwise:  M * N * D_F * D_F mult-adds,             M * N weights
* fully connected: in * out mult-adds and weights

where D_F is the output's spatial size. Everything is derived analytically from the layers'
hyper-parameters and the model's ``input_resolution``; nothing is run. Batch norm, ReLU,
pooling and the model's internal resize/normalisation are not convolutions or FC layers and
the paper does not count them, so they are excluded from ``macs``; BN affine parameters and
the FC bias are reported in their own columns because the paper's parameter counts leave them
out too.

Run ``python -m robust_mnv1.cost model.profile=imagenet`` (1000 classes) to print the
per-layer table next to the paper's Table 2; that CLI is this package's ``__main__``, so
importing the counts loads neither Hydra nor the layer timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise

import pandas as pd
from torch import nn

from robust_mnv1.models.mobilenet_v1 import ConvBNReLU, MobileNetV1

__all__ = [
    "KIND_LABELS",
    "PAPER_TABLE2",
    "CostSummary",
    "layer_costs",
    "report",
    "separable_ratios",
    "summarize",
]

# Row labels of the paper's Table 2, in its order.
KIND_LABELS: dict[str, str] = {
    "pointwise": "Conv 1x1",
    "depthwise": "Conv DW 3x3",
    "conv": "Conv 3x3",
    "fc": "Fully Connected",
}

# Table 2 as printed: kind -> (% mult-adds, % parameters), for alpha=1, 224 px, 1000 classes.
# The 1.19 is a digit transposition of 1.91, see TABLE2_NOTE.
PAPER_TABLE2: dict[str, tuple[float, float]] = {
    "pointwise": (94.86, 74.59),
    "depthwise": (3.06, 1.06),
    "conv": (1.19, 0.02),
    "fc": (0.18, 24.33),
}

TABLE2_NOTE = (
    "note: the paper's Table 2 prints 1.19% for the full 3x3 conv's mult-adds; that is a digit\n"
    "transposition of 1.91%: the four shares sum to 100% only with 1.91, and the count gives\n"
    "10.8M of 568.7M mult-adds (1.91%)."
)

COLUMNS = [
    "name",
    "kind",
    "in_ch",
    "out_ch",
    "kernel",
    "stride",
    "out_hw",
    "macs",
    "params",
    "bn_params",
    "bias_params",
]


def _conv_out(size: int, conv: nn.Conv2d) -> int:
    # Standard conv arithmetic (dilation 1); MobileNet's kernels, strides and maps are square.
    return (size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1


def _conv_kind(conv: nn.Conv2d) -> str:
    if conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels:
        return "depthwise"
    if conv.groups != 1:
        raise ValueError(f"grouped conv with groups={conv.groups} is neither full nor depthwise")
    return "pointwise" if conv.kernel_size == (1, 1) else "conv"


def layer_costs(model: MobileNetV1) -> pd.DataFrame:
    """One row per conv/FC layer of ``model``, in forward order, with paper-style costs.

    Columns: ``name``, ``kind`` (conv | depthwise | pointwise | fc), ``in_ch``, ``out_ch``,
    ``kernel``, ``stride``, ``out_hw``, ``macs``, ``params`` (conv/FC weights only),
    ``bn_params`` (gamma + beta of the BN after the conv) and ``bias_params`` (FC bias).
    Spatial sizes start from ``model.input_resolution``; the features are a plain chain, so
    each conv's output size is the next one's input size.
    """
    rows = []
    size = model.input_resolution
    for name, unit in model.features.named_modules(prefix="features"):
        if not isinstance(unit, ConvBNReLU):
            continue
        conv = unit.conv
        size = _conv_out(size, conv)
        kernel = conv.kernel_size[0]
        weights = kernel * kernel * (conv.in_channels // conv.groups) * conv.out_channels
        rows.append(
            {
                "name": f"{name}.conv",
                "kind": _conv_kind(conv),
                "in_ch": conv.in_channels,
                "out_ch": conv.out_channels,
                "kernel": kernel,
                "stride": conv.stride[0],
                "out_hw": size,
                "macs": weights * size * size,
                "params": weights,
                "bn_params": 2 * unit.bn.num_features if unit.bn.affine else 0,
                "bias_params": 0,
            }
        )
    fc = model.classifier
    rows.append(
        {
            "name": "classifier",
            "kind": "fc",
            "in_ch": fc.in_features,
            "out_ch": fc.out_features,
            "kernel": 1,
            "stride": 1,
            "out_hw": 1,
            "macs": fc.in_features * fc.out_features,
            "params": fc.in_features * fc.out_features,
            "bn_params": 0,
            "bias_params": fc.out_features if fc.bias is not None else 0,
        }
    )
    return pd.DataFrame(rows, columns=COLUMNS)


@dataclass(frozen=True)
class CostSummary:
    """Totals of a :func:`layer_costs` table and its split by layer kind (paper Table 2).

    Shares are percentages keyed by kind (``pointwise``, ``depthwise``, ``conv``, ``fc``).
    """

    total_macs: int
    total_params: int
    total_params_with_bn_bias: int
    macs_share: dict[str, float]
    params_share: dict[str, float]

    def table(self) -> pd.DataFrame:
        """Table 2 layout: one row per kind (paper label as index), % mult-adds and % parameters."""
        return pd.DataFrame(
            {
                "mult_adds_%": [self.macs_share[kind] for kind in KIND_LABELS],
                "params_%": [self.params_share[kind] for kind in KIND_LABELS],
            },
            index=pd.Index(list(KIND_LABELS.values()), name="type"),
        )


def summarize(df: pd.DataFrame) -> CostSummary:
    """Totals and per-kind percentage shares of a :func:`layer_costs` table."""
    total_macs = int(df["macs"].sum())
    total_params = int(df["params"].sum())
    by_kind = df.groupby("kind")[["macs", "params"]].sum()
    by_kind = by_kind.reindex(list(KIND_LABELS), fill_value=0)
    return CostSummary(
        total_macs=total_macs,
        total_params=total_params,
        total_params_with_bn_bias=total_params + int(df["bn_params"].sum()) + int(df["bias_params"].sum()),
        macs_share={kind: 100.0 * int(v) / total_macs for kind, v in by_kind["macs"].items()},
        params_share={kind: 100.0 * int(v) / total_params for kind, v in by_kind["params"].items()},
    )


def separable_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Cost of each depthwise-separable block relative to a standard conv, measured vs formula.

    For every block (a depthwise row followed by its pointwise row) this compares
    ``macs(dw) + macs(pw)`` with the mult-adds of a standard ``D_K x D_K`` conv from M to N
    channels at the same output size D_F, next to the paper's ``1/N + 1/D_K^2`` (Section 3.1).
    ``agree`` is an exact rational comparison, not a float tolerance.
    """
    rows = []
    records = df.to_dict("records")
    for dw, pw in pairwise(records):
        if dw["kind"] != "depthwise":
            continue
        if pw["kind"] != "pointwise" or pw["out_hw"] != dw["out_hw"]:
            raise ValueError(f"depthwise layer {dw['name']} is not followed by its pointwise layer")
        m, n, k, hw = dw["in_ch"], pw["out_ch"], dw["kernel"], dw["out_hw"]
        separable = dw["macs"] + pw["macs"]
        standard = k * k * m * n * hw * hw
        measured = Fraction(separable, standard)
        formula = Fraction(1, n) + Fraction(1, k * k)
        rows.append(
            {
                "block": dw["name"].rsplit(".", 2)[0],
                "M": m,
                "N": n,
                "D_K": k,
                "stride": dw["stride"],
                "D_F": hw,
                "separable_macs": separable,
                "standard_macs": standard,
                "measured_ratio": float(measured),
                "formula_1/N+1/Dk^2": float(formula),
                "agree": measured == formula,
            }
        )
    return pd.DataFrame(rows)


def _is_paper_reference(model: MobileNetV1) -> bool:
    return (
        model.profile == "imagenet"
        and model.alpha == 1.0
        and model.input_resolution == 224
        and model.num_classes == 1000
    )


def report(model: MobileNetV1) -> str:
    """Plain-text cost report of ``model``: per-layer table, totals, Table 2 split, block ratios."""
    df = layer_costs(model)
    summary = summarize(df)
    shares = summary.table()
    lines = [
        f"{model.name}  profile={model.profile}  input_resolution={model.input_resolution}px "
        f"(base {model.base_resolution}px, rho={model.rho:g})  num_classes={model.num_classes}",
        "(the model's internal resize and normalisation are not conv/FC layers and are not counted)",
        "",
        df.to_string(index=False),
        "",
        f"total mult-adds: {summary.total_macs / 1e6:.1f}M ({summary.total_macs:,})",
        f"total params (conv/FC weights, as the paper counts): {summary.total_params / 1e6:.2f}M "
        f"({summary.total_params:,})",
        f"total params incl. BN and FC bias: {summary.total_params_with_bn_bias / 1e6:.2f}M "
        f"({summary.total_params_with_bn_bias:,})",
        "",
        "share by layer type (paper Table 2):",
    ]
    if _is_paper_reference(model):
        paper = pd.DataFrame(
            [PAPER_TABLE2[kind] for kind in KIND_LABELS],
            index=shares.index,
            columns=["paper_mult_adds_%", "paper_params_%"],
        )
        shares = pd.concat([shares, paper], axis=1)
    lines.append(shares.to_string(float_format=lambda v: f"{v:.2f}"))
    if _is_paper_reference(model):
        lines += ["", TABLE2_NOTE]
    lines += [
        "",
        "depthwise-separable vs standard 3x3 conv, mult-adds (paper Section 3.1):",
        separable_ratios(df).to_string(index=False, float_format=lambda v: f"{v:.6f}"),
    ]
    return "\n".join(lines)
