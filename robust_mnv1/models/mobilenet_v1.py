"""MobileNet V1 with width (alpha) and resolution (rho) multipliers.

Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", https://arxiv.org/abs/1704.04861

The body follows Table 1 of the paper: a full 3x3 convolution with 32 channels, then 13
depthwise-separable blocks (3x3 depthwise conv, then 1x1 pointwise conv, each followed by
batch norm and ReLU), global average pooling and one fully connected layer.

The model takes float NCHW images in [0, 1] at the dataset's native size. Resizing to the
model's input resolution and normalisation both happen inside ``forward``, so every alpha/rho
variant is attacked in the same pixel space and an attack's epsilon means the same thing for
all of them.

Two profiles:

* ``imagenet``: stride-2 stem, base resolution 224 (the paper's setting).
* ``cifar``: stride-1 stem, base resolution 32 (the usual CIFAR adaptation, which keeps a
  2x2 feature map before pooling instead of 1x1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_mnv1.infra.errors import UserError

__all__ = [
    "ALPHAS",
    "BLOCK_SPECS",
    "CIFAR_RHOS",
    "IMAGENET_RHOS",
    "PROFILES",
    "ConvBNReLU",
    "DepthwiseSeparable",
    "MobileNetV1",
    "build_model",
    "mobilenet_v1_025",
    "mobilenet_v1_050",
    "mobilenet_v1_075",
    "mobilenet_v1_100",
    "scaled_channels",
]

# Width and resolution grids of the robustness sweep. The ImageNet rhos give the paper's
# 224/192/160/128 px (Table 7); the CIFAR rhos give 32/28/24/20 px.
ALPHAS: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
CIFAR_RHOS: tuple[float, ...] = (1.0, 0.875, 0.75, 0.625)
IMAGENET_RHOS: tuple[float, ...] = (1.0, 6 / 7, 5 / 7, 4 / 7)

STEM_CHANNELS = 32

# (output channels, stride) of the 13 depthwise-separable blocks, as in the reference
# implementations (TF-slim mobilenet_v1, Keras MobileNet). Table 1 of the paper marks the last
# two "Conv dw" rows both "s2", yet lists a 7x7 input for the last one and a 7x7 average pool
# after it, so the last "s2" is a typo: block 12 has stride 2 (14x14x512 -> 7x7, then its
# pointwise conv widens to 1024) and block 13 has stride 1 (7x7x1024 -> 7x7x1024).
BLOCK_SPECS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


# profile -> (stem stride, base resolution, default mean, default std)
PROFILES: dict[str, tuple[int, int, tuple[float, ...], tuple[float, ...]]] = {
    "cifar": (1, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": (2, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def input_resolution(profile: str, rho: float) -> int:
    """Pixels per side that the stem sees: the profile's base resolution times ``rho``, rounded."""
    return round(PROFILES[profile][1] * rho)


def model_name(alpha: float, resolution: int) -> str:
    """Short label such as ``MobileNetV1-0.50-32px`` (alpha, input resolution)."""
    return f"MobileNetV1-{alpha:.2f}-{resolution}px"


def scaled_channels(channels: int, alpha: float) -> int:
    """Channels of a layer after the width multiplier, floored at 8 as the reference code does."""
    return max(8, int(channels * alpha))


