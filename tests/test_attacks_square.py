"""Square Attack (linf): the paper's schedule, threat model, seeds, budget and early exit, success rate
against ART's ``SquareAttack`` on the same model, and the ``square_breaks_robust`` sanity check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attacks.working_set
from attacks import Square, checks
from attacks.square import p_at, window_side
from tests._attack_models import QuantizedInput, single_thread, synthetic_batch, trained_cnn

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


class RecordingModel(nn.Module):
    """Passes inputs through to ``model`` and keeps a copy of every batch it is queried with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.model(x)


class CropPadding(nn.Module):
    """Runs ``model`` on the top-left 8x8 pixels: the padding row and column change nothing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, padded: torch.Tensor) -> torch.Tensor:
        return self.model(padded[..., :8, :8])


def constant_model() -> nn.Module:
    """Logits that ignore the input (class 0 wins): nothing can break it, no proposal improves a loss."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 10))
    nn.init.zeros_(model[1].weight)
    with torch.no_grad():
        model[1].bias.zero_()
        model[1].bias[0] = 1.0
    return model.eval()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": math.nan}, "eps"),
        ({"eps": 0.1, "queries": 0}, "queries"),
        ({"eps": 0.1, "queries": 10.0}, "queries"),
        ({"eps": 0.1, "p_init": 0.0}, "p_init"),
        ({"eps": 0.1, "p_init": 1.5}, "p_init"),
        ({"eps": 0.1, "loss": "dlr"}, "loss"),
        ({"eps": 0.1, "seed": -1}, "seed"),
        ({"eps": 0.1, "batch_size": 0}, "batch_size"),
        ({"eps": 0.1, "backend": "torchattacks"}, "backend"),
    ],
)
def test_constructor_rejects_bad_arguments_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Square(**kwargs)


@pytest.mark.parametrize("backend", ["foolbox", "art"])
def test_peer_backends_are_refused_as_native_only(backend):
    with pytest.raises(
        ValueError, match=f"backend='{backend}' does not support Square.*use backend='native'"
    ):
        Square(eps=0.1, backend=backend)


def test_constructor_is_keyword_only_and_defaults_follow_the_brief():
    with pytest.raises(TypeError):
        Square(0.1)  # type: ignore[misc]
    attack = Square(eps=0.1)
    assert (attack.queries, attack.p_init, attack.loss, attack.seed, attack.batch_size) == (
        1000,
        0.05,
        "margin",
        0,
        512,
    )
    assert Square(eps=0.1, p_init=1.0, loss="ce").p_init == 1.0


