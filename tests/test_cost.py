"""Cost analysis pinned to the paper (Tables 2, 6, 7) and cross-checked against torch's FLOP counter."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from robust_mnv1.cost import KIND_LABELS, layer_costs, separable_ratios, summarize
from robust_mnv1.models import ALPHAS, IMAGENET_RHOS, build_model
from robust_mnv1.models.mobilenet_v1 import ConvBNReLU

REPO_ROOT = Path(__file__).parents[1]


def _imagenet(alpha: float = 1.0, rho: float = 1.0):
    return build_model(alpha=alpha, rho=rho, profile="imagenet", num_classes=1000)


# Table 6: width multiplier at 224 px -> (million mult-adds, million parameters).
TABLE6 = {1.0: (569, 4.2), 0.75: (325, 2.6), 0.5: (149, 1.3), 0.25: (41, 0.5)}
# Table 7: alpha = 1 at the lower resolutions -> million mult-adds.
TABLE7 = {6 / 7: 418, 5 / 7: 290, 4 / 7: 186}
# Table 2: kind -> (% mult-adds, % parameters), with the full conv's 1.19 corrected to 1.91.
TABLE2 = {
    "pointwise": (94.86, 74.59),
    "depthwise": (3.06, 1.06),
    "conv": (1.91, 0.02),
    "fc": (0.18, 24.33),
}


@pytest.mark.parametrize("alpha", ALPHAS)
def test_table6_width_multiplier(alpha: float) -> None:
    summary = summarize(layer_costs(_imagenet(alpha)))
    paper_macs, paper_params = TABLE6[alpha]
    assert abs(round(summary.total_macs / 1e6) - paper_macs) <= 1
    assert round(summary.total_params / 1e6, 1) == paper_params


@pytest.mark.parametrize("rho", IMAGENET_RHOS[1:])
def test_table7_resolution_multiplier(rho: float) -> None:
    summary = summarize(layer_costs(_imagenet(1.0, rho)))
    assert abs(round(summary.total_macs / 1e6) - TABLE7[rho]) <= 1
    assert round(summary.total_params / 1e6, 1) == 4.2  # resolution does not change the weights


def test_table2_shares() -> None:
    summary = summarize(layer_costs(_imagenet()))
    for kind, (macs_pct, params_pct) in TABLE2.items():
        assert summary.macs_share[kind] == pytest.approx(macs_pct, abs=0.05), kind
        assert summary.params_share[kind] == pytest.approx(params_pct, abs=0.05), kind
    assert sum(summary.macs_share.values()) == pytest.approx(100.0)
    assert sum(summary.params_share.values()) == pytest.approx(100.0)
    assert list(summary.table().index) == list(KIND_LABELS.values())


def test_reference_totals_exact() -> None:
    df = layer_costs(_imagenet())
    summary = summarize(df)
    # Hand count: 10,838,016 stem + depthwise + pointwise + 1,024,000 FC.
    assert summary.total_macs == 568_740_352
    assert summary.total_params == 4_209_088
    # Keras' MobileNet reports 4,231,976 trainable parameters: weights + BN affine + FC bias.
    assert summary.total_params_with_bn_bias == 4_231_976
    stem = df.iloc[0]
    assert (stem["kind"], stem["out_hw"], stem["macs"]) == ("conv", 112, 3 * 3 * 3 * 32 * 112 * 112)


def test_layer_table_layout() -> None:
    df = layer_costs(build_model(alpha=0.25, rho=0.625, profile="cifar"))
    assert list(df.columns) == [
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
    assert len(df) == 1 + 2 * 13 + 1
    assert df["kind"].tolist() == ["conv"] + ["depthwise", "pointwise"] * 13 + ["fc"]
    assert df["name"].iloc[0] == "features.0.conv" and df["name"].iloc[-1] == "classifier"
    # 20 px, stride-1 stem: stride-2 blocks 2, 4, 6, 12 give 10, 5, 3, 2.
    assert df["out_hw"].tolist()[::2] == [20, 20, 10, 10, 5, 5, 3, 3, 3, 3, 3, 3, 2, 2]


@pytest.mark.parametrize(
    ("alpha", "rho", "profile"),
    [(1.0, 1.0, "cifar"), (0.5, 0.75, "cifar"), (0.25, 0.625, "cifar"), (0.75, 0.875, "imagenet")],
)
def test_params_match_module_parameters(alpha: float, rho: float, profile: str) -> None:
    model = build_model(alpha=alpha, rho=rho, profile=profile, num_classes=1000)
    df = layer_costs(model).set_index("name")
    units = {f"{name}.conv": unit for name, unit in model.named_modules() if isinstance(unit, ConvBNReLU)}
    assert set(units) | {"classifier"} == set(df.index)
    for name, unit in units.items():
        assert df.loc[name, "params"] == unit.conv.weight.numel()
        assert df.loc[name, "bn_params"] == unit.bn.weight.numel() + unit.bn.bias.numel()
        assert df.loc[name, "bias_params"] == 0
    assert df.loc["classifier", "params"] == model.classifier.weight.numel()
    assert df.loc["classifier", "bias_params"] == model.classifier.bias.numel()
    summary = summarize(df.reset_index())
    assert summary.total_params_with_bn_bias == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("alpha", "rho", "profile"),
    [
        (1.0, 1.0, "cifar"),
        (0.5, 0.75, "cifar"),
        (0.25, 0.625, "cifar"),
        (0.25, 4 / 7, "imagenet"),
        (0.75, 5 / 7, "imagenet"),
        (1.0, 1.0, "imagenet"),
    ],
)
def test_macs_match_torch_flop_counter(alpha: float, rho: float, profile: str) -> None:
    # FlopCounterMode counts 2 FLOPs per multiply-add for convolution and addmm, and for a
    # grouped conv it multiplies by the weight's (out, in/groups, k, k) shape, so a depthwise
    # conv counts 2 * D_K^2 * M * D_F^2, the paper's formula. Bias adds, BN, ReLU and pooling
    # are not counted. The input is already at input_resolution, so the resize is skipped.
    model = build_model(alpha=alpha, rho=rho, profile=profile, num_classes=1000).eval()
    x = torch.rand(1, 3, model.input_resolution, model.input_resolution)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    counts = counter.get_flop_counts()
    df = layer_costs(model)
    prefix = type(model).__name__
    for name, macs in zip(df["name"], df["macs"], strict=True):
        assert sum(counts[f"{prefix}.{name}"].values()) == 2 * macs, name
    assert counter.get_total_flops() == 2 * int(df["macs"].sum())


def test_separable_ratios_match_formula() -> None:
    df = layer_costs(_imagenet())
    ratios = separable_ratios(df)
    assert len(ratios) == 13
    assert ratios["agree"].all()
    for row in ratios.to_dict("records"):
        measured = Fraction(row["separable_macs"], row["standard_macs"])
        assert measured == Fraction(1, row["N"]) + Fraction(1, row["D_K"] ** 2)
        assert row["measured_ratio"] == pytest.approx(row["formula_1/N+1/Dk^2"], rel=1e-15)
    # The paper: 8 to 9 times less computation than standard convolutions.
    assert (1 / ratios["measured_ratio"]).between(7.8, 9.0).all()


def test_fc_without_bias_has_no_bias_params() -> None:
    model = build_model(alpha=0.25)
    model.classifier = nn.Linear(model.classifier.in_features, 10, bias=False)
    df = layer_costs(model)
    assert df["bias_params"].sum() == 0
    assert df.iloc[-1]["macs"] == model.classifier.in_features * 10


def _run_cli(*overrides: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robust_mnv1.cost", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_reference_report() -> None:
    result = _run_cli("model.profile=imagenet", "model.num_classes=1000")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "MobileNetV1-1.00-224px" in out
    assert "total mult-adds: 568.7M" in out
    assert "total params (conv/FC weights, as the paper counts): 4.21M" in out
    assert "total params incl. BN and FC bias: 4.23M" in out
    assert "paper_mult_adds_%" in out
    assert "1.19%" in out and "1.91%" in out
    assert "features.13" in out and "formula_1/N+1/Dk^2" in out


@pytest.mark.parametrize("override", ["model.alpha=-1", "model.rho=1.5"])
def test_cli_bad_input_exits_2_with_one_line(override: str) -> None:
    result = _run_cli(override)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")


def test_cli_writes_no_files(tmp_path: Path) -> None:
    # Hydra's defaults would leave .hydra/ and cost.log behind in the working directory.
    result = _run_cli("model.alpha=0.25", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "MobileNetV1-0.25-32px" in result.stdout
    assert list(tmp_path.iterdir()) == []
