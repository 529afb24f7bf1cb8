"""The attacks package's public contract: validation, model hygiene, results, seeds and budgets."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from attacks import APGD, APGDT, FGSM, PGD, AttackResult, CarliniWagnerL2, worst_case
from attacks.fixed_eps import FixedEpsAttack
from attacks.losses import other_max
from tests._attack_models import seeded, single_thread, synthetic_batch, tiny_cnn, trained_cnn

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


class CountingModel(nn.Module):
    """Counts forward calls, records the training flag seen by each, and can fail on a chosen call."""

    def __init__(self, model: nn.Module, fail_on_call: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.modes: list[bool] = []
        self.fail_on_call = fail_on_call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.modes.append(self.training)
        if self.calls == self.fail_on_call:
            raise RuntimeError("boom")
        return self.model(x)


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (PGD, {"eps": -0.1}, "eps"),
        (PGD, {"eps": math.nan}, "eps"),
        (PGD, {"eps": 0.1, "steps": 0}, "steps"),
        (PGD, {"eps": 0.1, "norm": "l1"}, "norm"),
        (PGD, {"eps": 0.1, "backend": "torchattacks"}, "backend"),
        (PGD, {"eps": 0.1, "loss": "hinge"}, "loss"),
        (PGD, {"eps": 0.1, "restarts": 0}, "restarts"),
        (PGD, {"eps": 0.1, "step_size": 0.0}, "step_size"),
        (PGD, {"eps": 0.1, "random_start": 1}, "random_start"),
        (PGD, {"eps": 0.1, "batch_size": 0}, "batch_size"),
        (PGD, {"eps": 0.1, "seed": -1}, "seed"),
        (PGD, {"eps": 0.1, "restarts": 2, "random_start": False}, "random_start"),
        (FGSM, {"eps": -1.0}, "eps"),
        (FGSM, {"eps": 0.1, "norm": "linf2"}, "norm"),
        (CarliniWagnerL2, {"steps": 0}, "steps"),
        (CarliniWagnerL2, {"binary_search_steps": 0}, "binary_search_steps"),
        (CarliniWagnerL2, {"lr": 0.0}, "lr"),
        (CarliniWagnerL2, {"confidence": -1.0}, "confidence"),
        (CarliniWagnerL2, {"initial_const": 0.0}, "initial_const"),
        (CarliniWagnerL2, {"line_search_steps": -1}, "line_search_steps"),
        (CarliniWagnerL2, {"line_search_steps": 2.0}, "line_search_steps"),
    ],
)
def test_constructor_rejects_bad_arguments_naming_them(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_constructors_are_keyword_only():
    with pytest.raises(TypeError):
        PGD(0.1)  # type: ignore[misc]
    with pytest.raises(TypeError):
        FGSM(0.1)  # type: ignore[misc]


@pytest.mark.parametrize("backend", ["foolbox", "art"])
@pytest.mark.parametrize("cls", [PGD, FGSM])
def test_peer_backends_refuse_margin_loss_instead_of_ignoring_it(cls, backend):
    with pytest.raises(ValueError, match="margin.*" + backend):
        cls(eps=0.1, loss="margin", backend=backend)


class _NativeOnly(FixedEpsAttack):
    """A fixed-eps attack that maps onto no peer library."""

    name = "NativeOnly"

    def _native(self, model, x, y, todo, generator):
        return x


@pytest.mark.parametrize("backend", ["foolbox", "art"])
def test_a_peer_backend_the_attack_does_not_map_onto_raises_naming_both(backend):
    x, y = synthetic_batch(4, 0)
    with pytest.raises(ValueError, match=f"backend='{backend}' does not support _NativeOnly"):
        _NativeOnly(eps=0.1, norm="linf", backend=backend)(tiny_cnn(), x, y)


def _bad_inputs():
    x, y = synthetic_batch(4, 0)
    nan_x = x.clone()
    nan_x[0, 0, 0, 0] = math.nan
    return [
        (x + 1.0, y, "x must lie in"),
        (x - 0.5, y, "x must lie in"),
        (nan_x, y, "no NaN"),
        (x, y[:3], "y must have shape"),
        (x, y.float(), "y must be an integer"),
        ((x * 255).long(), y, "x must be a floating-point"),
        (x[:0], y[:0], "N >= 1"),
    ]


@pytest.mark.parametrize(("x", "y", "message"), _bad_inputs())
def test_bad_inputs_raise_before_the_model_runs(x, y, message):
    model = CountingModel(tiny_cnn())
    with pytest.raises(ValueError, match=message):
        PGD(eps=0.1, steps=2)(model, x, y)
    assert model.calls == 0


def test_labels_outside_the_model_classes_and_non_logit_outputs_raise():
    x, y = synthetic_batch(4, 0)
    with pytest.raises(ValueError, match="class indices"):
        FGSM(eps=0.1)(tiny_cnn(), x, y + 10)
    flat = nn.Sequential(tiny_cnn(), nn.Flatten(0))
    with pytest.raises(ValueError, match="logits shaped"):
        FGSM(eps=0.1)(flat, x, y)


@pytest.mark.parametrize("backend", ["native", "foolbox", "art"])
def test_model_state_is_restored_and_no_gradient_reaches_the_parameters(backend):
    model = tiny_cnn(dropout=0.5)
    model.train()
    model[1].eval()  # mixed modes must come back exactly, not as a blanket train()
    frozen = model[0].bias
    frozen.requires_grad_(False)
    marker = torch.full_like(model[-1].weight, 7.0)
    model[-1].weight.grad = marker
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x, y = synthetic_batch(16, 0)

    FGSM(eps=0.03, backend=backend)(model, x, y)

    assert [m.training for m in model.modules()] == modes
    assert not frozen.requires_grad
    assert all(p.requires_grad for p in model.parameters() if p is not frozen)
    assert model[-1].weight.grad is marker
    assert all(p.grad is None for p in model.parameters() if p is not model[-1].weight)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # eval mode: batch-norm statistics untouched


@pytest.mark.parametrize("fail_on_call", [1, 3])
def test_model_mode_is_restored_when_the_model_raises(fail_on_call):
    model = CountingModel(tiny_cnn(), fail_on_call=fail_on_call)
    model.train()
    x, y = synthetic_batch(8, 0)
    with pytest.raises(RuntimeError, match="boom"):
        PGD(eps=0.1, steps=3)(model, x, y)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_every_forward_pass_runs_in_eval_mode():
    model = CountingModel(tiny_cnn(dropout=0.5)).train()
    x, y = synthetic_batch(8, 0)
    PGD(eps=0.1, steps=3)(model, x, y)
    CarliniWagnerL2(steps=3, binary_search_steps=2)(model, x, y)
    APGDT(eps=0.1, steps=3, n_target_classes=2)(model, x, y)
    assert model.modes and not any(model.modes)


def test_attacks_work_under_no_grad():
    x, y = synthetic_batch(16, 1)
    model = trained_cnn()
    with torch.no_grad():
        res = PGD(eps=16 / 255, steps=5)(model, x, y)
        assert res.success.any()
        assert APGD(eps=16 / 255, steps=5)(model, x, y).success.any()


ALL_ATTACKS = [
    FGSM(eps=0.1),
    FGSM(eps=0.1, backend="foolbox"),
    PGD(eps=0.1, steps=2),
    PGD(eps=0.1, steps=2, backend="art"),
    CarliniWagnerL2(steps=2, binary_search_steps=1),
    APGD(eps=0.1, steps=2),
    APGDT(eps=0.1, steps=2, n_target_classes=2),
]


class TupleOutput(nn.Module):
    """A research model that returns its logits together with its features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x), x.flatten(1)


