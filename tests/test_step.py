"""The training step: tensor-LR SGD against torch.optim.SGD, the eager step, and the CUDA-graph step.

The graph tests need a GPU (``-m gpu``); on CPU the same step code runs eagerly and is covered here
and by every training test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from robust_mnv1.infra.device import use_cuda_graph
from robust_mnv1.infra.errors import UserError
from robust_mnv1.models import build_model
from robust_mnv1.training.fit import cross_entropy_objective
from robust_mnv1.training.objectives import make_objective
from robust_mnv1.training.optim import TensorLRSGD
from robust_mnv1.training.step import CapturedStep, EagerStep

PGD_AT = OmegaConf.create(
    {"method": "pgd", "eps_255": 8, "step_255": 2, "steps": 3, "label_smoothing": 0.0, "beta": 6.0}
)


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _groups(model):
    decay = [p for p in model.parameters() if p.ndim > 1]
    return decay, [p for p in model.parameters() if p.ndim <= 1]


@pytest.mark.parametrize("nesterov", [True, False])
def test_tensor_lr_sgd_matches_torch_sgd(nesterov):
    ref, ours = _mlp(0), _mlp(0)
    decay, rest = _groups(ref)
    torch_opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-3}, {"params": rest, "weight_decay": 0.0}],
        lr=0.1,
        momentum=0.9,
        nesterov=nesterov,
    )
    decay, rest = _groups(ours)
    opt = TensorLRSGD([(decay, 5e-3), (rest, 0.0)], lr=0.1, momentum=0.9, nesterov=nesterov)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        x, y = torch.randn(32, 12, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        lr = 0.05 * (step + 1)
        for group in torch_opt.param_groups:
            group["lr"] = lr
        opt.set_lr(lr)
        for model, o in ((ref, torch_opt), (ours, opt)):
            o.zero_grad()
            F.cross_entropy(model(x), y).backward()
            o.step()
    for a, b in zip(ref.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_zero_lr_leaves_parameters_but_momentum_moves():
    model = _mlp(0)
    opt = TensorLRSGD([(list(model.parameters()), 0.0)], lr=0.0, momentum=0.9, nesterov=True)
    before = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(torch.randn(4, 12)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(buf.abs().sum() > 0 for buf in opt.buffers)


def test_tensor_lr_sgd_names_a_parameter_without_gradient():
    model = _mlp(0)
    opt = TensorLRSGD([(list(model.parameters()), 0.0)], lr=0.1, momentum=0.9, nesterov=True)
    F.cross_entropy(model[0](torch.randn(2, 12))[:, :3], torch.tensor([0, 1])).backward()
    with pytest.raises(RuntimeError, match="no gradient"):
        opt.step()


def test_eager_step_feeds_draw_to_the_objective():
    torch.manual_seed(0)
    model = build_model(alpha=0.25, profile="cifar", num_classes=10)
    objective = make_objective(PGD_AT, seed=3)
    objective.set_epoch(0)
    seen = []
    draw = objective.draw

    def spy(x):
        seen.append(draw(x))
        return seen[-1]

    objective.draw = spy
    opt = TensorLRSGD([(list(model.parameters()), 0.0)], lr=0.01, momentum=0.9, nesterov=True)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    loss, logits = EagerStep(model, objective, opt, torch.device("cpu"))(x, y)
    assert len(seen) == 1 and seen[0].shape == x.shape
    assert seen[0].abs().max() <= 8 / 255 + 1e-7
    assert loss.ndim == 0 and logits.shape == (4, 10) and not logits.requires_grad


@pytest.mark.parametrize("method", ["pgd", "fgsm_rs", "trades"])
def test_adversarial_objectives_only_feed_the_model_pixels_in_range(method):
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))

        def forward(self, x):
            seen.append((float(x.detach().min()), float(x.detach().max())))
            return self.net(x)

    objective = make_objective(OmegaConf.merge(PGD_AT, {"method": method}), seed=0)
    objective.set_epoch(0)
    # Saturated pixels: a random start in the eps ball leaves [0, 1] on half of them.
    x = torch.zeros(8, 3, 2, 2)
    x[4:] = 1.0
    torch.manual_seed(0)
    objective(Spy(), x, torch.arange(8) % 3, objective.draw(x))
    assert len(seen) >= 3
    assert min(lo for lo, _ in seen) >= 0.0 and max(hi for _, hi in seen) <= 1.0


def test_captured_step_refuses_cpu():
    model = _mlp(0)
    opt = TensorLRSGD([(list(model.parameters()), 0.0)], lr=0.1, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="CUDA device"):
        CapturedStep(model, cross_entropy_objective(), opt, torch.device("cpu"))


@pytest.mark.parametrize(
    ("choice", "device", "expected"),
    [("auto", "cpu", False), ("auto", "cuda", True), (False, "cuda", False), (True, "cuda", True)],
)
def test_use_cuda_graph(choice, device, expected):
    assert use_cuda_graph(OmegaConf.create({"cuda_graph": choice}), torch.device(device)) is expected


@pytest.mark.parametrize(("choice", "match"), [(True, "needs a CUDA device"), ("yes", "not one of")])
def test_use_cuda_graph_rejects(choice, match):
    with pytest.raises(UserError, match=match):
        use_cuda_graph(OmegaConf.create({"cuda_graph": choice}), torch.device("cpu"))


def _flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def _train_steps(step_cls, objective_factory, batches, lrs):
    """Parameters (flattened) before and after each step, and the losses, of a short run."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = build_model(alpha=0.25, profile="cifar", num_classes=10).to(device)
    model = model.to(memory_format=torch.channels_last)
    objective = objective_factory()
    if hasattr(objective, "set_epoch"):
        objective.set_epoch(0)
    opt = TensorLRSGD([(list(model.parameters()), 5e-4)], lr=lrs[0], momentum=0.9, nesterov=True)
    step = step_cls(model, objective, opt, device)
    params, losses = [_flat_params(model)], []
    for (x, y), lr in zip(batches, lrs, strict=True):
        opt.set_lr(lr)
        loss, _ = step(x, y)
        losses.append(loss.item())
        params.append(_flat_params(model))
    return params, losses


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["standard", "pgd_at"])
def test_captured_step_trains_like_the_eager_step(kind):
    """Same batches and LR schedule: the graph makes the eager run's updates, step by step.

    A graph that kept the warm-up steps' updates, or baked in the first LR, would move the
    parameters several times as far as the eager run; the zero-LR step must not move them at all.
    """
    gen = torch.Generator(device="cuda").manual_seed(0)
    batches = [
        (
            torch.rand(64, 3, 32, 32, device="cuda", generator=gen),
            torch.randint(0, 10, (64,), device="cuda", generator=gen),
        )
        for _ in range(5)
    ]
    lrs = [0.05, 0.0, 0.02, 0.01, 0.005]
    factory = cross_entropy_objective if kind == "standard" else lambda: make_objective(PGD_AT, seed=1)
    eager, eager_losses = _train_steps(EagerStep, factory, batches, lrs)
    graphed, graph_losses = _train_steps(CapturedStep, factory, batches, lrs)
    assert torch.equal(graphed[1], graphed[2]), "a zero learning rate moved the parameters"
    for t in (1, 3, 5):
        moved = eager[t] - eager[0]
        gap = (graphed[t] - graphed[0] - moved).norm() / moved.norm()
        assert gap < 0.05, f"after step {t} the graph's update differs from eager's by {gap:.3f}"
    assert graph_losses == pytest.approx(eager_losses, rel=5e-2)
