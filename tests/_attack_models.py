"""Small seeded models and data for the attack tests: fast on CPU, deterministic, meaningful accuracy.

``trained_cnn`` fits a tiny CNN for a fraction of a second on 8x8 synthetic images (class prototypes
plus noise), so that attacks on it have something to break; the masked wrappers reproduce classic
gradient-masking mistakes for the sanity-check tests.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10
SHAPE = (3, 8, 8)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG inside the block only, so tests never disturb each other's streams."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def tiny_cnn(seed: int = 0, *, dropout: float = 0.0) -> nn.Module:
    """A small conv net on 3x8x8 inputs with batch norm (and optional dropout), seeded."""
    with seeded(seed):
        return _tiny_cnn(dropout)


def _tiny_cnn(dropout: float) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(32 * 4 * 4, NUM_CLASSES),
    )


def synthetic_batch(n: int, seed: int, *, noise: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1]: one fixed random prototype per class plus Gaussian noise, and their labels.

    Prototypes are close (grey ± 0.15) so a fitted model is accurate but far from robust at 8/255.
    """
    prototypes = 0.5 + 0.3 * (
        torch.rand(NUM_CLASSES, *SHAPE, generator=torch.Generator().manual_seed(1234)) - 0.5
    )
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x = (prototypes[y] + noise * torch.randn(n, *SHAPE, generator=g)).clamp(0.0, 1.0)
    return x, y


@functools.cache
def _trained_state(seed: int, steps: int) -> dict[str, torch.Tensor]:
    model = tiny_cnn(seed, dropout=0.1)
    x, y = synthetic_batch(2048, seed + 100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    # Dropout draws from the global RNG: seed it here so the model does not depend on test order.
    with seeded(seed):
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (128,))
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def trained_cnn(seed: int = 0, steps: int = 60) -> nn.Module:
    """A ``tiny_cnn`` briefly fitted to ``synthetic_batch`` data, returned in eval mode (cached per seed)."""
    model = tiny_cnn(seed, dropout=0.1)
    model.load_state_dict(_trained_state(seed, steps))
    return model.eval()


def orthogonal_linear(seed: int = 0, *, scale: float = 2.0) -> nn.Module:
    """Linear classifier on flattened 3x8x8 inputs whose class weights are orthonormal (times ``scale``).

    The weights are also orthogonal to the all-ones image, so a uniform grey shift changes no logit.
    Equal pairwise distances ``‖w_i − w_j‖`` make the class with the highest other logit also the one
    whose decision boundary is nearest in L2; that is what lets a local method like C&W reach the
    global minimal distance, so an analytic test measures the optimiser's precision alone.
    """
    d = int(torch.tensor(SHAPE).prod())
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(d, 1) / d**0.5
    a = torch.randn(d, NUM_CLASSES, generator=g)
    q, _ = torch.linalg.qr(a - ones @ (ones.T @ a))
    linear = nn.Linear(d, NUM_CLASSES)
    with torch.no_grad():
        linear.weight.copy_(q.T * scale)
        linear.bias.zero_()
    return nn.Sequential(nn.Flatten(), linear).eval()


def exact_min_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a ``Flatten→Linear`` model: min_j (z_y − z_j)/‖w_y − w_j‖ per sample, and that minimal point."""
    linear = model[1]
    w = linear.weight
    with torch.no_grad():
        z = model(x)
        gap = z.gather(1, y[:, None]) - z
        norms = (w[y][:, None, :] - w[None]).norm(dim=2)
        dist = gap / norms
        dist[torch.arange(x.shape[0]), y] = float("inf")
        best, j = dist.min(dim=1)
        direction = w[j] - w[y]
        point = x.flatten(1) + (best / direction.norm(dim=1))[:, None] * direction
    return best, point.view_as(x)


def linear_batch(
    n: int, seed: int, model: nn.Module, *, spread: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs for ``orthogonal_linear`` whose minimal adversarial point stays inside [0.02, 0.98].

    ``spread`` scales every input's offset from grey, and with it every minimal distance: at 1 their
    median is about 0.7 (0.05 per pixel); at 0.05 about 0.04, the 0.003 per pixel of an undefended
    CIFAR-10 model's median C&W distance (about 0.15 over 3072 pixels).
    Returns images, the model's own predictions as labels, and the exact minimal L2 distances.
    """
    q = model[1].weight.T / model[1].weight.norm(dim=1)
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(0, NUM_CLASSES, (4 * n,), generator=g)
    v = 0.3 * torch.randn(4 * n, NUM_CLASSES, generator=g)
    v[torch.arange(4 * n), c] += 1.5
    x = (0.5 + spread * v @ q.T).view(-1, *SHAPE)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    dist, point = exact_min_l2(model, x, y)
    inside = ((x >= 0.02) & (x <= 0.98) & (point >= 0.02) & (point <= 0.98)).flatten(1).all(dim=1)
    keep = inside.nonzero().squeeze(1)[:n]
    return x[keep], y[keep], dist[keep]


class QuantizedInput(nn.Module):
    """Rounds the input to ``levels`` grey levels before the model: gradients are exactly zero."""

    def __init__(self, model: nn.Module, levels: int = 8) -> None:
        super().__init__()
        self.model = model
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


class DoubleSoftmax(nn.Module):
    """Returns softmax(softmax(logits)): probabilities instead of logits, squashed twice."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(F.softmax(self.model(x), dim=1), dim=1)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run a test on one intra-op thread: on a shared 2-core machine, tiny models run many times
    faster that way, because two threads spin on each other whenever the other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