@pytest.mark.parametrize("attack", ALL_ATTACKS, ids=repr)
def test_a_model_returning_a_tuple_raises_one_clear_error(attack):
    x, y = synthetic_batch(8, 0)
    with pytest.raises(ValueError, match="one logits tensor; got tuple"):
        attack(TupleOutput(trained_cnn()), x, y)


@pytest.mark.parametrize("attack", ALL_ATTACKS, ids=repr)
def test_a_call_under_inference_mode_raises_one_clear_error(attack):
    model = CountingModel(trained_cnn())
    x, y = synthetic_batch(8, 0)
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        attack(model, x, y)
    assert model.calls == 0


def test_inference_tensors_as_inputs_work_but_an_inference_mode_model_is_refused():
    model = trained_cnn()
    x, y = synthetic_batch(16, 1)
    with torch.inference_mode():
        x_inf, y_inf = x.clone(), y.clone()
        built_inside = tiny_cnn()
    for attack in (FGSM(eps=16 / 255), APGD(eps=16 / 255, steps=3)):
        assert torch.equal(attack(model, x_inf, y_inf).x_adv, attack(model, x, y).x_adv)
    with pytest.raises(ValueError, match="build or load the model outside inference mode"):
        PGD(eps=0.1, steps=2)(built_inside, x, y)


