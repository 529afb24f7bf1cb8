"""Property tests on small random models: threat-model bounds, box, finiteness, determinism, mode."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks import FGSM, PGD, CarliniWagnerL2
from tests._attack_models import SHAPE, single_thread, tiny_cnn

pytestmark = pytest.mark.usefixtures(single_thread.__name__)

TOL = 1e-6


def _batch(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images with some pixels exactly at 0 and 1, and random labels."""
    g = torch.Generator().manual_seed(seed)
    x = (1.4 * torch.rand(n, *SHAPE, generator=g) - 0.2).clamp(0.0, 1.0)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _model(seed: int, train_mode: bool) -> torch.nn.Module:
    model = tiny_cnn(seed, dropout=0.3)
    return model.train(train_mode)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 6),
    eps=st.floats(0.0, 0.5),
    norm=st.sampled_from(["linf", "l2"]),
    loss=st.sampled_from(["ce", "margin"]),
    steps=st.integers(1, 4),
    restarts=st.integers(1, 2),
    batch_size=st.integers(1, 4),
    train_mode=st.booleans(),
)
def test_pgd_stays_in_the_ball_and_the_box_and_is_deterministic(
    seed, n, eps, norm, loss, steps, restarts, batch_size, train_mode
):
    model = _model(seed, train_mode)
    x, y = _batch(seed, n)
    attack = PGD(
        eps=eps, norm=norm, steps=steps, restarts=restarts, loss=loss, batch_size=batch_size, seed=seed
    )
    res = attack(model, x, y)
    assert torch.isfinite(res.x_adv).all()
    assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()
    dist = res.linf if norm == "linf" else res.l2
    assert (dist <= eps + TOL).all()
    assert all(m.training == train_mode for m in model.modules())
    again = attack(model, x, y)
    assert torch.equal(res.x_adv, again.x_adv) and torch.equal(res.success, again.success)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 6),
    eps=st.floats(0.0, 1.0),
    norm=st.sampled_from(["linf", "l2"]),
    train_mode=st.booleans(),
)
def test_fgsm_stays_in_the_ball_and_the_box(seed, n, eps, norm, train_mode):
    model = _model(seed, train_mode)
    x, y = _batch(seed, n)
    res = FGSM(eps=eps, norm=norm)(model, x, y)
    assert torch.isfinite(res.x_adv).all()
    assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()
    assert ((res.linf if norm == "linf" else res.l2) <= eps + TOL).all()
    assert all(m.training == train_mode for m in model.modules())


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 5),
    steps=st.integers(1, 6),
    binary_search_steps=st.integers(1, 3),
    confidence=st.floats(0.0, 2.0),
    train_mode=st.booleans(),
)
def test_cw_returns_valid_images_and_x_where_it_fails(
    seed, n, steps, binary_search_steps, confidence, train_mode
):
    model = _model(seed, train_mode)
    x, y = _batch(seed, n)
    attack = CarliniWagnerL2(
        steps=steps, binary_search_steps=binary_search_steps, confidence=confidence, initial_const=1.0
    )
    res = attack(model, x, y)
    assert torch.isfinite(res.x_adv).all()
    assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()
    assert torch.equal(res.x_adv[~res.success], x[~res.success])
    assert all(m.training == train_mode for m in model.modules())
    assert torch.equal(attack(model, x, y).x_adv, res.x_adv)
