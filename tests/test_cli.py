"""The command line: one-line errors with the valid choices, no tracebacks, collision-free run dirs."""

import pytest

from robust_mnv1.config.check import validate
from robust_mnv1.config.compose import compose_config, experiment_names

from .conftest import run_cli as run

# A run that passes the check probes its cache_dir: never the user's own cache.
pytestmark = pytest.mark.usefixtures("cache_dir")


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_every_experiment_composes_and_passes_the_check(tmp_path):
    names = experiment_names()
    assert {"quickstart", "smoke", "study", "pgd_alpha050", "train_rho0625"} <= set(names)
    for name in names:
        cfg = compose_config([f"experiment={name}", f"cache_dir={tmp_path}", f"results_dir={tmp_path}"])
        assert cfg.task in ("train", "study")
        if cfg.data.name == "imagefolder":
            cfg.data.root = str(tmp_path)  # the shared archive need not be on this machine
        validate(cfg)


def test_experiment_overrides_defaults():
    cfg = compose_config(["experiment=train_rho075"])
    assert (cfg.model.alpha, cfg.model.rho, cfg.data.name) == (1.0, 0.75, "cifar10")
    cfg = compose_config(["experiment=pgd_alpha025"])
    assert list(cfg.attack) == ["pgd"] and cfg.model.alpha == 0.25
    study = compose_config(["experiment=study"])
    assert sorted(study.attack) == ["apgd", "cw", "fgsm", "pgd"]
    # The study's answer is on the shared JPEG copy, with the batch sizes its records were hashed with.
    assert study.data.name == "imagefolder" and "cifar10-jpeg" in study.data.root
    assert [study.attack[a].batch_size for a in ("fgsm", "pgd", "cw")] == [500, 500, 1000]


def test_unknown_experiment_lists_choices(tmp_path):
    proc = run("experiment=nope", f"hydra.run.dir={tmp_path}/o")
    assert_one_line_error(proc, "unknown experiment 'nope'", "quickstart", "pgd_alpha050")
    assert not (tmp_path / "o").exists()


def test_unknown_group_option_lists_choices():
    assert_one_line_error(run("data=mnist"), "unknown data 'mnist'", "cifar10", "digits", "imagefolder")


def test_bad_key_lists_valid_keys():
    assert_one_line_error(run("model.alpah=0.5"), "model.alpah", "alpha", "rho")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.alpha=-1", "alpha"),
        ("model.rho=1.5", "rho"),
        ("model.rho=0", "rho"),
        ("attack.pgd.eps_255=[-2]", "eps"),
        ("eval.order=random", "eval.order"),
    ],
)
def test_bad_values_are_one_line_errors(override, needle, tmp_path):
    proc = run("experiment=quickstart", override, f"hydra.run.dir={tmp_path}/o")
    assert proc.returncode == 2
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "o").exists()


def test_bad_value_inside_a_sweep_is_caught():
    assert_one_line_error(run("-m", "experiment=quickstart", "model.alpha=0.5,-1"), "alpha")


def test_missing_data_is_one_line_error(tmp_path):
    proc = run(
        "data=imagefolder",
        f"data.root={tmp_path}/nowhere",
        f"hydra.run.dir={tmp_path}/o",
        cache=tmp_path / "c",
    )
    assert_one_line_error(proc, str(tmp_path / "nowhere"))


def test_run_dirs_never_collide():
    dirs = set()
    for _ in range(2):
        proc = run("--cfg", "hydra", "--resolve", "--package", "hydra.run")
        assert proc.returncode == 0, proc.stderr
        dirs.add(proc.stdout.strip())
    assert len(dirs) == 2
