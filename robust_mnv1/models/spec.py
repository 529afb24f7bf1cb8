"""A MobileNet V1 variant as plain values: what the suite needs to name a model, and to build it."""

from __future__ import annotations

from dataclasses import dataclass

from robust_mnv1.models.mobilenet_v1 import MobileNetV1, build_model, input_resolution, model_name


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Width and resolution multipliers, profile and classes of one model.

    Its :attr:`name` is the built model's, computed without building it (a study unit whose
    records are all done never builds its models at all).
    """

    alpha: float
    rho: float
    profile: str
    num_classes: int

    @property
    def resolution(self) -> int:
        """Pixels per side that the model's stem sees."""
        return input_resolution(self.profile, self.rho)

    @property
    def name(self) -> str:
        """``MobileNetV1-<alpha>-<resolution>px``, as :attr:`MobileNetV1.name`."""
        return model_name(self.alpha, self.resolution)

    def build(self) -> MobileNetV1:
        """A freshly initialised model (the caller seeds torch first when the weights must repeat)."""
        return build_model(alpha=self.alpha, rho=self.rho, profile=self.profile, num_classes=self.num_classes)