def test_result_fields_are_consistent():
    model = trained_cnn()
    x, y = synthetic_batch(64, 2)
    res = PGD(eps=8 / 255, steps=5, batch_size=24)(model, x, y)
    assert isinstance(res, AttackResult)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    for field in (res.success, res.clean_correct, res.linf, res.l2):
        assert field.shape == (64,)
    with torch.no_grad():
        assert torch.equal(res.clean_correct, model(x).argmax(1) == y)
        assert torch.equal(res.success, res.clean_correct & (model(res.x_adv).argmax(1) != y))
    assert not (res.success & ~res.clean_correct).any()
    assert res.robust_accuracy == pytest.approx(float((res.clean_correct & ~res.success).float().mean()))
    assert res.queries > 0 and res.seconds > 0
    diff = (res.x_adv - x).flatten(1)
    assert torch.allclose(res.linf, diff.abs().amax(1)) and torch.allclose(res.l2, diff.norm(dim=1))
    summary = json.loads(json.dumps(res.to_dict()))
    assert summary["attack"] == "PGD" and summary["backend"] == "native"


def test_native_attacks_leave_misclassified_samples_alone():
    model = trained_cnn()
    x, y = synthetic_batch(64, 3)
    y_wrong = (y + 1) % 10  # nearly every sample is now "misclassified"
    for attack in (
        FGSM(eps=0.1),
        PGD(eps=0.1, steps=3),
        CarliniWagnerL2(steps=5, binary_search_steps=2),
        APGDT(eps=0.1, steps=3, n_target_classes=2),
    ):
        res = attack(model, x, y_wrong)
        wrong = ~res.clean_correct
        assert wrong.sum() > 50
        assert torch.equal(res.x_adv[wrong], x[wrong])
        assert not res.success[wrong].any()


@pytest.mark.parametrize(("norm", "loss"), [("linf", "ce"), ("l2", "margin")])
def test_fgsm_over_eps_equals_one_call_per_eps_bit_for_bit(norm, loss):
    model = trained_cnn()
    x, y = synthetic_batch(70, 5)
    y[:9] = (y[:9] + 1) % 10  # some samples start misclassified and must be left alone
    eps = [0.0, 1 / 255, 8 / 255, 0.3, 2.0]
    swept = FGSM.over_eps(model, x, y, eps, norm=norm, loss=loss, batch_size=32)
    assert len(swept) == len(eps)
    for e, res in zip(eps, swept, strict=True):
        one = FGSM(eps=e, norm=norm, loss=loss, batch_size=32)(model, x, y)
        assert torch.equal(res.x_adv, one.x_adv)
        assert torch.equal(res.success, one.success)
        assert torch.equal(res.clean_correct, one.clean_correct)
        assert res.queries == one.queries == 70
    assert swept[-1].success.sum() > 0  # the comparison is not between two no-ops
    assert FGSM.over_eps(model, x, y, []) == []
    with pytest.raises(ValueError, match="eps"):
        FGSM.over_eps(model, x, y, [0.1, -1.0])


def test_same_seed_same_result_and_seeds_matter():
    model = trained_cnn()
    x, y = synthetic_batch(32, 4)
    a = PGD(eps=8 / 255, steps=3, seed=5)(model, x, y)
    b = PGD(eps=8 / 255, steps=3, seed=5)(model, x, y)
    c = PGD(eps=8 / 255, steps=3, seed=6)(model, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_queries_count_the_forward_passes_made():
    # Zero weights: constant logits, zero gradients, so PGD can never break anything or stop early.
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 10))
    nn.init.zeros_(model[1].weight)
    x, _ = synthetic_batch(10, 0)
    y = torch.zeros(10, dtype=torch.long)
    model[1].bias.data[0] = 1.0
    assert PGD(eps=0.1, steps=5, random_start=False)(model, x, y).queries == 10 * 6
    assert FGSM(eps=0.1)(model, x, y).queries == 10
    assert PGD(eps=0.0, steps=5)(model, x, y).queries == 0


def test_early_exit_skips_samples_already_broken():
    model = trained_cnn()
    x, y = synthetic_batch(64, 5)
    res = PGD(eps=0.1, steps=20)(model, x, y)
    assert res.robust_accuracy == 0.0
    assert res.queries < 64 * 21 / 2


def test_more_steps_with_a_fixed_step_size_never_weaken_pgd():
    model = trained_cnn()
    x, y = synthetic_batch(128, 6)
    short = PGD(eps=6 / 255, steps=3, step_size=1 / 255, random_start=False)(model, x, y)
    long = PGD(eps=6 / 255, steps=8, step_size=1 / 255, random_start=False)(model, x, y)
    assert not (short.success & ~long.success).any()
    assert long.success.sum() > short.success.sum()


