"""Auto-PGD (APGD, APGD-T): the paper's schedule, losses, threat model, early exit, linear models where
the answer is known, and robust accuracy against torchattacks' implementation on the same model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attacks.working_set
from attacks import APGD, APGDT, PGD
from attacks.apgd import checkpoints
from attacks.losses import dlr_loss, targeted_dlr_loss
from tests._attack_models import (
    NUM_CLASSES,
    SHAPE,
    linear_batch,
    orthogonal_linear,
    seeded,
    single_thread,
    synthetic_batch,
    tiny_cnn,
    trained_cnn,
)

pytestmark = pytest.mark.usefixtures(single_thread.__name__)

TOL = 1e-6


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = trained_cnn()
        x, y = synthetic_batch(500, 7)
    finally:
        torch.set_num_threads(threads)
    return model, x, y


def test_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99: the gaps shrink by 0.03 down to 0.06.
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1000) == [220, 410, 570, 700, 800, 870, 930, 990]
    assert checkpoints(10) == [
        3,
        5,
        6,
        7,
        8,
        9,
    ]  # ⌈2.2⌉, ⌈4.1⌉, ⌈5.7⌉, 7, 8, ⌈8.7⌉, ⌈9.3⌉, ⌈9.9⌉ = 10 dropped
    assert checkpoints(1) == []


def test_dlr_losses_match_their_closed_forms_and_ignore_the_logit_scale():
    z = torch.tensor([[4.0, 1.0, 3.0, 0.0, -2.0], [0.5, 2.0, 1.0, 1.5, 0.0]])
    y = torch.tensor([0, 1])
    # Sorted: [4, 3, 1, 0, -2] and [2, 1.5, 1, 0.5, 0].
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-(4 - 3) / (4 - 1), -(2 - 1.5) / (2 - 1)]))
    target = torch.tensor([2, 3])
    expected = torch.tensor([(3 - 4) / (4 - (1 + 0) / 2), (1.5 - 2) / (2 - (1 + 0.5) / 2)])
    assert torch.allclose(targeted_dlr_loss(z, y, target), expected)
    assert torch.allclose(dlr_loss(7.0 * z - 3.0, y), dlr_loss(z, y))
    assert torch.allclose(targeted_dlr_loss(7.0 * z - 3.0, y, target), targeted_dlr_loss(z, y, target))


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (APGD, {"eps": -0.1}, "eps"),
        (APGD, {"eps": 0.1, "steps": 0}, "steps"),
        (APGD, {"eps": 0.1, "norm": "l1"}, "norm"),
        (APGD, {"eps": 0.1, "loss": "margin"}, "loss"),
        (APGD, {"eps": 0.1, "restarts": 0}, "restarts"),
        (APGD, {"eps": 0.1, "restarts": 2, "random_start": False}, "random_start"),
        (APGD, {"eps": 0.1, "seed": -1}, "seed"),
        (APGDT, {"eps": 0.1, "n_target_classes": 0}, "n_target_classes"),
        (APGDT, {"eps": 0.1, "batch_size": 0}, "batch_size"),
    ],
)
def test_constructor_rejects_bad_arguments_naming_them(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)
    with pytest.raises(TypeError):
        cls(0.1)  # keyword-only


def test_losses_that_need_more_classes_than_the_model_has_raise_before_attacking():
    x, _ = synthetic_batch(4, 0)
    three = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    two = nn.Sequential(nn.Flatten(), nn.Linear(192, 2))
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"dlr.*3 classes"):
        APGD(eps=0.1, loss="dlr")(two, x, y)
    with pytest.raises(ValueError, match="4 classes"):
        APGDT(eps=0.1, n_target_classes=2)(three, x, y)
    with pytest.raises(ValueError, match="n_target_classes <= 9"):
        APGDT(eps=0.1, n_target_classes=10)(trained_cnn(), x, y)
    assert APGD(eps=0.1, steps=2)(two, x, y).num_samples == 4


def _batch(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images with some pixels exactly at 0 and 1, and random labels."""
    g = torch.Generator().manual_seed(seed)
    x = (1.4 * torch.rand(n, *SHAPE, generator=g) - 0.2).clamp(0.0, 1.0)
    return x, torch.randint(0, NUM_CLASSES, (n,), generator=g)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 6),
    eps=st.floats(0.0, 0.5),
    norm=st.sampled_from(["linf", "l2"]),
    variant=st.sampled_from(["ce", "dlr", "targeted"]),
    steps=st.integers(1, 6),
    restarts=st.integers(1, 2),
    batch_size=st.integers(1, 4),
    train_mode=st.booleans(),
)
def test_apgd_stays_in_the_ball_and_the_box_and_is_deterministic(
    seed, n, eps, norm, variant, steps, restarts, batch_size, train_mode
):
    model = tiny_cnn(seed, dropout=0.3).train(train_mode)
    x, y = _batch(seed, n)
    common = {"eps": eps, "norm": norm, "steps": steps, "restarts": restarts, "batch_size": batch_size}
    if variant == "targeted":
        attack = APGDT(**common, n_target_classes=2, seed=seed)
    else:
        attack = APGD(**common, loss=variant, seed=seed)
    res = attack(model, x, y)
    assert torch.isfinite(res.x_adv).all()
    assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()
    assert ((res.linf if norm == "linf" else res.l2) <= eps + TOL).all()
    assert all(m.training == train_mode for m in model.modules())
    again = attack(model, x, y)
    assert torch.equal(res.x_adv, again.x_adv) and torch.equal(res.success, again.success)