class ConvBNReLU(nn.Module):
    """Convolution (no bias), batch norm, ReLU: the unit every MobileNet V1 layer is made of.

    ``groups == in_channels`` makes it a depthwise convolution.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel_size: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv (carries the stride), then 1x1 pointwise conv that sets the width."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        self.dw = ConvBNReLU(in_channels, in_channels, kernel_size=3, stride=stride, groups=in_channels)
        self.pw = ConvBNReLU(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


def _check_number(name: str, value: Any, valid: str, ok: bool) -> None:
    if not ok:
        raise UserError(f"{name}={value!r} is invalid: {name} must be {valid}")


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


class MobileNetV1(nn.Module):
    """MobileNet V1 that takes [0, 1] images at any size and resizes/normalises internally.

    Args:
        alpha: width multiplier, > 0 (1.0, 0.75, 0.5, 0.25 in the paper).
        rho: resolution multiplier in (0, 1]; the input is resized to
            ``round(base_resolution * rho)`` pixels before the stem.
        num_classes: size of the classifier output, >= 2.
        profile: ``"cifar"`` (stride-1 stem, 32 px base) or ``"imagenet"`` (stride-2 stem,
            224 px base).
        mean, std: per-channel normalisation of the [0, 1] input; default to the profile's
            dataset statistics (CIFAR-10 or ImageNet).
        drop_rate: dropout before the classifier; off by default.
    """

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        rho: float = 1.0,
        num_classes: int = 10,
        profile: str = "cifar",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if profile not in PROFILES:
            raise UserError(f"profile={profile!r} is unknown: profile must be one of {sorted(PROFILES)}")
        _check_number("alpha", alpha, "a number > 0", _is_real(alpha) and alpha > 0)
        _check_number("rho", rho, "a number in (0, 1]", _is_real(rho) and 0 < rho <= 1)
        _check_number(
            "num_classes",
            num_classes,
            "an integer >= 2",
            isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 2,
        )
        _check_number(
            "drop_rate", drop_rate, "a number in [0, 1)", _is_real(drop_rate) and 0 <= drop_rate < 1
        )
        stem_stride, base_resolution, default_mean, default_std = PROFILES[profile]
        resolution = input_resolution(profile, rho)
        _check_number(
            "rho",
            rho,
            f"large enough that round({base_resolution} * rho) >= 1 pixel",
            resolution >= 1,
        )
        mean = default_mean if mean is None else tuple(mean)
        std = default_std if std is None else tuple(std)
        _check_number("mean", mean, "3 numbers, one per RGB channel", len(mean) == 3)
        _check_number(
            "std", std, "3 positive numbers, one per RGB channel", len(std) == 3 and all(s > 0 for s in std)
        )

        self.alpha = float(alpha)
        self.rho = float(rho)
        self.num_classes = num_classes
        self.profile = profile
        self.base_resolution = base_resolution
        self.input_resolution = resolution
        # Shaped for broadcasting over NCHW; buffers so they follow .to(device) and state_dict.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        channels = scaled_channels(STEM_CHANNELS, alpha)
        layers: list[nn.Module] = [ConvBNReLU(3, channels, kernel_size=3, stride=stem_stride)]
        for out_channels, stride in BLOCK_SPECS:
            out_channels = scaled_channels(out_channels, alpha)
            layers.append(DepthwiseSeparable(channels, out_channels, stride=stride))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()

    @property
    def name(self) -> str:
        """Short label such as ``MobileNetV1-0.50-32px`` (alpha, input resolution)."""
        return model_name(self.alpha, self.input_resolution)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Resize [0, 1] images to ``input_resolution`` and normalise them."""
        size = (self.input_resolution, self.input_resolution)
        if tuple(x.shape[-2:]) != size:
            # Antialiasing only matters when shrinking: without it, bilinear downsampling reads
            # just the pixels next to each sample point, so others would not reach the logits
            # at all and attacks would see gradients on a sparse subset of the image.
            downsampling = x.shape[-2] > size[0] or x.shape[-1] > size[1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=downsampling)
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled feature vector (N, C) of [0, 1] images."""
        return torch.flatten(self.pool(self.features(self.preprocess(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of float NCHW images in [0, 1] at any spatial size."""
        return self.classifier(self.dropout(self.forward_features(x)))


def build_model(
    alpha: float = 1.0, rho: float = 1.0, profile: str = "cifar", num_classes: int = 10, **kwargs: Any
) -> MobileNetV1:
    """Build the MobileNet V1 variant the rest of the suite sweeps over (extra kwargs pass through)."""
    return MobileNetV1(alpha=alpha, rho=rho, profile=profile, num_classes=num_classes, **kwargs)


def mobilenet_v1_100(**kwargs: Any) -> MobileNetV1:
    """MobileNet V1 at full width (alpha = 1.0)."""
    return MobileNetV1(alpha=1.0, **kwargs)


def mobilenet_v1_075(**kwargs: Any) -> MobileNetV1:
    """MobileNet V1 at alpha = 0.75."""
    return MobileNetV1(alpha=0.75, **kwargs)


def mobilenet_v1_050(**kwargs: Any) -> MobileNetV1:
    """MobileNet V1 at alpha = 0.5."""
    return MobileNetV1(alpha=0.5, **kwargs)


def mobilenet_v1_025(**kwargs: Any) -> MobileNetV1:
    """MobileNet V1 at alpha = 0.25."""
    return MobileNetV1(alpha=0.25, **kwargs)