def test_restarts_keep_every_sample_broken_by_the_first():
    model = trained_cnn()
    x, y = synthetic_batch(128, 7)
    one = PGD(eps=6 / 255, steps=4, seed=3)(model, x, y)
    three = PGD(eps=6 / 255, steps=4, restarts=3, seed=3)(model, x, y)
    assert not (one.success & ~three.success).any()
    assert three.robust_accuracy <= one.robust_accuracy


def test_cw_returns_x_where_it_fails_and_gives_an_accuracy_curve():
    model = trained_cnn()
    x, y = synthetic_batch(64, 8)
    weak = CarliniWagnerL2(steps=2, binary_search_steps=1, initial_const=1e-4)(model, x, y)
    assert (~weak.success).any()
    assert torch.equal(weak.x_adv[~weak.success], x[~weak.success])
    res = CarliniWagnerL2(steps=30, binary_search_steps=4)(model, x, y)
    curve = [res.robust_accuracy_at(e) for e in (0.0, 0.1, 0.3, 1.0, 10.0)]
    assert curve == sorted(curve, reverse=True)
    assert curve[0] == pytest.approx(res.clean_accuracy)
    assert res.robust_accuracy_at(math.inf) == pytest.approx(res.robust_accuracy)
    with pytest.raises(ValueError, match="minimization"):
        PGD(eps=0.1, steps=1)(model, x, y).robust_accuracy_at(0.1)


def test_cw_moves_pixels_that_sit_exactly_on_the_box_edges():
    # Binary images: every pixel is 0 or 1. foolbox's tanh shrink of 0.999999 pins all of them (it
    # breaks none of these samples); ours must still move them.
    with seeded(0):
        model = nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).eval()
        x = (torch.rand(32, 3, 8, 8) > 0.5).float()
    with torch.no_grad():
        y = model(x).argmax(1)
    res = CarliniWagnerL2(steps=100, binary_search_steps=5, lr=0.01)(model, x, y)
    assert res.success.all()
    assert res.l2.median() < 0.5


@pytest.mark.parametrize("confidence", [0.0, 0.5])
def test_cw_line_search_keeps_every_success_and_never_lengthens_a_distance(confidence):
    # A small budget leaves overshoot to remove; the images have pixels at exactly 0 and 1. The line
    # search runs after the optimisation, so with line_search_steps=0 the attack stops at the points
    # the search starts from.
    model = trained_cnn()
    x, y = synthetic_batch(64, 10)
    budget = {"steps": 30, "binary_search_steps": 4, "confidence": confidence}
    searched = CarliniWagnerL2(**budget)(model, x, y)
    plain = CarliniWagnerL2(**budget, line_search_steps=0)(model, x, y)
    assert plain.success.sum() >= 20
    assert torch.equal(searched.success, plain.success)
    assert (searched.l2 <= plain.l2).all()
    assert (searched.l2[plain.success] < plain.l2[plain.success]).float().mean() >= 0.9
    assert ((searched.x_adv >= 0) & (searched.x_adv <= 1)).all()
    assert torch.equal(searched.x_adv[~searched.success], x[~searched.success])
    with torch.no_grad():
        logits = model(searched.x_adv[searched.success])
    y_broken = y[searched.success]
    true = logits.gather(1, y_broken[:, None]).squeeze(1)
    assert (true + confidence < other_max(logits, y_broken)).all()


def test_worst_case_takes_any_success_and_the_smallest_distance():
    model = trained_cnn()
    x, y = synthetic_batch(64, 9)
    fgsm = FGSM(eps=6 / 255)(model, x, y)
    pgd = PGD(eps=6 / 255, steps=5)(model, x, y)
    both = worst_case([fgsm, pgd])
    assert torch.equal(both.success, fgsm.success | pgd.success)
    assert both.queries == fgsm.queries + pgd.queries
    with torch.no_grad():
        assert torch.equal(both.success, both.clean_correct & (model(both.x_adv).argmax(1) != y))
    cw_short = CarliniWagnerL2(steps=10, binary_search_steps=3)(model, x, y)
    cw_long = CarliniWagnerL2(steps=30, binary_search_steps=3)(model, x, y)
    best = worst_case([cw_short, cw_long])
    assert best.minimization
    both_ok = cw_short.success & cw_long.success
    assert torch.equal(best.l2[both_ok], torch.minimum(cw_short.l2, cw_long.l2)[both_ok])
    with pytest.raises(ValueError, match="same model and batch"):
        worst_case([pgd, PGD(eps=0.1, steps=1)(model, x[:10], y[:10])])
    with pytest.raises(ValueError, match="at least one"):
        worst_case([])


def test_importing_attacks_does_not_import_the_peer_libraries():
    code = "import sys, attacks; print('foolbox' in sys.modules, 'art' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
