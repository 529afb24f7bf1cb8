"""Standard training: accuracy on digits, the model cache, and bit-exact resume after a kill."""

import dataclasses
import itertools
import json
import logging

import pytest
import torch

from robust_mnv1.config.compose import compose_config
from robust_mnv1.config.spec import model_spec
from robust_mnv1.data import load_dataset
from robust_mnv1.training.fit import cross_entropy_objective, fit, lr_at
from robust_mnv1.training.model_cache import cache_root, standard_model

CPU = torch.device("cpu")


def digits_cfg(*overrides):
    return compose_config(["experiment=quickstart", *overrides])


def test_lr_schedule_shapes():
    cfg = digits_cfg().train
    total = 100
    lrs = [lr_at(s, total, cfg) for s in range(total)]
    peak = max(lrs)
    assert peak == pytest.approx(cfg.lr)
    assert lrs.index(peak) == int(cfg.warmup_frac * total) - 1
    assert lrs[-1] < 0.01 * cfg.lr
    assert all(a <= b for a, b in itertools.pairwise(lrs[: lrs.index(peak) + 1]))


def test_quickstart_recipe_reaches_90_percent_on_digits_and_is_cached(cache_dir):
    cfg = digits_cfg()
    data = load_dataset(cfg.data, cache_root(cfg) / "data")
    model, meta = standard_model(cfg, data, CPU)
    assert meta["trained"]
    assert meta["test_acc"] >= 0.90, meta["history"]
    assert len(meta["history"]) == cfg.train.epochs
    again, meta2 = standard_model(cfg, data, CPU)
    assert not meta2["trained"]
    assert meta2["test_acc"] == meta["test_acc"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class Killed(Exception):
    pass


def _small_run(cfg, data, run_dir, on_epoch_end=None, objective=None, save_every_s=300.0):
    torch.manual_seed(cfg.seed)
    model = model_spec(cfg, data).build()
    meta = fit(
        model,
        data.train,
        data.test,
        cfg.train,
        device=CPU,
        seed=cfg.seed,
        run_dir=run_dir,
        objective=objective or cross_entropy_objective(),
        on_epoch_end=on_epoch_end,
        save_every_s=save_every_s,
    )
    return model, meta


def test_resume_after_interruption_is_bit_exact(cache_dir, tmp_path):
    cfg = digits_cfg("train.epochs=3", "train.augment=true")
    full = load_dataset(cfg.data, cache_root(cfg) / "data")
    # A 256-image slice keeps this test to seconds; the resume logic does not care about size.
    data = dataclasses.replace(
        full, train=dataclasses.replace(full.train, x=full.train.x[:256], y=full.train.y[:256])
    )

    reference, ref_meta = _small_run(cfg, data, tmp_path / "ref")

    def kill_after_2(epoch):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        _small_run(cfg, data, tmp_path / "killed", on_epoch_end=kill_after_2)
    assert (tmp_path / "killed" / "last.safetensors").exists()
    assert not (tmp_path / "killed" / "final.safetensors").exists()
    resumed, meta = _small_run(cfg, data, tmp_path / "killed")
    assert meta["trained"]
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert not (tmp_path / "killed" / "last.safetensors").exists()
    for (k, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert meta["test_acc"] == ref_meta["test_acc"]


def killed_at(objective, call):
    """``objective`` (its ``draw``, ``generator`` and ``set_epoch`` too), raising :class:`Killed` on
    its ``call``-th use: a kill in the middle of an epoch."""
    calls = [0]

    def wrapped(*args):
        calls[0] += 1
        if calls[0] == call:
            raise Killed
        return objective(*args)

    for name in ("draw", "generator", "set_epoch"):
        if hasattr(objective, name):
            setattr(wrapped, name, getattr(objective, name))
    return wrapped


@pytest.mark.parametrize("regime", ["standard", "pgd-at"])
def test_a_kill_inside_an_epoch_resumes_from_the_batch_after_the_last_save_bit_exactly(
    regime, cache_dir, tmp_path, caplog
):
    from robust_mnv1.training.objectives import make_objective

    cfg = digits_cfg("train.epochs=2", "train.augment=true", "finetune.steps=2")
    full = load_dataset(cfg.data, cache_root(cfg) / "data")
    # 4 batches of 64 per epoch; PGD-AT draws its random starts from a generator of its own.
    data = dataclasses.replace(
        full, train=dataclasses.replace(full.train, x=full.train.x[:256], y=full.train.y[:256])
    )
    make = cross_entropy_objective if regime == "standard" else lambda: make_objective(cfg.finetune, cfg.seed)

    def run(run_dir, objective, save_every_s=300.0):
        return _small_run(cfg, data, run_dir, objective=objective, save_every_s=save_every_s)

    reference, ref_meta = run(tmp_path / "ref", make())
    # Saving after every batch, killed in the 2nd batch of epoch 2: the save after its 1st is kept.
    with pytest.raises(Killed):
        run(tmp_path / "killed", killed_at(make(), 6), save_every_s=0)
    last = json.loads((tmp_path / "killed" / "last.safetensors.json").read_text())
    assert (last["epoch"], last["batch"], last["seen"]) == (1, 1, 64)
    caplog.set_level(logging.INFO)
    resumed, meta = run(tmp_path / "killed", make())
    assert "from epoch 1, batch 1" in caplog.text
    for (k, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    same = ("epoch", "loss", "train_acc", "lr_end", "test_acc")
    assert [{k: h[k] for k in same} for h in meta["history"]] == [
        {k: h[k] for k in same} for h in ref_meta["history"]
    ]
