"""Every bad input is one line on stderr, exit code 2, before any output directory or file is touched.

The table runs through the CLI's pre-flight in-process (0.15-0.5 s a case, as busy as the CPU is); ten
representative cases also run as ``python -m robust_mnv1.run`` subprocesses (0.6-1.5 s each), which adds
what only a real launch shows: the exit code and that Hydra never created the run directory.
"""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from robust_mnv1.config import check as config_check
from robust_mnv1.config.check import validate
from robust_mnv1.config.compose import compose_config, preflight
from robust_mnv1.config.spec import model_spec
from robust_mnv1.data import load_dataset
from robust_mnv1.infra.errors import UserError

from ._mounts import tmpfs
from .conftest import REPO, run_cli

# (overrides after experiment=quickstart, text the one line must hold). {file}: an existing file;
# {tmp}: a scratch directory. results_dir and cache_dir point into a sandbox unless a case sets them.
BAD = [
    # the inputs that got past the old checks
    ("finetune.lr=-1", "finetune.lr must be a number > 0, got -1"),
    ("finetune.schedule=bogus", "finetune.schedule must be one of onecycle, cosine, got 'bogus'"),
    ("finetune.steps=0", "finetune.steps must be an integer >= 1, got 0"),
    ("attack.pgd.steps=0", "attack.pgd.steps must be an integer >= 1, got 0"),
    ("attack.pgd.restarts=0", "attack.pgd.restarts must be an integer >= 1, got 0"),
    ("attack.pgd.loss=bogus", "attack.pgd.loss must be one of ce, margin, got 'bogus'"),
    ("attack.cw.steps=0", "attack.cw.steps must be an integer >= 1, got 0"),
    ("attack.cw.lr=-1", "attack.cw.lr must be a number > 0, got -1"),
    ("attack.cw.l2_radii=[-1]", "attack.cw.l2_radii must be a non-empty list of numbers > 0, got [-1]"),
    ("eval.sanity.n=0", "eval.sanity.n must be null or an integer >= 1, got 0"),
    ("finetune.epochs=0", "finetune.epochs must be an integer >= 1, got 0"),
    ("finetune.batch_size=0", "finetune.batch_size must be an integer >= 1, got 0"),
    ("finetune.eps_255=-8", "finetune.eps_255 must be a number in (0, 255], got -8"),
    ("finetune.method=bogus", "finetune.method must be one of pgd, fgsm_rs, trades, got 'bogus'"),
    ("seed=abc", "seed must be an integer in [0, 4294967295], got 'abc'"),
    ("eval.max_clean_drop=-1", "eval.max_clean_drop must be a number in [0, 1], got -1"),
    ("eval.latency.reps=0", "eval.latency.reps must be an integer >= 1, got 0"),
    (
        "attack.fgsm.eps_255=abc",
        "attack.fgsm.eps_255 must be a non-empty list of numbers in [0, 255], got 'abc'",
    ),
    ("results_dir={file}", "is a file, not a directory; choose another results_dir"),
    ("cache_dir={file}", "is a file, not a directory; choose another cache_dir"),
    ("results_dir={file}/runs", "cannot be created"),
    ("model.alpha=100", "model.alpha must be a number in (0, 4], got 100"),
    ("eval.n_examples=361", "eval.n_examples=361 is more than the 360 test images of digits"),
    # model and data
    ("model.alpha=-1", "model.alpha must be a number in (0, 4], got -1"),
    ("model.alpha=true", "model.alpha must be"),
    ("model.rho=1.5", "model.rho must be a number in (0, 1], got 1.5"),
    ("model.rho=0", "model.rho must be a number in (0, 1], got 0"),
    ("model.rho=0.01", "model.rho must be at least"),
    ("model.profile=tiny", "model.profile must be one of cifar, imagenet, got 'tiny'"),
    ("model.num_classes=1", "model.num_classes must be null or an integer >= 2, got 1"),
    ("model.num_classes=5", "model.num_classes=5 but data.num_classes=10"),
    ("data.num_classes=5", "data.num_classes=5 but digits has num_classes=10"),
    ("data.image_size=28", "data.image_size=28 but digits has image_size=32"),
    ("data.name=mnist", "data.name must be one of cifar10, imagefolder, digits, got 'mnist'"),
    ("data=imagefolder data.root={tmp}/nowhere", "/nowhere does not exist"),
    ("data=cifar10 data.root=null", "data.root is not set for data=cifar10"),
    ("data=cifar10 data.download=maybe", "data.download must be true or false, got 'maybe'"),
    # the standard recipe
    ("train.epochs=0", "train.epochs must be an integer >= 1, got 0"),
    ("train.epochs=1.5", "train.epochs must be an integer >= 1, got 1.5"),
    ("train.batch_size=5000", "train.batch_size=5000 is more than the 1437 training images of digits"),
    ("train.lr=0", "train.lr must be a number > 0, got 0"),
    ("train.lr=nan", "train.lr must be a number > 0, got nan"),
    ("train.momentum=1", "train.momentum must be a number in [0, 1), got 1"),
    ("train.nesterov=1", "train.nesterov must be true or false, got 1"),
    ("train.weight_decay=-1", "train.weight_decay must be a number >= 0, got -1"),
    ("train.schedule=linear", "train.schedule must be one of onecycle, cosine, got 'linear'"),
    ("train.warmup_frac=1", "train.warmup_frac must be a number in [0, 1), got 1"),
    ("train.label_smoothing=-0.1", "train.label_smoothing must be a number in [0, 1), got -0.1"),
    ("train.augment=yes", "train.augment must be true or false, got 'yes'"),
    ("train.eval_every=0", "train.eval_every must be an integer >= 1, got 0"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be an integer >= 1, got 0"),
    # fine-tuning, in each of its three groups
    ("finetune.regime=standard", "finetune.regime must be a name"),
    ("finetune.step_255=0", "finetune.step_255 must be a number in (0, 255], got 0"),
    ("finetune.eps_255=300", "finetune.eps_255 must be a number in (0, 255], got 300"),
    ("finetune.method=trades", "finetune.method=trades needs finetune.beta"),
    ("finetune=trades finetune.beta=-1", "finetune.beta must be a number >= 0, got -1"),
    ("finetune=fast_at finetune.lr=-1", "finetune.lr must be a number > 0, got -1"),
    ("finetune=fast_at finetune.steps=0", "finetune.steps must be an integer >= 1, got 0"),
    ("finetune.batch_size=2000", "finetune.batch_size=2000 is more than the 1437 training images"),
    # attacks
    ("attack.fgsm.eps_255=[]", "attack.fgsm.eps_255 must be a non-empty list of numbers in [0, 255], got []"),
    ("attack.fgsm.batch_size=0", "attack.fgsm.batch_size must be an integer >= 1, got 0"),
    (
        "attack.pgd.eps_255=[-2]",
        "attack.pgd.eps_255 must be a non-empty list of numbers in [0, 255], got [-2]",
    ),
    ("attack.pgd.eps_255=[300]", "got [300]"),
    ("attack.pgd.random_start=maybe", "attack.pgd.random_start must be true or false, got 'maybe'"),
    ("attack.pgd.margin_at_255=[3]", "attack.pgd.margin_at_255 must be among attack.pgd.eps_255"),
    ("attack.pgd.restarts=2 attack.pgd.random_start=false", "needs attack.pgd.random_start=true"),
    ("attack.cw.binary_search_steps=0", "attack.cw.binary_search_steps must be an integer >= 1, got 0"),
    ("attack.cw.confidence=-1", "attack.cw.confidence must be a number >= 0, got -1"),
    ("attack.cw.initial_const=0", "attack.cw.initial_const must be a number > 0, got 0"),
    ("attack.cw.batch_size=-5", "attack.cw.batch_size must be an integer >= 1, got -5"),
    # evaluation
    ("eval.n_examples=0", "eval.n_examples must be null or an integer >= 1, got 0"),
    ("eval.n_cw=361", "eval.n_cw=361 is more than the 360 test images of digits"),
    ("eval.n_cw=abc", "eval.n_cw must be null or an integer >= 1, got 'abc'"),
    ("eval.sanity.n=361", "eval.sanity.n=361 is more than the 360 test images"),
    ("eval.order=random", "eval.order must be one of stratified, dataset, got 'random'"),
    ("eval.sanity.enabled=maybe", "eval.sanity.enabled must be true or false, got 'maybe'"),
    ("eval.latency.enabled=1", "eval.latency.enabled must be true or false, got 1"),
    ("eval.max_clean_drop=2", "eval.max_clean_drop must be a number in [0, 1], got 2"),
    ("eval.headline_eps_255=0", "eval.headline_eps_255 must be a number in (0, 255], got 0"),
    ("eval.headline_eps_255=3", "eval.headline_eps_255=3 must be in attack.fgsm.eps_255 [1, 2, 4, 8, 16]"),
    ("eval.sanity.eps_255=-1", "eval.sanity.eps_255 must be a number in (0, 255], got -1"),
    # the study's grid and workers
    ("study.grid=abc", "study.grid must be null or a list of"),
    ("study.grid=[{alpha:0.5}]", "study.grid must be null or a list of"),
    ("study.grid=[{alpha:0.5,rho:1,beta:1}]", "study.grid must be null or a list of"),
    ("study.grid=[{alpha:100,rho:1}]", "study.grid[0].alpha must be a number in (0, 4], got 100"),
    ("study.grid=[{alpha:0.5,rho:0}]", "study.grid[0].rho must be a number in (0, 1], got 0"),
    (
        "study.grid=[{alpha:0.5,rho:1,seed:-1}]",
        "study.grid[0].seed must be an integer in [0, 4294967295], got -1",
    ),
    ("study.grid=[{alpha:0.5,rho:1},{alpha:0.5,rho:1,seed:0}]", "study.grid[1] repeats study.grid[0]"),
    ("study.jobs=0", "study.jobs must be an integer >= 1, got 0"),
    ("study.jobs=1.5", "study.jobs must be an integer >= 1, got 1.5"),
    ("study.evaluate=maybe", "study.evaluate must be true or false, got 'maybe'"),
    ("study.retrain=maybe", "study.retrain must be true or false, got 'maybe'"),
    ("study.order=costliest", "study.order must be one of grid, cheapest, got 'costliest'"),
    # top level, and keys that do not exist or went missing
    ("seed=-1", "seed must be an integer in [0, 4294967295], got -1"),
    ("seed=1.5", "seed must be an integer in [0, 4294967295], got 1.5"),
    ("task=bogus", "task must be one of train, study, got 'bogus'"),
    ("device=tpu", "device must be one of auto, cpu, cuda, cuda:N, got 'tpu'"),
    ("cuda_graph=maybe", "cuda_graph must be one of auto, true, false, got 'maybe'"),
    ("threads=0", "threads must be auto or a whole number >= 1, got 0"),
    ("threads=many", "threads must be auto or a whole number >= 1, got 'many'"),
    ("cuda_graph=true", "cuda_graph=true needs a CUDA device, but device=cpu"),
    ("cache_dir=''", "cache_dir must be a non-empty string, got ''"),
    ("+model.foo=1", "unknown key model.foo; valid keys under model: alpha, num_classes, profile, rho"),
    ("+finetune.bta=6", "unknown key finetune.bta"),
    ("+attack.foo.eps_255=[1]", "unknown key attack.foo; valid keys under attack: apgd, cw, fgsm, pgd"),
    ("attack.apgd.n_target_classes=10", "attack.apgd.n_target_classes must be an integer in [1, 9], got 10"),
    ("attack.apgd.eps_255=[3]", "attack.apgd.eps_255 must be among attack.fgsm.eps_255"),
    ("~attack.fgsm", "attack.apgd attacks what fgsm left robust: add it (attack=all has both)"),
    ("attack.apgd.square.samples=-1", "attack.apgd.square.samples must be an integer >= 0, got -1"),
    ("~train.lr", "train.lr is missing; it must be a number > 0"),
]
# Ten through a real launch: the destructive and late cases, and each kind of check.
SUBPROCESS = [
    "finetune.lr=-1",
    "finetune.epochs=0",
    "attack.fgsm.eps_255=abc",
    "seed=abc",
    "eval.max_clean_drop=-1",
    "model.alpha=100",
    "eval.n_examples=361",
    "results_dir={file}",
    "cache_dir={file}",
    "data=imagefolder data.root={tmp}/nowhere",
]


def digest(*roots):
    """Every directory and file under ``roots`` with a hash of its bytes: any change shows."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


@pytest.fixture
def sandbox(tmp_path):
    """A results dir and a cache dir holding one file each, and the file the path cases point at."""
    (tmp_path / "results" / "runs").mkdir(parents=True)
    (tmp_path / "results" / "runs" / "kept.json").write_text('{"good": true}\n')
    (tmp_path / "cache" / "models" / "m").mkdir(parents=True)
    (tmp_path / "cache" / "models" / "m" / "final.safetensors").write_bytes(b"weights")
    (tmp_path / "a_file").write_text("not a directory\n")
    return tmp_path


def overrides(case, sandbox):
    args = case.replace("{file}", str(sandbox / "a_file")).replace("{tmp}", str(sandbox)).split()
    for key in ("results_dir", "cache_dir"):
        if not any(a.startswith(f"{key}=") for a in args):
            args.append(f"{key}={sandbox / key.split('_')[0]}")
    return ["experiment=quickstart", *args]


def assert_one_line(err, needle):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]


def test_the_table_is_big_and_unique():
    assert len(BAD) >= 60
    assert len({case for case, _ in BAD}) == len(BAD)
    assert set(SUBPROCESS) <= {case for case, _ in BAD}


@pytest.mark.parametrize("case, needle", BAD, ids=[case for case, _ in BAD])
def test_bad_input_is_one_line_before_any_work(case, needle, sandbox, capsys):
    before = digest(sandbox)
    with pytest.raises(SystemExit) as e:
        preflight([*overrides(case, sandbox), f"hydra.run.dir={sandbox}/out"], "config", validate)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line(err, needle)
    assert digest(sandbox) == before


@pytest.mark.parametrize("case", SUBPROCESS)
def test_bad_input_from_the_command_line(case, sandbox):
    needle = dict(BAD)[case]
    before = digest(sandbox)
    proc = run_cli(*overrides(case, sandbox), f"hydra.run.dir={sandbox}/out", cache=sandbox / "cache")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert_one_line(proc.stderr, needle)
    assert not (sandbox / "out").exists()
    assert digest(sandbox) == before


@pytest.fixture
def readonly_dir(tmp_path):
    path = tmp_path / "ro"
    if os.geteuid() != 0:
        path.mkdir()
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    with tmpfs(path, "ro,size=64k"):
        yield path


@pytest.mark.parametrize("key, sub", [("results_dir", ""), ("results_dir", "/new"), ("cache_dir", "")])
def test_read_only_directory_is_one_line(key, sub, readonly_dir, sandbox, capsys):
    before = digest(sandbox)
    with pytest.raises(SystemExit) as e:
        preflight(overrides(f"{key}={readonly_dir}{sub}", sandbox), "config", validate)
    assert e.value.code == 2
    assert_one_line(capsys.readouterr().err, f"{key}={readonly_dir}{sub} is not writable")
    assert digest(sandbox) == before


def test_the_check_builds_no_model_and_imports_no_torch(tmp_path):
    """The widest model the check allows would take minutes to build; the check must not try."""
    code = (
        "import sys\nfrom robust_mnv1.config.compose import compose_config\n"
        "from robust_mnv1.config.check import validate\n"
        f"validate(compose_config(['experiment=study', 'model.alpha=4', 'data.root={tmp_path}', "
        f"'cache_dir={tmp_path}', 'results_dir={tmp_path}']))\n"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_choices_match_the_modules_that_use_them():
    from attacks.losses import LOSSES
    from robust_mnv1.data.sources import _SOURCES
    from robust_mnv1.evaluation.protocol import ORDERS
    from robust_mnv1.models.mobilenet_v1 import PROFILES
    from robust_mnv1.training.objectives import METHODS

    assert config_check.METHODS == METHODS
    assert config_check.ORDERS == ORDERS
    assert set(config_check.PGD_LOSSES) == set(LOSSES)
    assert set(config_check.DATASETS) == set(_SOURCES)
    assert {k: v[1] for k, v in PROFILES.items()} == config_check.BASE_RESOLUTION


def test_known_digits_sizes_are_the_real_ones(cache_dir):
    cfg = compose_config(["experiment=quickstart"])
    data = load_dataset(cfg.data, cache_dir / "data")
    n_train, n_test, classes, size = config_check.KNOWN_DATA["digits"]
    assert (len(data.train), len(data.test), data.num_classes, data.image_size) == (
        n_train,
        n_test,
        classes,
        size,
    )


def test_an_evaluation_larger_than_a_read_dataset_is_refused_not_clamped(cache_dir):
    """An image folder's size is known only once read: the models' builder checks it then."""
    cfg = compose_config(["experiment=quickstart", "eval.n_cw=400"])
    data = load_dataset(cfg.data, cache_dir / "data")
    with pytest.raises(UserError, match=r"eval.n_cw=400 is more than the 360 test images"):
        model_spec(cfg, data).build()
    cfg = compose_config(["experiment=quickstart", "task=train", "eval.n_cw=400"])
    assert isinstance(model_spec(cfg, data).build(), torch.nn.Module)  # training evaluates no subset
