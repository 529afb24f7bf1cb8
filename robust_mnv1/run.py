"""``python -m robust_mnv1.run experiment=NAME [key=value ...]``: the suite's one entry point.

Thin on purpose: compose and check the config, then hand it to the task it names.
Sweeps: ``-m experiment=a,b`` (add ``hydra/launcher=joblib`` or ``submitit_slurm``).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from robust_mnv1.config.check import validate
from robust_mnv1.config.compose import preflight, register_experiments, register_resolvers, user_errors_exit
from robust_mnv1.infra.malloc import keep_freed_memory


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@user_errors_exit
def _main(cfg: DictConfig) -> float | None:
    from robust_mnv1.tasks import run_task

    return run_task(cfg)


def main() -> None:
    keep_freed_memory()
    register_experiments()
    register_resolvers()
    preflight(sys.argv[1:], "config", validate)
    _main()


if __name__ == "__main__":
    main()
