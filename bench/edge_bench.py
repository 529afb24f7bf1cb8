"""Batch-1 CPU latency of the deployed model: eager PyTorch, onnxruntime fp32 and onnxruntime int8.

The model comes from the model cache, selected with the export CLI's overrides (``experiment``,
``model.alpha``, ``model.rho``, ``seed``, ``export.regime``, see ``python -m robust_mnv1.export``); it is
exported and quantized into a temporary directory (or ``--out``) exactly as that CLI does, then timed by
:func:`robust_mnv1.edge.latency.edge_latency`: one image, batch 1, one thread for PyTorch and for
onnxruntime's CPU execution provider, an untimed warm-up, then ``--reps`` single calls per engine
interleaved in blocks, so that a change in the machine's load falls on every engine. The table gives
the median and the spread (p10, p90, interquartile range) of those calls and each engine's speed-up
over eager PyTorch, measured in the same run. Run from the repository root:

    OMP_NUM_THREADS=1 python bench/edge_bench.py experiment=study model.alpha=0.25
    OMP_NUM_THREADS=1 python bench/edge_bench.py experiment=study model.alpha=1.0 model.rho=0.875
    python bench/edge_bench.py --quick   # a tiny digits model trained into a temporary cache: a smoke test
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
from pathlib import Path

import pandas as pd
import torch
from _common import print_table

from robust_mnv1.config.compose import compose_config
from robust_mnv1.data import load_dataset
from robust_mnv1.edge.export import cached_model, check_config, export_files, model_source
from robust_mnv1.edge.latency import edge_latency
from robust_mnv1.infra.envinfo import cpu_name
from robust_mnv1.infra.errors import UserError
from robust_mnv1.infra.malloc import keep_freed_memory
from robust_mnv1.training.model_cache import cache_root

QUICK = [
    "model.alpha=0.25",
    "train.epochs=1",
    "export.train_missing=true",
    "export.check_images=32",
    "export.eval_images=64",
    "export.int8.calibration_images=64",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="export config overrides, e.g. experiment=study")
    parser.add_argument("--reps", type=int, default=1000, help="timed calls per engine (default 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per engine first (default 50)")
    parser.add_argument("--blocks", type=int, default=10, help="interleaved rounds (default 10)")
    # Edge latency is a CPU measurement; the flag keeps the benches' common command line.
    parser.add_argument("--device", choices=["cpu"], default="cpu", help="only cpu: what edge devices run")
    parser.add_argument(
        "--out", type=Path, default=None, help="keep the ONNX files here (default: a temp dir)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="train a tiny digits model into a temp cache; few calls"
    )
    args = parser.parse_args()
    if args.reps < args.blocks:
        parser.error(f"--reps must be at least --blocks ({args.blocks}), got {args.reps}")
    keep_freed_memory()
    with tempfile.TemporaryDirectory(prefix="robust-mnv1-edge-") as scratch:
        overrides = args.overrides
        reps, warmup = args.reps, args.warmup
        if args.quick:
            overrides = [*QUICK, f"cache_dir={scratch}/cache", *overrides]
            reps, warmup = min(reps, 50), min(warmup, 5)
        try:
            cfg = compose_config(overrides, "export")
            check_config(cfg)
            dataset = load_dataset(cfg.data, cache_root(cfg) / "data")
            ecfg = cfg.export
            model, meta, entry = cached_model(
                cfg, dataset, torch.device("cpu"), regime=ecfg.regime, train_missing=ecfg.train_missing
            )
        except UserError as err:
            parser.error(str(err))
        out = args.out or Path(scratch) / "onnx"
        report = export_files(
            model, dataset, out, entry.name, ecfg, model_source(model, meta, ecfg.regime, entry)
        )
        files = {"onnxruntime fp32": out / report["fp32"]["file"]}
        if "int8" in report:
            files["onnxruntime int8"] = out / report["int8"]["file"]
        load = os.getloadavg()[0]
        latency = edge_latency(
            model, dataset.image_size, files, reps=reps, warmup=warmup, blocks=args.blocks, seed=cfg.seed
        )
        sizes = {"pytorch eager": None, **{k: p.stat().st_size / 1e3 for k, p in files.items()}}
    accuracy = report["test_accuracy"]
    keys = {"pytorch eager": "pytorch", "onnxruntime fp32": "onnx fp32", "onnxruntime int8": "onnx int8"}
    eager, fp32 = latency["pytorch eager"].median, latency["onnxruntime fp32"].median
    rows = []
    for name, lat in latency.items():
        s = lat.summary()
        rows.append(
            {
                "engine": name,
                "median ms": round(s["median_ms"], 3),
                "p10 ms": round(s["p10_ms"], 3),
                "p90 ms": round(s["p90_ms"], 3),
                "IQR ms": round(s["iqr_ms"], 3),
                "speed-up vs eager": round(eager / s["median_ms"], 2),
                "speed-up vs fp32 ONNX": round(fp32 / s["median_ms"], 2),
                "file kB": None if sizes[name] is None else round(sizes[name]),
                "test acc": round(accuracy[keys[name]], 4),
            }
        )
    q = report.get("int8")
    int8 = (
        f"int8: {q['format']}, {'per-channel' if q['per_channel'] else 'per-tensor'} weights, "
        f"{q['calibration']['method']} calibration on {q['calibration']['images']} training images"
        if q
        else "int8: off"
    )
    print_table(
        f"Batch-1 latency of {model.name} {ecfg.regime} on {cpu_name()}, one thread, "
        f"{datetime.date.today().isoformat()}",
        pd.DataFrame(rows),
        [
            f"{dataset.label}, cache entry {entry.name}, input [1, 3, {dataset.image_size}, "
            f"{dataset.image_size}]",
            f"torch {torch.__version__}, onnxruntime {report['versions']['onnxruntime']} (CPU execution "
            f"provider, intra_op_num_threads=1); {warmup} warm-up calls, then {reps} timed calls per "
            f"engine in {args.blocks} interleaved blocks",
            f"speed-up vs X: X's median / this engine's median, both from this run; load average "
            f"{load:.1f} on {os.cpu_count()} cores before timing",
            f"max abs logit difference fp32 ONNX vs PyTorch: "
            f"{report['fp32']['max_abs_logit_diff_vs_pytorch']:.2e} on {report['fp32']['diff_images']} "
            f"test images; test acc on {accuracy['images']} test images; {int8}",
        ],
    )


if __name__ == "__main__":
    main()