def test_images_must_be_nchw_and_are_refused_before_the_model_runs():
    model = RecordingModel(nn.Sequential(nn.Flatten(), nn.Linear(192, 10)))
    x, y = synthetic_batch(4, 0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        Square(eps=0.1)(model, x.flatten(1), y)
    assert model.seen == []


def test_p_schedule_follows_the_paper_and_rescales_to_the_budget():
    # At the paper's 10,000 queries p is halved after iterations 10, 50, 200, ..., 8000.
    halved_after = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    for k, mark in enumerate(halved_after):
        assert p_at(mark, 10_000, 0.8) == 0.8 / 2**k
        assert p_at(mark + 1, 10_000, 0.8) == 0.8 / 2 ** (k + 1)
    assert p_at(0, 10_000, 0.8) == 0.8 and p_at(9_999, 10_000, 0.8) == 0.8 / 512
    # A tenth of the budget halves after a tenth of the iterations (1, 5, 20, ...).
    assert [p_at(i, 1000, 1.0) for i in (1, 2, 5, 6, 20, 21, 800, 801)] == [
        1.0,
        0.5,
        0.5,
        0.25,
        0.25,
        0.125,
        1 / 256,
        1 / 512,
    ]


def test_window_side_covers_the_fraction_and_fits_the_image():
    assert window_side(0.05, 8, 8) == 2  # √3.2 ≈ 1.8
    assert window_side(0.05, 224, 224) == 50  # √2508.8 ≈ 50.1
    assert window_side(1e-6, 32, 32) == 1
    assert window_side(1.0, 8, 12) == 8


def test_same_seed_same_result_seeds_matter_and_global_rng_is_untouched():
    model = trained_cnn()
    x, y = synthetic_batch(64, 4)
    torch_state = torch.random.get_rng_state()
    a = Square(eps=8 / 255, queries=30, seed=5)(model, x, y)
    b = Square(eps=8 / 255, queries=30, seed=5)(model, x, y)
    c = Square(eps=8 / 255, queries=30, seed=6)(model, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert not torch.equal(a.x_adv, c.x_adv)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    summary = a.to_dict()
    assert summary["attack"] == "Square" and summary["backend"] == "native"


@pytest.mark.parametrize("eps", [8 / 255, 0.3])
def test_every_query_stays_in_the_ball_and_the_box_on_its_vertices(eps):
    # 0.3 pushes many pixels against the box. Every query, not only the result, is checked: the base
    # class clamps the result, so only the model's inputs show what the attack itself proposed.
    x, y = synthetic_batch(48, 1)
    x[:8] = x[:8].round()  # images on the box's faces
    model = RecordingModel(trained_cnn())
    res = Square(eps=eps, queries=40, seed=2)(model, x, y)
    attacked = res.clean_correct
    # The first query is the base class's clean pass; the stripes and proposals follow, one batch each.
    queries = model.seen[1:-1]  # the last is the base class's fresh pass on x_adv
    assert sum(q.shape[0] for q in queries) == res.queries
    x_att = x[attacked]
    lo, hi = (x_att - eps).clamp(0.0, 1.0), (x_att + eps).clamp(0.0, 1.0)
    # Until the first compaction every query holds all attacked samples in order: check those fully.
    full = [q for q in queries if q.shape[0] == x_att.shape[0]]
    assert len(full) >= 2
    for q in full:
        assert ((q >= 0) & (q <= 1)).all()
        # Each pixel of a Square point is a vertex of the ball (clipped by the box): x − eps or x + eps.
        assert (((q - lo).abs() < 1e-6) | ((q - hi).abs() < 1e-6)).all()
    assert (res.linf <= eps + 1e-6).all()
    assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()


def test_success_flags_agree_with_a_fresh_forward_pass():
    model = trained_cnn()
    x, y = synthetic_batch(128, 2)
    res = Square(eps=12 / 255, queries=100)(model, x, y)
    with torch.no_grad():
        assert torch.equal(res.clean_correct, model(x).argmax(1) == y)
        assert torch.equal(res.success, res.clean_correct & (model(res.x_adv).argmax(1) != y))
    assert 0 < int(res.success.sum()) < int(res.clean_correct.sum())


def test_misclassified_samples_are_left_alone_and_never_queried():
    x, y = synthetic_batch(64, 3)
    y_wrong = y.clone()
    y_wrong[:40] = (y[:40] + 1) % 10
    model = RecordingModel(trained_cnn())
    res = Square(eps=0.1, queries=20)(model, x, y_wrong)
    wrong = ~res.clean_correct
    assert wrong.sum() >= 40
    assert torch.equal(res.x_adv[wrong], x[wrong]) and not res.success[wrong].any()
    assert res.queries <= int(res.clean_correct.sum()) * 20


def test_breaks_a_non_robust_model_at_a_large_eps():
    model = trained_cnn()
    x, y = synthetic_batch(128, 5)
    res = Square(eps=32 / 255, queries=300)(model, x, y)
    assert res.clean_accuracy > 0.9
    assert res.robust_accuracy == 0.0


@pytest.mark.parametrize("loss", ["margin", "ce"])
def test_eps_zero_breaks_nothing_and_costs_nothing(loss):
    model = trained_cnn()
    x, y = synthetic_batch(64, 6)
    res = Square(eps=0.0, queries=50, loss=loss)(model, x, y)
    assert not res.success.any()
    assert torch.equal(res.x_adv, x)
    assert res.queries == 0


def test_queries_count_one_pass_for_the_stripes_and_one_per_iteration():
    x, _ = synthetic_batch(10, 0)
    y = torch.zeros(10, dtype=torch.long)
    for queries in (1, 2, 17):
        res = Square(eps=0.1, queries=queries, batch_size=4)(constant_model(), x, y)
        assert not res.success.any()
        assert res.queries == 10 * queries


def test_early_exit_stops_paying_for_broken_samples():
    model = trained_cnn()
    x, y = synthetic_batch(128, 5)
    res = Square(eps=32 / 255, queries=300)(model, x, y)
    assert res.robust_accuracy == 0.0
    # Every sample broken within the budget: most leave after a few dozen iterations.
    assert res.queries < 128 * 300 / 2


def test_early_exit_changes_no_trajectory(monkeypatch):
    # Each sample reads its own row of chunk-wide random draws, and in float64 its logits do not
    # depend on the rest of the batch: dropping broken samples must reproduce the run keeping all.
    model = trained_cnn().double()
    x, y = synthetic_batch(100, 11)
    x = x.double()
    attack = Square(eps=24 / 255, queries=60, seed=1)
    exiting = attack(model, x, y)
    monkeypatch.setattr(attacks.working_set, "CHECK_EVERY", 10**9)
    full = attack(model, x, y)
    monkeypatch.undo()
    assert torch.equal(exiting.x_adv, full.x_adv)
    assert exiting.success.any() and exiting.queries < full.queries


# Differential test against ART 1.20's SquareAttack (linf, margin loss, p_init 0.05) on the 500 images
# of the other differential tests, at 12/255 and 300 queries, where about 40% of the images break.
#
# ART draws window corners with numpy's randint(0, side − h), whose upper bound is exclusive, so after
# the stripes it never moves the last row and column (15 of the 64 pixels of these images); measured
# over 6 seeds that left it at 34.7% successes against the native 41.5%. To compare the search itself
# ART attacks the images padded with one grey row and column that its model crops away: its corners
# then range over exactly the positions of the 8x8 image. Two ART differences remain: it shares one
# window and colour across the batch per iteration (the same distribution for each sample, so the same
# expected success rate), and it keeps the stripes only where they improve the loss (the paper always
# takes them). That last rule, measured on the native attack over 8 seeds, costs 1.4 points (39.9%
# against 41.55%; ART padded: 40.15%).
#
# The tolerance: with 8 seeds each attack's success rate varied by SD 0.011-0.012 from seed to seed
# on these images, so the difference of two 2-seed means has SD about 0.012 and of two 8-seed means
# about 0.006. 0.05 is the 1.4-point shift plus 3 SD for 2 seeds, 0.035 about the same for 8 (-m slow);
# a bug of the window off-by-one's size (7 points) fails both.
@pytest.mark.parametrize(("seeds", "tolerance"), [(2, 0.05), pytest.param(8, 0.035, marks=pytest.mark.slow)])
def test_success_rate_agrees_with_art(seeds, tolerance):
    pytest.importorskip("art")
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import PyTorchClassifier

    model = trained_cnn()
    x, y = synthetic_batch(500, 7)
    eps, queries = 12 / 255, 300

    classifier = PyTorchClassifier(
        model=CropPadding(model),
        loss=nn.CrossEntropyLoss(),
        input_shape=(3, 9, 9),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    padded = F.pad(x, (0, 1, 0, 1), value=0.5).numpy()
    with torch.no_grad():
        clean_correct = model(x).argmax(1) == y
    native, peer = [], []
    numpy_state = np.random.get_state()  # noqa: NPY002
    try:
        for seed in range(seeds):
            native.append(
                float(Square(eps=eps, queries=queries, seed=seed)(model, x, y).success.float().mean())
            )
            # ART draws from numpy's global RNG; its max_iter counts iterations after the stripes.
            np.random.seed(seed)  # noqa: NPY002
            art_attack = SquareAttack(
                classifier,
                norm=np.inf,
                eps=eps,
                max_iter=queries - 1,
                p_init=0.05,
                batch_size=500,
                verbose=False,
            )
            adv = torch.from_numpy(art_attack.generate(padded, y.numpy()))[..., :8, :8]
            assert (adv - x).abs().max() <= eps + 1e-6
            with torch.no_grad():
                peer.append(float((clean_correct & (model(adv).argmax(1) != y)).float().mean()))
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002
    assert 0.2 < np.mean(native) < 0.8  # the comparison is only informative in between
    assert abs(np.mean(native) - np.mean(peer)) <= tolerance, (native, peer)


# The square_breaks_robust check (attacks.checks): quiet on the plain model, fires on gradient masking.


def test_square_check_is_quiet_on_a_normally_trained_model():
    x, y = synthetic_batch(200, 3)
    report = checks.check_square_breaks_robust(trained_cnn(), x, y, eps=8 / 255)
    assert not report.flagged, report.detail
    assert report.name == "square_breaks_robust"
    assert report.metrics["square_attacked"] == 100  # PGD leaves more than 100 robust: a full sample
    assert 0.2 < report.metrics["pgd_accuracy"] < 0.9


def test_square_check_flags_a_model_that_quantizes_its_input():
    # Rounding the input zeroes every gradient, so PGD leaves almost everything robust; the logits
    # still move under the perturbation, which the gradient-free search finds.
    x, y = synthetic_batch(200, 3)
    report = checks.check_square_breaks_robust(QuantizedInput(trained_cnn()), x, y, eps=8 / 255)
    assert report.flagged, report.detail
    assert report.metrics["square_broken_fraction"] > 0.2
    assert report.to_dict()["flagged"] is True


def test_square_check_validates_its_arguments_and_is_not_in_run_all():
    model = trained_cnn()
    x, y = synthetic_batch(32, 4)
    for kwargs, name in [
        ({"norm": "l2"}, "linf"),
        ({"samples": 0}, "samples"),
        ({"queries": 0}, "queries"),
        ({"max_fraction": -0.1}, "max_fraction"),
    ]:
        with pytest.raises(ValueError, match=name):
            checks.check_square_breaks_robust(model, x, y, eps=8 / 255, **kwargs)
    names = [r.name for r in checks.run_all(model, x, y, eps=8 / 255, steps=2)]
    assert "square_breaks_robust" not in names


def test_square_check_with_nothing_left_robust_is_quiet():
    x, y = synthetic_batch(64, 5)
    report = checks.check_square_breaks_robust(trained_cnn(), x, y, eps=64 / 255, queries=10)
    assert report.metrics["square_attacked"] == 0 and not report.flagged
