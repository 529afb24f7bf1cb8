"""Deployed robustness: the record of ONNX fp32/int8 clean accuracy, transferred PGD and latency, its
validation, the paired test behind its verdicts, and the CLI's one-line errors."""

import copy
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from scipy.stats import binomtest

from robust_mnv1.config.compose import compose_config
from robust_mnv1.config.spec import attack_spec
from robust_mnv1.data import load_dataset
from robust_mnv1.edge import deployed as dp
from robust_mnv1.edge import deployed_report
from robust_mnv1.edge.crafting import correct_on, craft_pgd
from robust_mnv1.edge.deployed_records import (
    ENGINES,
    VERDICTS,
    paired_comparison,
    read_records,
    validate_deployed_record,
)
from robust_mnv1.evaluation.protocol import eval_subset, run_pgd
from robust_mnv1.infra.errors import UserError
from robust_mnv1.records.schema import RecordError, decode_mask, encode_mask
from robust_mnv1.records.store import dumps_record
from robust_mnv1.report.paired import mcnemar_exact
from robust_mnv1.training.model_cache import cache_root, finetuned_model, standard_model

from ._tiny import TINY, copy_tiny
from .conftest import REPO

# A short PGD and few images, calls and calibration images: the whole record in a few seconds.
FAST = [
    "attack.pgd.eps_255=[2,8]",
    "attack.pgd.steps=5",
    "deployed.n=120",
    "deployed.latency.reps=20",
    "deployed.latency.warmup=2",
    "deployed.latency.blocks=2",
    "export.check_images=64",
    "export.int8.calibration_images=100",
]


def tiny_models(tmp_path_factory, tiny_models_cache, config_name, overrides, check):
    """The config ``config_name`` for the tiny digits model (tests/_tiny.py), checked by ``check``, with a
    cache of its own holding that model and its PGD-AT fine-tune, and an empty results directory;
    returns the config and the dataset."""
    cache, results = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("results")
    copy_tiny(tiny_models_cache, cache)
    cfg = compose_config([*TINY, *overrides, f"cache_dir={cache}", f"results_dir={results}"], config_name)
    check(cfg)
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    # The copy holds exactly the models this config names: a changed recipe would train here.
    model, meta = standard_model(cfg, dataset, torch.device("cpu"))
    finetuned_model(cfg, dataset, torch.device("cpu"), model, meta)
    return cfg, dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models_cache):
    """The deployed-robustness record of the tiny standard model."""
    cfg, dataset = tiny_models(tmp_path_factory, tiny_models_cache, "deployed", FAST, dp.check_config)
    path, record = dp.run_deployed(cfg)
    return cfg, dataset, path, record


def test_the_record_is_what_was_written_and_valid(run):
    cfg, _, path, record = run
    assert path == Path(cfg.results_dir) / "deployed" / f"{record['run_id']}.json"
    text = path.read_text()
    assert text == dumps_record(record) and "NaN" not in text and "Infinity" not in text
    stored = json.loads(text)
    validate_deployed_record(stored)
    assert read_records(path.parent, validate_deployed_record) == [stored]
    assert record["model"]["regime"] == "standard" and record["model"]["weights"]
    assert record["env"]["git_commit"] is None or record["env"]["git_commit"]
    assert record["latency"]["cpu"] and record["env"]["onnxruntime"]


