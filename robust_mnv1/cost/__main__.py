"""``python -m robust_mnv1.cost``: print the cost report of one MobileNet V1 variant (Hydra CLI).

``profile=true`` also times every layer kind on ``device`` (:mod:`robust_mnv1.cost.layer_timing`) and
``profile_out=DIR`` saves that profile as JSON in ``DIR``. The counting itself lives in
:mod:`robust_mnv1.cost`, which imports nothing of the CLI, so the timing can build on it.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from robust_mnv1.config.compose import preflight, user_errors_exit
from robust_mnv1.cost import report
from robust_mnv1.cost.layer_timing import kind_shares, profile_record, save_profile, time_layers
from robust_mnv1.infra.device import resolve_device
from robust_mnv1.infra.malloc import keep_freed_memory
from robust_mnv1.models.mobilenet_v1 import MobileNetV1, build_model

# The cost CLI loads no dataset: a null model.num_classes takes the profile's usual head.
DEFAULT_CLASSES = {"cifar": 10, "imagenet": 1000}


def model_from_config(cfg: DictConfig) -> MobileNetV1:
    m = cfg.model
    num_classes = m.num_classes if m.num_classes is not None else DEFAULT_CLASSES.get(m.profile, 10)
    return build_model(alpha=m.alpha, rho=m.rho, profile=m.profile, num_classes=num_classes)


@hydra.main(version_base="1.3", config_path="../conf", config_name="cost")
@user_errors_exit
def _main(cfg: DictConfig) -> None:
    """Print the cost report of the MobileNet V1 variant configured under ``model``."""
    model = model_from_config(cfg)
    print(report(model))
    if cfg.profile:
        device = resolve_device(cfg.device)
        timing = time_layers(model, device, batch=cfg.profile_batch, reps=cfg.profile_reps)
        shares = kind_shares(model, timing)
        print(
            f"\nmeasured time by layer kind on {device} (batch {cfg.profile_batch}, eval mode, "
            f"each conv unit = conv + BN + ReLU, median of {cfg.profile_reps}):"
        )
        print(shares.to_string(float_format=lambda v: f"{v:.2f}"))
        if cfg.profile_out:
            record = profile_record(model, device, shares, batch=cfg.profile_batch, reps=cfg.profile_reps)
            print(f"saved {save_profile(record, cfg.profile_out)}")


def main() -> None:
    keep_freed_memory()
    preflight(sys.argv[1:], "cost", model_from_config)
    _main()


if __name__ == "__main__":
    main()
