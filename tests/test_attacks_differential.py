"""Native attacks against foolbox and ART on one small seeded model and batch (CPU, a few seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks import FGSM, PGD, CarliniWagnerL2
from attacks.losses import ce_loss, value_and_grad
from tests._attack_models import single_thread, synthetic_batch, trained_cnn

pytestmark = pytest.mark.usefixtures(single_thread.__name__)

EPS = 8 / 255


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


@pytest.fixture(scope="module")
def setup_200(setup):
    model, x, y = setup
    return model, x[:200], y[:200]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_images_match_the_peers_except_where_the_gradient_vanishes(setup_200, norm):
    model, x, y = setup_200
    eps = EPS if norm == "linf" else 0.5
    native = FGSM(eps=eps, norm=norm)(model, x, y)
    _, _, grad = value_and_grad(model.eval(), x, y, ce_loss)
    ok = native.clean_correct
    # Where |gradient| is ~0 its sign is decided by rounding, which differs between libraries.
    tiny = grad.abs() <= 1e-7 * grad.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
    for backend in ("foolbox", "art"):
        peer = FGSM(eps=eps, norm=norm, backend=backend)(model, x, y)
        differs = (native.x_adv - peer.x_adv).abs() > 1e-5
        assert not (differs & ~tiny)[ok].any(), backend
        assert torch.equal(native.success, peer.success)


@pytest.mark.parametrize(("norm", "eps"), [("linf", EPS), ("l2", 0.5)])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_robust_accuracy_agrees_with_the_peers(setup, norm, eps, random_start):
    # 500 samples: different random starts alone move the accuracy by about a point on 200.
    model, x, y = setup
    kwargs = {"eps": eps, "norm": norm, "steps": 10, "random_start": random_start, "seed": 0}
    native = PGD(**kwargs)(model, x, y)
    assert 0.1 < native.robust_accuracy < 0.9  # the comparison is only informative in between
    for backend in ("foolbox", "art"):
        peer = PGD(**kwargs, backend=backend)(model, x, y)
        assert abs(native.robust_accuracy - peer.robust_accuracy) <= 0.02, backend
        if not random_start:
            # Same deterministic trajectory; best-iterate tracking can only add successes.
            assert not (peer.success & ~native.success).any(), backend


def test_peer_backends_are_seeded_and_leave_global_rng_alone(setup):
    model, x, y = setup
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()  # noqa: NPY002
    for backend in ("foolbox", "art"):
        attack = PGD(eps=EPS, steps=2, random_start=True, seed=3, backend=backend)
        first, second = attack(model, x[:32], y[:32]), attack(model, x[:32], y[:32])
        assert torch.equal(first.x_adv, second.x_adv), backend
        other = PGD(eps=EPS, steps=2, random_start=True, seed=4, backend=backend)(model, x[:32], y[:32])
        assert not torch.equal(first.x_adv, other.x_adv), backend
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])  # noqa: NPY002


def test_cw_is_at_least_as_strong_as_foolbox_for_the_same_budget(setup_200):
    model, x, y = setup_200
    budget = {"steps": 50, "binary_search_steps": 5, "lr": 0.01}
    native = CarliniWagnerL2(**budget)(model, x, y)
    peer = CarliniWagnerL2(**budget, backend="foolbox")(model, x, y)
    assert native.success.sum() >= peer.success.sum()
    assert native.median_l2() <= 1.05 * peer.median_l2()


def test_art_cw_runs_and_returns_x_where_it_fails(setup):
    model, x, y = setup
    # ART's C&W takes class gradients one label at a time: keep it tiny.
    res = CarliniWagnerL2(steps=5, binary_search_steps=2, initial_const=1.0, backend="art")(
        model, x[:8], y[:8]
    )
    assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()
    assert torch.equal(res.x_adv[~res.success], x[:8][~res.success])
    assert res.queries > 0