def test_export_round_trip_files_are_the_ones_recorded(run):
    cfg, _, _, record = run
    (entry,) = (cache_root(cfg) / "models").glob("MobileNetV1-0.25-32px-standard-*")
    assert record["model"]["cache_entry"] == entry.name
    for fmt in ("fp32", "int8"):
        f = record["onnx"][fmt]
        data = (entry / f["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
    report = json.loads((entry / f"{entry.name}.export.json").read_text())
    assert report["test_accuracy"]["images"] == record["data"]["n_test"]
    assert record["onnx"]["fp32"]["max_abs_logit_diff_vs_pytorch"] <= 1e-4
    for engine, key in zip(ENGINES, ("pytorch", "onnx fp32", "onnx int8"), strict=True):
        assert record["clean"][engine]["accuracy"] == pytest.approx(report["test_accuracy"][key])


def test_masks_agree_with_counts_and_the_drop(run):
    _, dataset, _, record = run
    clean = record["clean"]
    masks = {e: decode_mask(clean[e]["correct_mask"], len(dataset.test)) for e in ENGINES}
    for e in ENGINES:
        assert masks[e].sum() == clean[e]["correct"] and clean[e]["n"] == len(dataset.test)
    # PyTorch and its fp32 file make the same predictions; int8 a few different ones.
    assert (masks["pytorch fp32"] == masks["onnx fp32"]).all()
    assert clean["int8_drop"] == pytest.approx(masks["onnx int8"].mean() - masks["onnx fp32"].mean())
    transfer = record["transfer"]
    assert transfer["n"] == 120 and [e["eps_255"] for e in transfer["eps"]] == [2, 8]
    for e in transfer["eps"]:
        robust = {k: decode_mask(e[k]["robust_mask"], 120) for k in ENGINES}
        assert all(robust[k].sum() == e[k]["robust"] for k in ENGINES)
        # Examples are crafted on PyTorch fp32, so its verdict is the fp32 file's, image by image.
        assert (robust["pytorch fp32"] == robust["onnx fp32"]).all()
        c = e["int8_vs_fp32"]
        assert c["only_other"] == int((robust["onnx int8"] & ~robust["onnx fp32"]).sum())
        assert c["only_reference"] == int((robust["onnx fp32"] & ~robust["onnx int8"]).sum())
    # A larger ball never leaves more images robust than a smaller one (the protocol's eps walk).
    small, large = (decode_mask(e["pytorch fp32"]["robust_mask"], 120) for e in transfer["eps"])
    assert not (large & ~small).any()


def test_early_exit_examples_are_the_protocols_pgd(run):
    cfg, dataset, _, _ = run
    model, _ = standard_model(cfg, dataset, torch.device("cpu"))
    x, y = eval_subset(dataset.test, 120, torch.device("cpu"))
    # The protocol's PGD without its margin-loss stage, as craft_pgd runs it.
    pgd = dataclasses.replace(attack_spec("pgd", cfg.attack.pgd), margin_at_255=())
    ours = craft_pgd(model, x, y, pgd, [2, 8], cfg.seed, early_exit=True)
    for entry in run_pgd(model, x, y, pgd, cfg.seed):
        x_adv, robust = ours[entry.eps_255]
        assert entry.robust_mask == encode_mask(robust)
        assert (correct_on(model, x_adv, y, 512) == robust).all()


def test_last_iterate_examples_stay_in_the_ball_and_fool_at_least_as_often(run):
    cfg, dataset, _, record = run
    model, _ = standard_model(cfg, dataset, torch.device("cpu"))
    x, y = eval_subset(dataset.test, 120, torch.device("cpu"))
    (x8, robust8) = craft_pgd(
        model, x, y, attack_spec("pgd", cfg.attack.pgd), [8], cfg.seed, early_exit=False
    )[8]
    assert (x8 - x).abs().max() <= 8 / 255 + 1e-6 and x8.min() >= 0 and x8.max() <= 1
    # The record's white-box mask is these examples' (same seed, same steps).
    assert encode_mask(robust8) == record["transfer"]["eps"][1]["pytorch fp32"]["robust_mask"]
    # Pushed past fp32's boundary, they fool int8 about as often as fp32; the protocol's first
    # adversarial iterates, just across it, fool int8 far less often.
    assert (
        record["transfer"]["eps"][1]["onnx int8"]["robust"]
        <= record["transfer"]["eps"][1]["onnx fp32"]["robust"] + 6
    )


def test_mcnemar_is_scipys_exact_binomial_test():
    rng = np.random.default_rng(0)
    for n, p in [(1, 0.5), (10, 0.5), (120, 0.9), (1000, 0.6), (1000, 0.99)]:
        a, b = rng.random(n) < p, rng.random(n) < p
        only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
        expected = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12)
        assert mcnemar_exact(b, a) == pytest.approx(expected, rel=1e-12)


def test_record_p_values_are_scipys(run):
    for e in run[3]["transfer"]["eps"]:
        c = e["int8_vs_fp32"]
        k = c["only_reference"] + c["only_other"]
        expected = binomtest(c["only_other"], k, 0.5).pvalue if k else 1.0
        assert c["mcnemar_p"] == pytest.approx(expected, rel=1e-12)


def _pair(n, both, only_ref, only_other):
    ref = np.zeros(n, bool)
    other = np.zeros(n, bool)
    ref[: both + only_ref] = True
    other[:both] = True
    other[both + only_ref : both + only_ref + only_other] = True
    return ref, other


@pytest.mark.parametrize(
    ("n", "both", "only_ref", "only_other", "verdict"),
    [
        (1000, 300, 0, 0, "keeps"),  # identical on 1000 images
        (1000, 300, 3, 2, "keeps"),  # a few discordant images, the interval well within ±1 pp
        (1000, 300, 40, 5, "loses"),
        (1000, 300, 5, 40, "gains"),
        (100, 30, 4, 1, "no detectable difference"),  # too few images to tell either way
    ],
)
def test_verdicts(n, both, only_ref, only_other, verdict):
    ref, other = _pair(n, both, only_ref, only_other)
    c = paired_comparison(ref, other, margin=0.01, what="robustness at 8/255")
    assert c["verdict"] == verdict
    assert (c["mcnemar_p"] < 0.05) == (verdict in ("loses", "gains"))
    head = "no detectable difference in" if verdict.startswith("no") else f"int8 {verdict}"
    assert c["statement"].startswith(f"{head} robustness at 8/255 (") and "\n" not in c["statement"]


def _corrupt(record, edit):
    bad = copy.deepcopy(record)
    edit(bad)
    return bad


def _flip_first_bit(e):
    mask = decode_mask(e["robust_mask"], e["n"])
    mask[0] = ~mask[0]
    e["robust_mask"] = encode_mask(mask)


def _swap_verdict(comparison):
    # Any verdict but the true one: which one is true depends on the platform's int8 kernels.
    comparison["verdict"] = next(v for v in VERDICTS if v != comparison["verdict"])


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r.update(schema_version=2), "schema_version"),
        (lambda r: r["transfer"]["eps"][1]["onnx int8"].update(robust=0), "transfer.eps[1].onnx int8.robust"),
        (lambda r: _flip_first_bit(r["transfer"]["eps"][0]["onnx int8"]), "transfer.eps[0].onnx int8.robust"),
        (lambda r: r["transfer"]["eps"][0]["onnx fp32"].update(robust_mask="!!"), "robust_mask"),
        (lambda r: _swap_verdict(r["transfer"]["eps"][0]["int8_vs_fp32"]), "int8_vs_fp32.verdict"),
        (lambda r: r["transfer"]["eps"][0]["int8_vs_fp32"].update(mcnemar_p=0.5), "int8_vs_fp32.mcnemar_p"),
        (lambda r: r["clean"].update(int8_drop=0.5), "clean.int8_drop"),
        (lambda r: r["config"]["deployed"].update(n=7), "config_hash"),
        (lambda r: r["model"].update(weights="xyz"), "model.weights"),
        (lambda r: r.pop("latency"), "latency"),
        (lambda r: r["latency"].update(threads=2), "latency.threads"),
    ],
)
def test_a_corrupted_record_is_refused_naming_the_field(run, edit, field):
    with pytest.raises(RecordError) as err:
        validate_deployed_record(_corrupt(run[3], edit))
    message = str(err.value)
    assert message.startswith("deployed-robustness record") and field in message and "\n" not in message