def test_seeds_matter_and_results_are_reported_like_pgd():
    model = trained_cnn()
    x, y = synthetic_batch(64, 4)
    a = APGD(eps=8 / 255, steps=5, seed=5)(model, x, y)
    assert torch.equal(a.x_adv, APGD(eps=8 / 255, steps=5, seed=5)(model, x, y).x_adv)
    assert not torch.equal(a.x_adv, APGD(eps=8 / 255, steps=5, seed=6)(model, x, y).x_adv)
    with torch.no_grad():
        assert torch.equal(a.success, a.clean_correct & (model(a.x_adv).argmax(1) != y))
    assert a.to_dict()["attack"] == "APGD" and a.to_dict()["backend"] == "native"
    assert APGDT(eps=8 / 255, steps=2, n_target_classes=2)(model, x, y).attack == "APGD-T"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_never_weaker_than_its_own_first_iterate(setup, norm):
    # The start and the first step (2·eps from it) do not depend on the budget, and the first
    # adversarial iterate is kept, so every sample one step breaks stays broken after 30.
    model, x, y = setup
    eps = 8 / 255 if norm == "linf" else 0.3
    for seed in range(2):
        one = APGD(eps=eps, norm=norm, steps=1, seed=seed)(model, x, y)
        many = APGD(eps=eps, norm=norm, steps=30, seed=seed)(model, x, y)
        assert not (one.success & ~many.success).any()
        assert many.success.sum() > one.success.sum()


@pytest.mark.parametrize(("norm", "grid"), [("linf", [0, 2, 4, 8, 12, 16]), ("l2", [0, 0.1, 0.2, 0.3, 0.5])])
def test_robust_accuracy_falls_monotonically_with_eps(setup, norm, grid):
    model, x, y = setup
    scale = 1 / 255 if norm == "linf" else 1.0
    accs = [APGD(eps=e * scale, norm=norm, steps=20)(model, x[:200], y[:200]).robust_accuracy for e in grid]
    assert accs == sorted(accs, reverse=True)
    assert accs[0] > 0.9 and accs[-1] < 0.3


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_early_exit_changes_no_trajectory(monkeypatch, norm):
    # In float64 a sample's iterates are bit-identical whatever else is in its batch, so dropping
    # broken samples must reproduce the run that keeps the whole batch to the end.
    model = trained_cnn().double()
    x, y = synthetic_batch(100, 11)
    x = x.double()
    eps = 8 / 255 if norm == "linf" else 0.3
    for attack in (
        APGD(eps=eps, norm=norm, steps=20, seed=1),
        APGDT(eps=eps, norm=norm, steps=10, n_target_classes=3),
    ):
        exiting = attack(model, x, y)
        monkeypatch.setattr(attacks.working_set, "CHECK_EVERY", 10**9)
        full = attack(model, x, y)
        monkeypatch.undo()
        assert torch.equal(exiting.x_adv, full.x_adv)
        assert exiting.success.any() and exiting.queries < full.queries


def test_broken_and_misclassified_samples_cost_no_more_passes():
    model = trained_cnn()
    x, y = synthetic_batch(64, 5)
    res = APGD(eps=0.1, steps=50)(model, x, y)
    assert res.robust_accuracy == 0.0
    assert res.queries < 64 * 51 / 5
    y_wrong = (y + 1) % 10
    res = APGD(eps=0.1, steps=5)(model, x, y_wrong)
    wrong = ~res.clean_correct
    assert wrong.sum() > 50
    assert torch.equal(res.x_adv[wrong], x[wrong]) and not res.success[wrong].any()


@pytest.mark.parametrize(("norm", "eps", "dual"), [("linf", 0.05, 1), ("l2", 0.3, 2)])
def test_reaches_the_optimal_robust_accuracy_of_a_binary_linear_model(norm, eps, dual):
    # Sample i is robust iff its margin exceeds eps·‖w_y − w_other‖_dual (the optimal perturbation
    # stays inside [0, 1]): APGD must get every sample right.
    with seeded(1):
        linear = nn.Linear(48, 2)
        x = 0.3 + 0.4 * torch.rand(400, 3, 4, 4)
    model = nn.Sequential(nn.Flatten(), linear)
    with torch.no_grad():
        z = model(x)
        y = z.argmax(1)
        margin = (z.gather(1, y[:, None]) - z.gather(1, 1 - y[:, None])).squeeze(1)
    robust = margin > eps * (linear.weight[0] - linear.weight[1]).norm(p=dual)
    assert 0.2 < robust.float().mean() < 0.8
    res = APGD(eps=eps, norm=norm, steps=10)(model, x, y)
    assert torch.equal(~res.success, robust)


