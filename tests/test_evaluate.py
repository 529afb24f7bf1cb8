"""The study's L-inf protocol (robust_mnv1.evaluation.protocol): PGD's survivors-only chaining across eps, and
APGD on what FGSM and PGD left robust."""

import itertools

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from attacks import PGD
from robust_mnv1.config.spec import attack_spec
from robust_mnv1.data import Split
from robust_mnv1.evaluation.protocol import (
    eval_order,
    eval_subset,
    run_apgd,
    run_pgd,
    square_check,
    survivors,
)
from robust_mnv1.evaluation.specs import SquareSpec
from robust_mnv1.infra.errors import UserError
from robust_mnv1.records.run_record import EpsResult
from robust_mnv1.records.schema import decode_mask, encode_mask

from ._attack_models import QuantizedInput, synthetic_batch, trained_cnn

EPS_255 = [2, 4, 8, 16]


def pgd_cfg(**overrides):
    cfg = dict(
        eps_255=EPS_255, steps=5, restarts=1, random_start=True, loss="ce", margin_at_255=[8], batch_size=64
    )
    return attack_spec("pgd", OmegaConf.create({**cfg, **overrides}))


def masks(entries):
    return [e.mask() for e in entries]


def setup():
    x, y = synthetic_batch(200, seed=5)
    return trained_cnn(0), x, y


def test_masks_only_shrink_as_eps_grows():
    model, x, y = setup()
    entries = run_pgd(model, x, y, pgd_cfg(), seed=0)
    ms = masks(entries)
    assert [e.eps_255 for e in entries] == EPS_255
    assert ms[0].sum() > 0 and ms[-1].sum() < ms[0].sum(), "the test needs some samples to break late"
    for small, large in itertools.pairwise(ms):
        assert not (large & ~small).any(), "a sample broken at a smaller eps reported robust at a larger one"


def test_the_grid_is_walked_smallest_first_whatever_the_config_order():
    model, x, y = setup()
    shuffled = run_pgd(model, x, y, pgd_cfg(eps_255=[8, 2, 16, 4]), seed=0)
    ordered = run_pgd(model, x, y, pgd_cfg(), seed=0)
    assert [e.eps_255 for e in shuffled] == EPS_255
    assert [e.robust_mask for e in shuffled] == [e.robust_mask for e in ordered]


def test_smallest_eps_matches_a_standalone_attack():
    model, x, y = setup()
    first = run_pgd(model, x, y, pgd_cfg(), seed=3)[0]
    res = PGD(eps=2 / 255, steps=5, random_start=True, batch_size=64, seed=3)(model, x, y)
    expected = (res.clean_correct & ~res.success).numpy()
    np.testing.assert_array_equal(decode_mask(first.robust_mask, first.n), expected)


def test_margin_attacks_the_ce_survivors_and_can_only_remove_more():
    model, x, y = setup()
    with_margin = run_pgd(model, x, y, pgd_cfg(), seed=0)
    ce_only = run_pgd(model, x, y, pgd_cfg(margin_at_255=[]), seed=0)
    at8 = EPS_255.index(8)
    assert with_margin[at8].loss == "ce+margin" and ce_only[at8].loss == "ce"
    # Up to the margin eps both runs are the same computation.
    for a, b in zip(with_margin[:at8], ce_only[:at8], strict=True):
        assert a.robust_mask == b.robust_mask
    m, c = masks(with_margin)[at8], masks(ce_only)[at8]
    assert not (m & ~c).any()


def test_eps_with_no_survivors_left_is_not_attacked(monkeypatch):
    import robust_mnv1.evaluation.specs as specs

    calls = []

    class Counting(PGD):
        def __call__(self, model, x, y, **kwargs):
            calls.append((round(self.eps * 255), len(y)))
            return super().__call__(model, x, y, **kwargs)

    monkeypatch.setattr(specs, "PGD", Counting)
    model, x, y = setup()
    entries = run_pgd(model, x, y, pgd_cfg(eps_255=[64, 128], margin_at_255=[]), seed=0)
    # A batch at a time (robust_mnv1.evaluation.progress), all at the first eps.
    assert calls == [(64, 64), (64, 64), (64, 64), (64, 8)], "the first eps broke every sample: no second"
    assert [e.robust for e in entries] == [0, 0]
    assert [e.n for e in entries] == [len(y), len(y)]


def class_by_class(counts):
    """Labels listed class by class, as an image folder lists its test images."""
    return torch.cat([torch.full((m,), c) for c, m in enumerate(counts)])