def test_the_report_refuses_a_corrupted_file_in_one_line(run, tmp_path, capsys):
    record = run[3]
    (tmp_path / "deployed").mkdir()
    bad = _corrupt(record, lambda r: r["clean"]["onnx int8"].update(correct=1))
    (tmp_path / "deployed" / f"{record['run_id']}.json").write_text(dumps_record(bad))
    assert deployed_report.main(["--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: invalid record ") and "clean.onnx int8.correct" in err and err.count("\n") == 1
    )
    assert not (tmp_path / "deployed.md").exists()
    with pytest.raises(UserError, match="its run_id is"):
        (tmp_path / "deployed" / f"{record['run_id']}.json").rename(tmp_path / "deployed" / "other.json")
        (tmp_path / "deployed" / "other.json").write_text(dumps_record(record))
        deployed_report.generate(tmp_path)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("deployed.n=361", "deployed.n=361 is more than the 360 test images of digits"),
        ("deployed.latency.reps=1", "deployed.latency.reps=1 must be at least deployed.latency.blocks=10"),
        ("export.int8.enabled=false", "leaves no int8 model"),
        ("export.eval_images=100", "export.eval_images=100"),
        ("attack=fgsm", "the attack group has no pgd"),
        ("deployed.equivalence_pp=0", "deployed.equivalence_pp must be a number in (0, 100]"),
        ("+deployed.alpha=0.01", "unknown key deployed.alpha"),
        ("model.alpha=-1", "model.alpha must be"),
    ],
)
def test_bad_config_is_one_user_error(override, needle):
    cfg = compose_config(["deployed.n=120", override], "deployed")
    with pytest.raises(UserError) as err:
        dp.check_config(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["model.alpha=100"], "model.alpha must be a number in (0, 4], got 100"),
        (["model.alpha=0.5"], "no trained standard model in the cache at"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2_before_any_work(args, needle, tmp_path):
    assert_refused("robust_mnv1.deployed", [*FAST, *args], needle, tmp_path)


def assert_refused(module: str, args: list[str], needle: str, tmp_path: Path) -> None:
    """``python -m module args`` with an empty cache: one ``error:`` line holding ``needle``, exit
    status 2, and no results directory nor trained model left behind."""
    results = tmp_path / "results"
    env = {**os.environ, "HYDRA_FULL_ERROR": "", "ROBUST_MNV1_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", module, f"results_dir={results}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and needle in proc.stderr
    assert not results.exists() and not (tmp_path / "cache" / "models").exists()


def test_deployed_md_is_regenerated_byte_identically(run):
    cfg, _, _, record = run
    results = Path(cfg.results_dir)
    deployed_report.generate(results)
    first = (results / "deployed.md").read_bytes()
    assert deployed_report.generate(results) == [results / "deployed.md"]
    assert (results / "deployed.md").read_bytes() == first
    rows = [line for line in first.decode().splitlines() if line.startswith("| MobileNetV1-0.25-32px |")]
    (row,) = rows
    eps8 = record["transfer"]["eps"][1]
    assert f"| {100 * eps8['onnx int8']['accuracy']:.1f} [" in row and eps8["int8_vs_fp32"]["verdict"] in row
    assert f"{record['latency']['engines']['onnx int8']['median_ms']:.3f}" in row