@pytest.mark.parametrize("eps", [0.5, 0.7, 0.9])
def test_dlr_and_targeted_find_the_exact_l2_robustness_of_a_linear_model(eps):
    # Orthogonal classes: sample i is robust in the l2 ball iff its exact minimal distance exceeds eps.
    # Cross-entropy is not the margin: its maximum in the ball can spread the perturbation over
    # several classes without crossing any boundary, so APGD-CE misses some samples (as torchattacks'
    # does, the same ones); the margin-like DLR losses must not.
    model = orthogonal_linear()
    x, y, exact = linear_batch(200, 0, model)
    robust = exact > eps
    assert 0.1 < robust.float().mean() < 0.9
    targeted = APGDT(eps=eps, norm="l2", steps=20)(model, x, y)
    assert torch.equal(~targeted.success, robust)
    dlr = APGD(eps=eps, norm="l2", loss="dlr", steps=100)(model, x, y)
    mismatch = (~dlr.success) != robust
    assert mismatch.sum() <= 2 and ((exact[mismatch] / eps - 1).abs() < 0.04).all()


def test_is_at_least_as_strong_as_pgd_for_the_same_budget(setup):
    model, x, y = setup
    for eps in (8 / 255, 12 / 255):
        pgd = PGD(eps=eps, steps=20, seed=0)(model, x, y)
        apgd = APGD(eps=eps, steps=20, seed=0)(model, x, y)
        assert apgd.robust_accuracy <= pgd.robust_accuracy


# Differential tests: robust accuracy within one point of torchattacks' APGD and APGDT (500 samples,
# so 5 samples), where the attacks disagree with FGSM by several points. torchattacks starts from a
# random corner of the ball (linf) or its sphere (l2), the native attack uniformly inside it.
_TA_NORMS = {"linf": "Linf", "l2": "L2"}
_DIFF_CASES = [("linf", 12 / 255), ("l2", 0.5)]


@pytest.fixture(scope="module")
def torchattacks():
    return pytest.importorskip("torchattacks")


def _robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)).float().mean())


@pytest.mark.parametrize(("norm", "eps"), _DIFF_CASES)
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_robust_accuracy_agrees_with_torchattacks(setup, torchattacks, norm, eps, loss):
    model, x, y = setup
    native = APGD(eps=eps, norm=norm, steps=50, loss=loss)(model, x, y)
    assert 0.1 < native.robust_accuracy < 0.9
    peer = torchattacks.APGD(model, norm=_TA_NORMS[norm], eps=eps, steps=50, loss=loss, seed=0)(x, y)
    assert abs(native.robust_accuracy - _robust_accuracy(model, x, y, peer)) <= 0.01


@pytest.mark.parametrize(("norm", "eps"), _DIFF_CASES)
def test_apgdt_robust_accuracy_agrees_with_torchattacks(setup, torchattacks, norm, eps):
    model, x, y = setup
    native = APGDT(eps=eps, norm=norm, steps=20)(model, x, y)
    assert 0.1 < native.robust_accuracy < 0.9
    peer = torchattacks.APGDT(model, norm=_TA_NORMS[norm], eps=eps, steps=20, seed=0, n_classes=NUM_CLASSES)(
        x, y
    )
    assert abs(native.robust_accuracy - _robust_accuracy(model, x, y, peer)) <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize(("norm", "eps"), [("linf", 8 / 255), ("linf", 12 / 255), ("l2", 0.5)])
def test_autoattack_budgets_agree_with_torchattacks(setup, torchattacks, norm, eps):
    # AutoAttack's standard budgets: 100 steps, and APGD-T over the 9 other classes.
    model, x, y = setup
    ta_norm = _TA_NORMS[norm]
    for loss in ("ce", "dlr"):
        native = APGD(eps=eps, norm=norm, loss=loss)(model, x, y)
        peer = torchattacks.APGD(model, norm=ta_norm, eps=eps, steps=100, loss=loss, seed=0)(x, y)
        assert abs(native.robust_accuracy - _robust_accuracy(model, x, y, peer)) <= 0.01, loss
    native = APGDT(eps=eps, norm=norm)(model, x, y)
    peer = torchattacks.APGDT(model, norm=ta_norm, eps=eps, steps=100, seed=0, n_classes=NUM_CLASSES)(x, y)
    assert abs(native.robust_accuracy - _robust_accuracy(model, x, y, peer)) <= 0.01
