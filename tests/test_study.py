"""The study end to end on digits: records, leaderboard, model cache, resume, parallel sweeps."""

import re
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from robust_mnv1.config.compose import compose_config
from robust_mnv1.data import load_dataset
from robust_mnv1.evaluation.grid import cheapest_first, unit_configs
from robust_mnv1.evaluation.progress import code_digest
from robust_mnv1.infra.atomic import atomic_write_json
from robust_mnv1.records.schema import decode_mask, encode_mask
from robust_mnv1.records.store import dumps_record, load_records, parse_record
from robust_mnv1.records.validate import validate_record
from robust_mnv1.training.model_cache import cache_root, finetuned_model, standard_model

from .conftest import run_cli

# A cut-down smoke: the pipeline is the same, the budgets smaller, so CI pays seconds not minutes.
FAST = [
    "experiment=smoke",
    "train.epochs=3",
    "finetune.epochs=1",
    "eval.n_examples=48",
    "eval.n_cw=16",
    "eval.sanity.n=16",
    "attack.cw.steps=10",
    "attack.cw.binary_search_steps=2",
    "attack.apgd.ce_steps=5",
    "attack.apgd.targeted_steps=5",
    "attack.apgd.square.queries=20",
    "eval.latency.reps=3",
]


def run(args, cache, timeout=600):
    proc = run_cli(*args, cache=cache, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One cut-down smoke study; later tests reuse its model cache."""
    root = tmp_path_factory.mktemp("smoke")
    proc = run([*FAST, f"results_dir={root}/results", f"hydra.run.dir={root}/out"], root / "cache")
    return root, proc


def test_smoke_writes_records_and_leaderboard(smoke):
    root, _ = smoke
    records = load_records(root / "results" / "runs")
    # 2 models x 2 regimes x 4 attack families
    assert len(records) == 16
    for r in records:
        validate_record(r.to_dict())
    assert {r.regime for r in records} == {"standard", "pgd-at"}
    assert {r.attack for r in records} == {"fgsm", "pgd", "apgd", "cw"}
    for apgd in (r for r in records if r.attack == "apgd"):
        # APGD attacks exactly what FGSM and PGD left robust at 8/255, so its mask is the worst case.
        (entry,) = apgd.eps_results
        twins = [t for t in records if t.run_id.split("__")[:2] == apgd.run_id.split("__")[:2]]
        before = [e for t in twins if t.attack != "apgd" for e in t.eps_results if e.eps_255 == 8]
        survived = np.logical_and.reduce([e.mask() for e in before])
        assert entry.attacked == survived.sum() >= entry.robust
        assert not (entry.mask() & ~survived).any()
    pgd = next(r for r in records if r.attack == "pgd")
    assert [e.eps_255 for e in pgd.eps_results] == [2, 8]
    assert pgd.eps_results[1].loss == "ce+margin"
    for cw in (r.cw for r in records if r.attack == "cw"):
        assert len(cw.l2_per_image) == cw.n_clean_correct > 0
    assert pgd.model.macs > 0 and pgd.latency_ms_cpu_b1 > 0
    if sys.platform == "linux":
        # The worker held at least the interpreter, torch and the data while the unit ran.
        assert all(r.memory["peak_rss_mib"] > 100 for r in records)
    assert pgd.env["torch"] == torch.__version__.split("+")[0] or pgd.env["torch"].startswith(
        torch.__version__[:4]
    )
    md = (root / "results" / "leaderboard.md").read_text()
    for column in (
        "rank",
        "clean acc",
        "FGSM@8/255",
        "PGD@2/255",
        "PGD@8/255",
        "worst-case@8/255",
        "C&W median L2",
    ):
        assert column in md
    assert "inconclusive" in md or "easier to fool" in md
    assert (root / "results" / "leaderboard.csv").exists()
    # Each record's attack progress goes once the record is written.
    assert not list((root / "cache" / "attack-progress").glob("*"))
    assert len(list((root / "results" / "figures").glob("*.png"))) >= 3


def test_a_second_run_in_two_workers_reuses_the_cache_and_gives_the_same_records(smoke, tmp_path):
    root, first = smoke
    assert "epoch 1/" in first.stdout + first.stderr
    # Two workers, in another order than the sequential smoke: which unit starts first, and in which
    # process, changes no record.
    args = [*FAST, f"results_dir={tmp_path}/results"]
    proc = run(
        [*args, "study.jobs=2", "study.order=cheapest", f"hydra.run.dir={tmp_path}/out"], root / "cache"
    )
    out = proc.stdout + proc.stderr
    assert "epoch 1/" not in out and "resuming" not in out, "a cached model was retrained"
    assert "units, cheapest first: 0.25/" in out
    # Same config, same seed, same cached weights: the same numbers.
    a = {r.run_id: r for r in load_records(root / "results" / "runs")}
    b = load_records(tmp_path / "results" / "runs")
    assert len(b) == 16 and sorted(r.run_id for r in b) == sorted(a)
    for r in b:
        assert r.config_hash == a[r.run_id].config_hash
        assert (r.clean, r.eps_results) == (a[r.run_id].clean, a[r.run_id].eps_results)
    proc = run([*args, f"hydra.run.dir={tmp_path}/out2"], root / "cache")
    assert "every record is done" in proc.stdout + proc.stderr


def test_cheapest_first_orders_the_study_by_mult_adds_then_seed():
    cfg = compose_config(["experiment=study"])
    units = cheapest_first(unit_configs(cfg), num_classes=10)
    order = [(u.model.alpha, u.model.rho, u.seed) for u in units]
    assert order[:6] == [
        (0.25, 1.0, 0),
        (0.25, 1.0, 1),
        (0.25, 1.0, 2),
        (0.5, 1.0, 0),
        (0.5, 1.0, 1),
        (0.5, 1.0, 2),
    ]
    assert order[6] == (1.0, 0.625, 0) and order[-2:] == [(1.0, 0.875, 0), (1.0, 1.0, 0)]
    assert sorted(order) == sorted((p.alpha, p.rho, p.get("seed", 0)) for p in cfg.study.grid)


def test_train_only_fills_the_cache_and_writes_no_records(tmp_path):
    run(
        [
            *FAST,
            # What is cached, not how good it is.
            "train.epochs=1",
            "finetune.steps=1",
            "study.evaluate=false",
            "study.jobs=2",
            f"results_dir={tmp_path}/results",
            f"hydra.run.dir={tmp_path}/out",
        ],
        tmp_path / "cache",
    )
    assert not (tmp_path / "results" / "runs").exists()
    # 2 widths, each standard-trained and fine-tuned
    assert len(list((tmp_path / "cache" / "models").glob("*/final.safetensors"))) == 4


def test_records_name_their_weights_and_a_record_of_other_weights_is_redone(smoke, tmp_path):
    import shutil

    root, _ = smoke
    records = load_records(root / "results" / "runs")
    by_key = {(r.model.name, r.regime): r.model.weights for r in records}
    assert len(set(by_key.values())) == 4  # 2 models x 2 regimes, all different weights
    for r in records:
        assert by_key[(r.model.name, r.regime)] == r.model.weights
        if r.regime != "standard":
            assert r.model.parent_weights == by_key[(r.model.name, "standard")]
        else:
            assert "parent_weights" not in r.to_dict()["model"]

    # Pretend a standard record and a fine-tuned one (same parent) came from other models, as when a
    # machine without the model cache retrained them and was cut off: only those two are redone, with
    # the cached models' digests.
    runs = tmp_path / "results" / "runs"
    shutil.copytree(root / "results" / "runs", runs)
    files = sorted(runs.glob("*.json"))
    victims = [
        next(p for p in files if "0.25-32px__standard__fgsm__" in p.name),
        next(p for p in files if "0.50-32px__pgd-at__pgd__" in p.name),
    ]
    for victim in victims:
        stale = parse_record(victim.read_text())
        stale["model"]["weights"] = "0" * 16
        victim.write_text(dumps_record(stale))
    before = {p.name: p.read_text() for p in runs.glob("*.json")}
    # The fine-tuned PGD record was stopped after its first eps, which (says the made-up progress
    # file) broke every other clean-correct image: the redo takes that eps from the file, attacks
    # what it left at the next, and counts the earlier run's seconds.
    tuned = parse_record(before[victims[1].name])
    progress = root / "cache" / "attack-progress" / victims[1].name
    n = tuned["clean"]["n"]
    correct = decode_mask(tuned["clean"]["correct_mask"], n)
    broken = correct & (np.arange(n) % 2 == 0)
    identity = {
        "record": victims[1].stem,
        "config_hash": tuned["config_hash"],
        "weights": by_key[(tuned["model"]["name"], "pgd-at")],
        "parent": tuned["model"]["parent_weights"],
        "code": code_digest(),
    }
    call = {"n": n, "batches": 1, "clean_correct": encode_mask(correct), "success": encode_mask(broken)}
    atomic_write_json(
        progress, {"identity": identity, "calls": {"pgd@2:ce": {**call, "generator": None}}, "seconds": 1e4}
    )
    run([*FAST, f"results_dir={tmp_path}/results", f"hydra.run.dir={tmp_path}/out"], root / "cache")
    after = {p.name: p.read_text() for p in runs.glob("*.json")}
    assert sorted(name for name in before if before[name] != after[name]) == sorted(v.name for v in victims)
    resumed = parse_record(after[victims[1].name])
    assert (decode_mask(resumed["eps_results"][0]["robust_mask"], n) == correct & ~broken).all()
    assert resumed["eps_results"][0]["robust"] != tuned["eps_results"][0]["robust"]
    assert resumed["timing"]["eval_s"] > 1e4 and not progress.exists()
    for victim in victims:
        redone = parse_record(after[victim.name])
        assert redone["model"]["weights"] == by_key[(redone["model"]["name"], redone["regime"])]
        # The sanity checks were not run again: the redone record has its model's report and seconds.
        model, regime, _, *rest = victim.name.split("__")
        twin = parse_record(after["__".join([model, regime, "cw", *rest])])
        assert (redone["sanity"], redone["timing"]["sanity_s"]) == (
            twin["sanity"],
            twin["timing"]["sanity_s"],
        )


def test_records_of_models_the_cache_lacks_are_not_redone_unless_asked(smoke, tmp_path):
    import shutil

    root, _ = smoke
    runs = tmp_path / "results" / "runs"
    shutil.copytree(root / "results" / "runs", runs)
    # A study cut off before its C&W records, resumed where the alpha=0.25 standard model and the
    # alpha=0.5 fine-tune are gone (a new machine, a cleared cache). A complete unit needs no models.
    for unfinished in ("0.25-32px__standard__cw__", "0.50-32px__pgd-at__cw__"):
        next(runs.glob(f"*{unfinished}*")).unlink()
    cache = tmp_path / "cache"
    shutil.copytree(root / "cache", cache)
    models = cache / "models"
    for gone in (*models.glob("MobileNetV1-0.50-*-pgd-at-*"), *models.glob("MobileNetV1-0.25-*-standard-*")):
        shutil.rmtree(gone)
    before = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    args = [*FAST, f"results_dir={tmp_path}/results", f"hydra.run.dir={tmp_path}/out"]
    proc = run_cli(*args, cache=cache)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "2 unit(s) have records made from models that" in lines[0]
    # Without its standard model every record of alpha=0.25 is stranded (the fine-tune's parent changes).
    assert "MobileNetV1-0.25-32px seed 0 (standard, pgd-at)" in lines[0]
    assert "MobileNetV1-0.50-32px seed 0 (pgd-at)" in lines[0]
    assert "study.retrain=true" in lines[0]
    assert "epoch 1/" not in proc.stdout + proc.stderr, "it trained before refusing"
    assert {p.name: p.read_bytes() for p in runs.glob("*.json")} == before

    # Asked to, it retrains the missing fine-tune and writes the record it owed; records of other
    # weights than the new model's would be redone (test above), the others are kept.
    proc = run([*args, "study.retrain=true", "study.grid=[{alpha:0.5,rho:1.0}]"], cache)
    assert "pgd-at epoch 1/" in proc.stdout + proc.stderr
    assert list(models.glob("MobileNetV1-0.50-*-pgd-at-*/final.safetensors"))
    after = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    (added,) = set(after) - set(before)
    assert "0.50-32px__pgd-at__cw__" in added
    changed = [name for name in before if before[name] != after[name]]
    assert all("0.50-32px__pgd-at__" in name for name in changed), changed


def test_parallel_joblib_sweep_leaves_consistent_records(smoke, tmp_path):
    root, _ = smoke
    results = tmp_path / "results"
    run(
        [
            "-m",
            *FAST,
            "study.grid=null",
            "model.alpha=0.25,0.5",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"results_dir={results}",
            f"hydra.sweep.dir={tmp_path}/multi",
        ],
        root / "cache",
    )
    files = sorted((results / "runs").glob("*.json"))
    assert len(files) == 16  # 2 jobs x 2 regimes x 4 attack families
    for f in files:
        validate_record(parse_record(f.read_text()))
    assert not list((results / "runs").glob(".*tmp"))


def test_two_runs_of_one_experiment_train_its_models_once_and_write_each_record_once(tmp_path):
    runs = tmp_path / "results" / "runs"
    args = [*FAST, "study.grid=null", "model.alpha=0.25", f"results_dir={runs.parent}"]

    def one(i):
        return run([*args, f"hydra.run.dir={tmp_path}/out{i}"], tmp_path / "cache")

    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(one, (0, 1)))
    outs = [p.stdout + p.stderr for p in procs]
    # Each model is trained by one run; the other waits for its lock, then loads it.
    for regime in ("standard", "pgd-at"):
        assert sum(o.count(f"32px {regime} epoch 1/") for o in outs) == 1, regime
    assert not any("resuming" in o for o in outs)
    # Each record is logged by the run that wrote it; the run that waited for its lock finds it done.
    written = [f for o in outs for f in re.findall(r"(\S+\.json)$", o, re.MULTILINE)]
    assert sorted(written) == sorted(str(f) for f in runs.glob("*.json"))
    assert len(written) == 8  # 2 regimes x 4 attack families, each once


class Killed(Exception):
    pass


def test_killed_finetuning_resumes(cache_dir, monkeypatch):
    import robust_mnv1.training.model_cache as model_cache

    cfg = compose_config(
        [*FAST, "train.epochs=1", "finetune.epochs=2", "finetune.steps=1", "model.alpha=0.25"]
    )
    data = load_dataset(cfg.data, cache_root(cfg) / "data")
    parent, parent_meta = standard_model(cfg, data, torch.device("cpu"))
    real_fit = model_cache.fit

    def kill_after_first_epoch(*args, **kwargs):
        def stop(epoch):
            raise Killed

        return real_fit(*args, **kwargs, on_epoch_end=stop)

    monkeypatch.setattr(model_cache, "fit", kill_after_first_epoch)
    with pytest.raises(Killed):
        finetuned_model(cfg, data, torch.device("cpu"), parent, parent_meta)
    monkeypatch.setattr(model_cache, "fit", real_fit)
    model, meta = finetuned_model(cfg, data, torch.device("cpu"), parent, parent_meta)
    assert meta["trained"] and [h["epoch"] for h in meta["history"]] == [1, 2]

    # Bit-exact with a fine-tune that was never interrupted.
    monkeypatch.setenv("ROBUST_MNV1_CACHE", str(cache_dir.parent / "fresh"))
    cfg2 = compose_config(
        [*FAST, "train.epochs=1", "finetune.epochs=2", "finetune.steps=1", "model.alpha=0.25"]
    )
    parent2, meta2 = standard_model(cfg2, data, torch.device("cpu"))
    clean, _ = finetuned_model(cfg2, data, torch.device("cpu"), parent2, meta2)
    for (k, a), b in zip(model.state_dict().items(), clean.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
