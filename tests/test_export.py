"""The deployed model: ONNX export (fp32, int8), the cache lookup behind it, the latency harness, the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx

from robust_mnv1.config.compose import compose_config
from robust_mnv1.data import load_dataset
from robust_mnv1.edge import export as ex
from robust_mnv1.edge import latency as lat
from robust_mnv1.edge import onnx_export as ox
from robust_mnv1.infra.errors import UserError
from robust_mnv1.models import build_model
from robust_mnv1.training.model_cache import cache_root

from ._tiny import TINY, copy_tiny
from .conftest import REPO


def random_model(rho: float, seed: int = 0) -> torch.nn.Module:
    """An untrained MobileNetV1-0.25 whose logits are of order one, so that a 1e-4 match means something.

    Fresh batch-norm statistics (mean 0, variance 1) and the 0.01-std classifier leave logits near
    1e-15; statistics from one pass over random images and a 0.1-std classifier bring them to O(1).
    """
    torch.manual_seed(seed)
    model = build_model(alpha=0.25, rho=rho)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: one pass sets the batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.rand(64, 3, 32, 32))
    torch.nn.init.normal_(model.classifier.weight, std=0.1)
    return model.eval()


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rho", [1.0, 0.875, 0.75])
def test_fp32_onnx_matches_pytorch(rho, tmp_path):
    model = random_model(rho)
    path = tmp_path / "m.onnx"
    diff = ox.export_onnx(model, 32, path, images(8), tolerance=1e-4)
    # A fresh batch, of another size (the batch axis is free), not the one the export checked itself on.
    x = images(20, seed=2)
    with torch.no_grad():
        ref = model(x).numpy()
    got = ox.onnx_logits(ox.onnx_session(path), x)
    assert ref.std() > 0.5
    assert diff <= 1e-4
    assert np.abs(got - ref).max() <= 1e-4
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Resize" not in ops
    assert ("MatMul" in ops) == (rho < 1)


@pytest.mark.parametrize(("size", "out"), [(32, 28), (32, 20), (32, 40), (30, 7)])
def test_separable_resize_is_the_models_resize(size, out):
    x = images(4)[..., :size, :size]
    resize = ox.SeparableResize((size, size), (out, out))
    ref = F.interpolate(x, size=(out, out), mode="bilinear", align_corners=False, antialias=out < size)
    assert (resize(x) - ref).abs().max() <= 1e-6


def test_export_refuses_a_file_that_differs_from_pytorch(tmp_path, monkeypatch):
    torch_logits = ox.torch_logits
    monkeypatch.setattr(ox, "torch_logits", lambda m, x: torch_logits(m, x) + 1.0)
    with pytest.raises(RuntimeError, match="differs from PyTorch by 1"):
        ox.export_onnx(random_model(1.0), 32, tmp_path / "m.onnx", images(4), tolerance=1e-4)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("quant_format", "per_channel"), [("qdq", True), ("qoperator", False)])
def test_int8_of_an_untrained_model_runs(quant_format, per_channel, tmp_path):
    model = random_model(0.75)
    fp32 = tmp_path / "m.onnx"
    ox.export_onnx(model, 32, fp32, images(4), tolerance=1e-4)
    int8 = ox.quantize_int8(
        fp32, tmp_path / "m.int8.onnx", images(32), quant_format=quant_format, per_channel=per_channel
    )
    logits = ox.onnx_logits(ox.onnx_session(int8), images(6, seed=3))
    assert logits.shape == (6, 10) and np.isfinite(logits).all()
    graph = onnx.load(str(int8)).graph
    ops = {node.op_type for node in graph.node}
    assert ("QLinearConv" in ops) == (quant_format == "qoperator")
    # The resize stays fp32: no MatMul reads a dequantized tensor.
    dequantized = {o for node in graph.node if node.op_type == "DequantizeLinear" for o in node.output}
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    assert len(matmuls) == 2 and not any(i in dequantized for n in matmuls for i in n.input)
    if quant_format == "qdq":
        weights = {i.name: i for i in graph.initializer}
        conv_dq = [
            n for n in graph.node if n.op_type == "DequantizeLinear" and weights.get(n.input[0]) is not None
        ]
        assert any(len(weights[n.input[1]].dims) == 1 and weights[n.input[1]].dims[0] > 1 for n in conv_dq)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models_cache):
    """A cache of its own holding the tiny digits model and its PGD-AT fine-tune, both from the model
    cache's training."""
    cache = tmp_path_factory.mktemp("cache")
    copy_tiny(tiny_models_cache, cache)
    cfg = compose_config([*TINY, f"cache_dir={cache}"], "export")
    dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
    return cfg, dataset


