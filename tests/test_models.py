"""MobileNet V1: architecture per Table 1, alpha/rho handling, in-model preprocessing, input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_mnv1.infra.errors import UserError
from robust_mnv1.models import (
    ALPHAS,
    CIFAR_RHOS,
    IMAGENET_RHOS,
    MobileNetV1,
    build_model,
    mobilenet_v1_025,
    mobilenet_v1_050,
    mobilenet_v1_075,
    mobilenet_v1_100,
)
from robust_mnv1.models.mobilenet_v1 import ConvBNReLU, DepthwiseSeparable

REFERENCE_BLOCK_STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
PAPER_BLOCK_CHANNELS = [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]


@pytest.mark.parametrize(
    ("profile", "alpha", "rho", "native", "num_classes"),
    [
        ("cifar", 1.0, 1.0, 32, 10),
        ("cifar", 0.5, 0.75, 32, 10),
        ("cifar", 0.25, 0.625, 32, 100),
        ("imagenet", 0.25, 4 / 7, 224, 1000),
        ("imagenet", 0.25, 1.0, 96, 7),  # native smaller than input_resolution: upsampled
    ],
)
def test_output_shape(profile: str, alpha: float, rho: float, native: int, num_classes: int) -> None:
    model = build_model(alpha=alpha, rho=rho, profile=profile, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, native, native))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_non_square_input_is_resized_to_square() -> None:
    model = build_model(alpha=0.25).eval()
    with torch.no_grad():
        assert model.preprocess(torch.rand(1, 3, 40, 28)).shape == (1, 3, 32, 32)
        assert model(torch.rand(1, 3, 40, 28)).shape == (1, 10)


def test_input_resolution_grids() -> None:
    assert [build_model(rho=r, profile="cifar").input_resolution for r in CIFAR_RHOS] == [32, 28, 24, 20]
    assert [build_model(alpha=0.25, rho=r, profile="imagenet").input_resolution for r in IMAGENET_RHOS] == [
        224,
        192,
        160,
        128,
    ]
    assert ALPHAS == (1.0, 0.75, 0.5, 0.25)


def test_attributes_and_name() -> None:
    model = build_model(alpha=0.5, rho=0.875, profile="cifar", num_classes=10)
    assert (model.alpha, model.rho, model.profile, model.num_classes) == (0.5, 0.875, "cifar", 10)
    assert (model.base_resolution, model.input_resolution) == (32, 28)
    assert model.name == "MobileNetV1-0.50-28px"
    assert build_model(profile="imagenet", num_classes=1000).name == "MobileNetV1-1.00-224px"


def _blocks(model: MobileNetV1) -> list[DepthwiseSeparable]:
    return list(model.features)[1:]


def test_block_structure_and_strides() -> None:
    for profile, stem_stride in [("cifar", 1), ("imagenet", 2)]:
        model = build_model(alpha=0.25, profile=profile)
        assert len(model.features) == 14
        assert isinstance(model.features[0], ConvBNReLU)
        assert model.features[0].conv.kernel_size == (3, 3)
        assert model.features[0].conv.stride == (stem_stride, stem_stride)
        blocks = _blocks(model)
        assert len(blocks) == 13
        assert all(isinstance(b, DepthwiseSeparable) for b in blocks)
        assert [b.dw.conv.stride[0] for b in blocks] == REFERENCE_BLOCK_STRIDES
        assert all(b.pw.conv.stride == (1, 1) and b.pw.conv.kernel_size == (1, 1) for b in blocks)
        assert all(b.dw.conv.groups == b.dw.conv.in_channels == b.dw.conv.out_channels for b in blocks)
        assert all(b.dw.conv.kernel_size == (3, 3) and b.dw.conv.padding == (1, 1) for b in blocks)


def test_every_conv_has_bn_and_relu_and_no_bias() -> None:
    model = build_model(alpha=0.25)
    units = [m for m in model.modules() if isinstance(m, ConvBNReLU)]
    assert len(units) == 1 + 2 * 13
    for unit in units:
        assert unit.conv.bias is None
        assert isinstance(unit.bn, nn.BatchNorm2d) and unit.bn.num_features == unit.conv.out_channels
        assert isinstance(unit.act, nn.ReLU)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == len(units)


def test_channels_match_table1_at_full_width() -> None:
    model = build_model(alpha=1.0, profile="imagenet", num_classes=1000)
    assert model.features[0].conv.out_channels == 32
    assert [b.pw.conv.out_channels for b in _blocks(model)] == PAPER_BLOCK_CHANNELS
    assert model.classifier.in_features == 1024 and model.classifier.out_features == 1000


@pytest.mark.parametrize("alpha", [0.75, 0.5, 0.25, 0.1])
def test_channel_rule(alpha: float) -> None:
    model = build_model(alpha=alpha)
    assert model.features[0].conv.out_channels == max(8, int(32 * alpha))
    assert [b.pw.conv.out_channels for b in _blocks(model)] == [
        max(8, int(c * alpha)) for c in PAPER_BLOCK_CHANNELS
    ]


def test_channel_rule_quarter_width() -> None:
    model = mobilenet_v1_025()
    assert model.features[0].conv.out_channels == 8
    assert _blocks(model)[-1].pw.conv.out_channels == 256
    assert model.classifier.in_features == 256


def test_builders_set_alpha_and_pass_kwargs() -> None:
    builders = [mobilenet_v1_100, mobilenet_v1_075, mobilenet_v1_050, mobilenet_v1_025]
    for builder, alpha in zip(builders, ALPHAS, strict=True):
        model = builder(rho=0.75, num_classes=5)
        assert model.alpha == alpha and model.input_resolution == 24 and model.num_classes == 5


def test_default_normalisation_per_profile_and_override() -> None:
    cifar = build_model(alpha=0.25, profile="cifar")
    imagenet = build_model(alpha=0.25, profile="imagenet")
    torch.testing.assert_close(cifar.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    torch.testing.assert_close(imagenet.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    custom = MobileNetV1(alpha=0.25, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(custom.preprocess(x), (x - 0.5) / 0.25)
    assert {"mean", "std"} <= set(custom.state_dict())


def test_preprocess_is_plain_normalisation_at_native_size() -> None:
    model = build_model(alpha=0.25, rho=1.0)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.preprocess(x), (x - model.mean) / model.std)


def test_downsampling_is_antialiased_bilinear() -> None:
    model = build_model(alpha=0.25, rho=0.625)  # 32 -> 20 px
    x = torch.rand(2, 3, 32, 32)
    expected = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(model.preprocess(x), (expected - model.mean) / model.std)
    aliased = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False, antialias=False)
    assert not torch.allclose(expected, aliased, atol=1e-3)


def test_upsampling_is_plain_bilinear() -> None:
    model = build_model(alpha=0.25, rho=1.0)
    x = torch.rand(1, 3, 20, 20)
    expected = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.preprocess(x), (expected - model.mean) / model.std)


@pytest.mark.parametrize("native", [32, 48])
def test_input_gradients_flow(native: int) -> None:
    model = build_model(alpha=0.25, rho=0.75).eval()
    x = torch.rand(2, 3, native, native, requires_grad=True)
    loss = F.cross_entropy(model(x), torch.tensor([1, 2]))
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.shape == x.shape
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_channels_last_matches_contiguous() -> None:
    model = build_model(alpha=0.25, rho=0.75).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_eval_forward() -> None:
    model = build_model(alpha=0.25, rho=0.75).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out.float()).all()
    # bf16 keeps ~3 significant digits; the logits must still be close to fp32.
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1 * ref.abs().max().item())


def test_weight_init() -> None:
    torch.manual_seed(0)
    model = build_model(alpha=0.5, num_classes=100)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
    assert torch.equal(model.classifier.bias, torch.zeros(100))
    assert 0.008 < model.classifier.weight.std().item() < 0.012
    # Kaiming fan_out for ReLU: std = sqrt(2 / (out_channels * k * k)); the last pointwise conv has
    # 512 * 512 weights, enough for a 5 % check of the sample std.
    conv = model.features[13].pw.conv
    assert conv.weight.std().item() == pytest.approx((2.0 / conv.out_channels) ** 0.5, rel=0.05)
    dw = model.features[13].dw.conv
    assert dw.weight.std().item() == pytest.approx((2.0 / (dw.out_channels * 9)) ** 0.5, rel=0.05)


def test_deterministic_under_seed() -> None:
    torch.manual_seed(123)
    a = build_model(alpha=0.25)
    torch.manual_seed(123)
    b = build_model(alpha=0.25)
    torch.manual_seed(124)
    c = build_model(alpha=0.25)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_dropout_off_by_default() -> None:
    model = build_model(alpha=0.25).train()
    assert model.dropout.p == 0.0
    assert MobileNetV1(alpha=0.25, drop_rate=0.2).dropout.p == 0.2


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"alpha": 0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": "0.5"}, "alpha"),
        ({"rho": 0.0}, "rho"),
        ({"rho": 1.5}, "rho"),
        ({"rho": -0.5}, "rho"),
        ({"rho": 0.01}, "rho"),  # rounds to a 0 px input
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 10.0}, "num_classes"),
        ({"profile": "svhn"}, "profile"),
        ({"drop_rate": 1.0}, "drop_rate"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
    ],
)
def test_bad_arguments_raise_one_line_user_error(kwargs: dict, argument: str) -> None:
    with pytest.raises(UserError) as info:
        MobileNetV1(**kwargs)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{argument}=")