def test_every_prefix_of_the_stratified_order_holds_each_class_in_its_share():
    y = class_by_class([100] * 10)
    order = eval_order(y)
    assert sorted(order.tolist()) == list(range(1000))
    for n in (10, 50, 100, 370, 1000):
        counts = np.bincount(y[order[:n]].numpy(), minlength=10)
        assert counts.max() - counts.min() <= 1, (n, counts)
    # Unequal classes: each prefix follows the class shares.
    y = class_by_class([60, 30, 10])
    counts = np.bincount(y[eval_order(y)[:10]].numpy(), minlength=3)
    assert counts.tolist() == [6, 3, 1]


def test_the_order_is_fixed_and_shuffles_within_classes():
    y = class_by_class([100] * 10)
    assert torch.equal(eval_order(y), eval_order(y.clone()))
    airplanes = eval_order(y)[y[eval_order(y)] == 0]
    assert not torch.equal(airplanes, torch.arange(100)), "within a class the order is shuffled"
    assert torch.equal(eval_order(y, "dataset"), torch.arange(1000))
    with pytest.raises(UserError, match=r"eval\.order"):
        eval_order(y, "random")


def test_eval_subset_takes_the_images_of_the_order():
    y = class_by_class([5, 5, 5])
    x = torch.arange(15, dtype=torch.uint8).view(15, 1, 1, 1).expand(15, 3, 2, 2).contiguous()
    xs, ys = eval_subset(Split(x, y), 6, torch.device("cpu"))
    idx = eval_order(y)[:6]
    assert torch.equal(ys, y[idx]) and sorted(ys.tolist()) == [0, 0, 1, 1, 2, 2]
    assert torch.equal(xs[:, 0, 0, 0], idx.float() / 255)
    xs, ys = eval_subset(Split(x, y), None, torch.device("cpu"), "dataset")
    assert torch.equal(ys, y) and xs.shape == (15, 3, 2, 2)


def apgd_cfg(**overrides):
    cfg = dict(eps_255=[8], ce_steps=10, targeted_steps=10, n_target_classes=3, batch_size=64)
    return attack_spec("apgd", OmegaConf.create({**cfg, "square": {"samples": 0, "queries": 1}, **overrides}))


def test_apgd_attacks_only_what_fgsm_and_pgd_left_and_its_mask_is_their_worst_case():
    model = trained_cnn()
    x, y = synthetic_batch(96, 11)
    pgd = run_pgd(model, x, y, pgd_cfg(eps_255=[8], steps=2, margin_at_255=[]), seed=0)
    before = survivors(pgd, 8, len(y))
    assert 0 < before.sum() < len(y)  # a weak PGD leaves APGD something to do, and breaks some itself
    (entry,) = run_apgd(model, x, y, apgd_cfg(), seed=0, before={8: before})
    after = torch.from_numpy(entry.mask())
    assert not (after & ~before).any()
    assert entry.attacked == int(before.sum())
    assert entry.attacked - sum(entry.broken.values()) == entry.robust == int(after.sum())
    assert entry.broken["apgd-ce"] + entry.broken["apgd-t"] > 0  # the stronger attack adds breaks
    # Nothing left robust: nothing to attack, nothing run.
    (empty,) = run_apgd(model, x, y, apgd_cfg(), seed=0, before={8: torch.zeros(len(y), dtype=torch.bool)})
    assert (empty.attacked, empty.robust, empty.broken) == (0, 0, {"apgd-ce": 0, "apgd-t": 0})


def test_survivors_are_the_and_of_every_entry_at_that_eps_and_need_one():
    entries = [entry(8, [1, 1, 0, 1]), entry(2, [0, 0, 0, 0]), entry(8, [1, 0, 0, 1])]
    assert survivors(entries, 8, 4).tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="no entries over 4 images at eps 4"):
        survivors(entries, 4, 4)
    with pytest.raises(ValueError, match="over 5 images"):
        survivors(entries, 8, 5)


def entry(eps_255, bits):
    mask = np.array(bits, dtype=bool)
    return EpsResult(
        "pgd",
        "linf",
        eps_255 / 255,
        eps_255,
        "ce",
        len(bits),
        int(mask.sum()),
        0.0,
        (0, 1),
        encode_mask(mask),
    )


def test_square_check_flags_gradients_that_mislead_and_can_be_off():
    x, y = synthetic_batch(96, 12)
    scfg = SquareSpec(samples=32, queries=300)
    everything = torch.ones(len(y), dtype=torch.bool)
    masked = QuantizedInput(trained_cnn())  # zero input gradients: PGD leaves images Square breaks
    report = square_check(masked, x, y, everything, 8, scfg, seed=0)
    assert report["name"] == "square_breaks_robust" and report["flagged"]
    nothing = torch.zeros(len(y), dtype=torch.bool)
    assert not square_check(masked, x, y, nothing, 8, scfg, seed=0)["flagged"]
    off = SquareSpec(samples=0, queries=1)
    assert square_check(masked, x, y, everything, 8, off, seed=0) is None