@pytest.mark.parametrize("regime", ["standard", "pgd-at"])
def test_cached_model_loads_what_the_zoo_trained(trained, regime):
    cfg, dataset = trained
    entries = sorted((cache_root(cfg) / "models").iterdir())
    model, meta, entry = ex.cached_model(
        cfg, dataset, torch.device("cpu"), regime=regime, train_missing=False
    )
    assert not meta["trained"] and meta["regime"] == regime
    assert entry in entries and entry.name.startswith(f"{model.name}-{regime}-")
    assert sorted((cache_root(cfg) / "models").iterdir()) == entries


def test_a_model_the_cache_lacks_is_an_error_not_a_training_run(trained):
    cfg, dataset = trained
    other = compose_config([*TINY, f"cache_dir={cfg.cache_dir}", "seed=1"], "export")
    entries = sorted((cache_root(cfg) / "models").iterdir())
    with pytest.raises(UserError, match=r"export\.train_missing=true"):
        ex.cached_model(other, dataset, torch.device("cpu"), regime="standard", train_missing=False)
    assert sorted((cache_root(cfg) / "models").iterdir()) == entries


def test_int8_agrees_with_fp32_on_a_trained_model(trained, tmp_path):
    cfg, dataset = trained
    model, meta, entry = ex.cached_model(
        cfg, dataset, torch.device("cpu"), regime="standard", train_missing=False
    )
    source = ex.model_source(model, meta, "standard", entry)
    report = ex.export_files(model, dataset, tmp_path, entry.name, cfg.export, source)
    assert report == json.loads((tmp_path / f"{entry.name}.export.json").read_text())
    acc = report["test_accuracy"]
    assert acc["images"] == len(dataset.test)
    assert acc["pytorch"] > 0.7 and acc["onnx fp32"] == acc["pytorch"]
    assert report["fp32"]["max_abs_logit_diff_vs_pytorch"] <= 1e-4
    assert report["int8"]["top1_agreement_with_fp32"] >= 0.95
    assert abs(acc["onnx int8"] - acc["onnx fp32"]) <= 0.03
    props = {p.key: p.value for p in onnx.load(str(tmp_path / report["int8"]["file"])).metadata_props}
    assert props["cache_entry"] == entry.name and props["classes"].split(",") == list(dataset.classes)


def test_compare_latency_interleaves_and_counts():
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    result = lat.compare_latency(fns, reps=7, warmup=2, blocks=3)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    # Blocks of 3, 2 and 2 calls, each block starting one engine further on.
    assert "".join(calls[6:]) == "aaabbbccc" + "bbccaa" + "ccaabb"
    assert {k: len(v.times_ms) for k, v in result.items()} == {"a": 7, "b": 7, "c": 7}
    summary = result["a"].summary()
    assert summary["p10_ms"] <= summary["median_ms"] <= summary["p90_ms"] and summary["n"] == 7


def test_edge_latency_times_every_engine_on_one_thread(tmp_path):
    model = random_model(0.75)
    ox.export_onnx(model, 32, tmp_path / "m.onnx", images(4), tolerance=1e-4)
    threads = torch.get_num_threads()
    result = lat.edge_latency(model, 32, {"fp32": tmp_path / "m.onnx"}, reps=10, warmup=2, blocks=2)
    assert set(result) == {"pytorch eager", "fp32"}
    assert all(len(v.times_ms) == 10 and min(v.times_ms) > 0 for v in result.values())
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("export.regime=trades", "export.regime='trades' is not a regime of this config"),
        ("export.int8.format=int4", "export.int8.format must be one of qdq, qoperator"),
        ("export.opset=9", "export.opset must be an integer in [13, 21]"),
        ("export.tolerance=0", "export.tolerance must be a number > 0"),
        ("+export.int8.bits=4", "unknown key export.int8.bits"),
        ("model.alpha=-1", "model.alpha must be"),
    ],
)
def test_bad_config_is_one_user_error(override, needle):
    with pytest.raises(UserError) as err:
        ex.check_config(compose_config([override], "export"))
    assert needle in str(err.value) and "\n" not in str(err.value)


def run_export(*args, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "", "ROBUST_MNV1_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "robust_mnv1.export", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export.int8.format=int4"], "export.int8.format must be one of qdq, qoperator"),
        (["model.alpha=0.5"], "no trained standard model in the cache at"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    proc = run_export(*args, f"export.out_dir={tmp_path / 'out'}", cache=tmp_path / "cache")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and needle in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_exports_a_cached_model_next_to_it(trained):
    cfg, _ = trained
    proc = run_export(*TINY, "export.regime=pgd-at", cache=cfg.cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "pgd-at on digits" in proc.stdout and "(from the cache)" in proc.stdout
    (entry,) = (cache_root(cfg) / "models").glob("MobileNetV1-0.25-32px-pgd-at-*")
    written = {p.name for p in entry.iterdir()} - {".lock", "final.safetensors", "final.safetensors.json"}
    assert written == {f"{entry.name}{suffix}" for suffix in (".onnx", ".int8.onnx", ".export.json")}
