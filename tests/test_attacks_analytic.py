"""Attacks on linear models, where the optimal adversarial examples have closed forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks import FGSM, PGD, CarliniWagnerL2
from tests._attack_models import NUM_CLASSES, linear_batch, orthogonal_linear, seeded, single_thread

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("spread", [1.0, 0.2, 0.05])
def test_cw_defaults_find_the_exact_minimal_l2_distance_of_a_linear_model(seed, spread):
    # The bar for C&W's defaults, at median distances of 0.05, 0.01 and 0.003 per pixel (the last as an
    # undefended CIFAR-10 model's): 95% of the samples within 2% of the exact minimum. At 0.003 it
    # needs the binary search's verdict to ignore the first steps' crossings (91-93% without).
    model = orthogonal_linear(seed)
    x, y, exact = linear_batch(200, seed, model, spread=spread)
    assert x.shape[0] == 200 and len(y.unique()) == NUM_CLASSES
    res = CarliniWagnerL2()(model, x, y)
    assert res.success.all()
    ratio = res.l2 / exact
    assert (ratio >= 1 - 1e-4).all()  # no attack can beat the true minimum
    assert (ratio <= 1.02).float().mean() >= 0.95
    assert ratio.median() <= 1.005


@pytest.mark.parametrize("seed", [0, 1])
def test_cw_line_search_shortens_the_distances_of_a_linear_model(seed):
    # At 0.003 per pixel Adam's last steps (lr/10 per pixel) still overshoot the boundary along the
    # final direction; the line search walks most samples back (93% and 91.5% within 1% without it).
    model = orthogonal_linear(seed)
    x, y, exact = linear_batch(200, seed, model, spread=0.05)
    searched = CarliniWagnerL2()(model, x, y)
    plain = CarliniWagnerL2(line_search_steps=0)(model, x, y)
    assert torch.equal(searched.success, plain.success) and searched.success.all()
    assert (searched.l2 <= plain.l2).all()
    assert (searched.l2 < plain.l2).float().mean() >= 0.75
    assert (searched.l2 / exact >= 1 - 1e-4).all()
    assert (searched.l2 / exact <= 1.01).float().mean() >= 0.95


def test_fgsm_matches_the_closed_form_step_on_a_linear_model():
    with seeded(0):
        linear = nn.Linear(12, 4)
        x = 0.2 + 0.6 * torch.rand(64, 3, 2, 2)
    model = nn.Sequential(nn.Flatten(), linear)
    with torch.no_grad():
        y = model(x).argmax(1)
        # d CE / dx = Wᵀ (softmax(z) − onehot(y)) for z = Wx + b.
        grad = (F.softmax(model(x), 1) - F.one_hot(y, 4).float()) @ linear.weight
    grad = grad.view_as(x)
    linf = FGSM(eps=0.1)(model, x, y).x_adv
    assert torch.allclose(linf, (x + 0.1 * grad.sign()).clamp(0, 1), atol=1e-6)
    l2 = FGSM(eps=0.5, norm="l2")(model, x, y).x_adv
    unit = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(l2, (x + 0.5 * unit).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize(("norm", "eps", "dual"), [("linf", 0.05, 1), ("l2", 0.3, 2)])
def test_pgd_reaches_the_optimal_robust_accuracy_of_a_binary_linear_model(norm, eps, dual):
    # Two classes: sample i is robust iff its margin exceeds eps·‖w_y − w_other‖_dual, as long as the
    # optimal perturbation stays inside [0, 1] (inputs sit in [0.3, 0.7] and eps is small). Samples
    # within 2% of that threshold may go either way in 20 steps.
    with seeded(1):
        linear = nn.Linear(48, 2)
        x = 0.3 + 0.4 * torch.rand(400, 3, 4, 4)
    model = nn.Sequential(nn.Flatten(), linear)
    with torch.no_grad():
        y = model(x).argmax(1)
        margin = (model(x).gather(1, y[:, None]) - model(x).gather(1, 1 - y[:, None])).squeeze(1)
    w_gap = (linear.weight[0] - linear.weight[1]).norm(p=dual)
    ratio = margin / (eps * w_gap)
    robust = ratio > 1
    assert 0.2 < robust.float().mean() < 0.8
    res = PGD(eps=eps, norm=norm, steps=20)(model, x, y)
    mismatch = (~res.success) != robust
    assert not (mismatch & ((ratio - 1).abs() > 0.02)).any()
    assert mismatch.float().mean() <= 0.01
