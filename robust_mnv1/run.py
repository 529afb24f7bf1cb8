"""``python -m robust_mnv1.run experiment=NAME [key=value ...]``: the suite's one entry point.

Thin on purpose: compose and check the config, then hand it to the task it names.
Sweeps: ``-m experiment=a,b`` (add ``hydra/launcher=joblib`` or ``submitit_slurm``).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from robust_mnv1.cli import preflight, register_experiments, register_resolvers, user_errors_exit
from robust_mnv1.errors import UserError
from robust_mnv1.malloc import keep_freed_memory

TASKS = ("train", "study")


def validate(cfg: DictConfig) -> None:
    """Reject a bad config before any output directory exists or any work starts."""
    from robust_mnv1.evaluate import check_eval_order
    from robust_mnv1.models import build_model
    from robust_mnv1.zoo import resolve_device, use_cuda_graph

    if cfg.task not in TASKS:
        raise UserError(f"unknown task {cfg.task!r}; valid choices: {', '.join(TASKS)}")
    build_model(alpha=cfg.model.alpha, rho=cfg.model.rho, profile=cfg.model.profile, num_classes=10)
    t = cfg.train
    for key in ("epochs", "batch_size", "eval_every"):
        if not isinstance(t[key], int) or t[key] < 1:
            raise UserError(f"train.{key} must be an integer >= 1, got {t[key]!r}")
    if not (isinstance(t.lr, int | float) and t.lr > 0):
        raise UserError(f"train.lr must be a number > 0, got {t.lr!r}")
    if t.schedule not in ("onecycle", "cosine"):
        raise UserError(f"train.schedule must be onecycle or cosine, got {t.schedule!r}")
    for name, acfg in cfg.attack.items():
        for e in acfg.get("eps_255", []):
            if not isinstance(e, int | float) or not 0 <= e <= 255:
                raise UserError(
                    f"attack.{name}.eps_255 values must be in [0, 255] (units of 1/255), got {e!r}"
                )
    for key in ("n_examples", "n_cw"):
        n = cfg.eval[key]
        if n is not None and (not isinstance(n, int) or n < 1):
            raise UserError(f"eval.{key} must be null or an integer >= 1, got {n!r}")
    check_eval_order(cfg.eval.order)
    use_cuda_graph(cfg, resolve_device(cfg.device))
    for point in cfg.study.grid or []:
        build_model(alpha=point["alpha"], rho=point["rho"], profile=cfg.model.profile, num_classes=10)
        seed = point.get("seed", cfg.seed)
        if not isinstance(seed, int) or seed < 0:
            raise UserError(f"study.grid seeds must be integers >= 0, got {seed!r}")
    if not isinstance(cfg.study.jobs, int) or cfg.study.jobs < 1:
        raise UserError(f"study.jobs must be an integer >= 1, got {cfg.study.jobs!r}")
    if not isinstance(cfg.study.evaluate, bool):
        raise UserError(f"study.evaluate must be true or false, got {cfg.study.evaluate!r}")


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
