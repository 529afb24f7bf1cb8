"""Model zoo: one architecture per module, one builder per variant."""

from robust_mnv1.models.mobilenet_v1 import (
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

__all__ = [
    "ALPHAS",
    "CIFAR_RHOS",
    "IMAGENET_RHOS",
    "MobileNetV1",
    "build_model",
    "mobilenet_v1_025",
    "mobilenet_v1_050",
    "mobilenet_v1_075",
    "mobilenet_v1_100",
]
