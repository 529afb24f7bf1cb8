"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), linf: gradient-free random search.

"Square Attack: a query-efficient black-box adversarial attack via random search" (arXiv:1912.00049),
Algorithms 1 and 2, written from the paper. It reads only the model's logits, so masked or obfuscated
gradients cannot hide a weakness from it. Per sample:

* start from vertical stripes: every column of every channel moved by ``+eps`` or ``−eps`` (uniform);
* at iteration ``i`` pick one ``h⁽ⁱ⁾ × h⁽ⁱ⁾`` window uniformly among all positions in the image, add
  ``+2·eps`` or ``−2·eps`` (uniform, one value per channel) to the current point inside it and project
  onto the eps-ball and the [0, 1] box, so the window's pixels land on a vertex of the ball;
* keep the proposal if the loss improves, and stop once the sample is misclassified.

The window covers a fraction ``p`` of the image's pixels, ``h = round(√(p·H·W))`` (between 1 and the
image's side). ``p`` starts at ``p_init`` and is halved at iterations 10, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000 of the paper's 10,000-query budget; other budgets rescale those iterations
proportionally, as the paper does: coarse changes first, single pixels at the end.

Early exit drops broken samples from the working batch (``attacks.working_set``). Random draws are
made for the whole chunk at every iteration and each sample reads its own row, so a sample's
trajectory depends only on the seed, its place in the chunk and its own losses, never on which other
samples have already left.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attacks.fixed_eps import FixedEpsAttack
from attacks.losses import LOSSES
from attacks.projection import project_to_box
from attacks.result import AttackResult
from attacks.validation import check_choice, check_float, check_int
from attacks.working_set import BestIterateSet

# The paper's schedule: p is halved at each of these iterations of a 10,000-query budget.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_PAPER_BUDGET = 10_000


def p_at(iteration: int, queries: int, p_init: float) -> float:
    """The fraction of pixels a window covers at ``iteration`` (0-based) of a ``queries`` budget.

    The paper's halving iterations are rescaled to the budget: ``p`` is halved once for each of them
    that ``iteration · 10000 / queries`` has passed (compared in integers, so no rounding moves one).
    """
    passed = sum(iteration * _PAPER_BUDGET > mark * queries for mark in _HALVINGS)
    return p_init / 2**passed


def window_side(p: float, height: int, width: int) -> int:
    """Side of a square covering a fraction ``p`` of an ``height × width`` image: at least 1, at most fits."""
    return max(1, min(round(math.sqrt(p * height * width)), height, width))


class Square(FixedEpsAttack):
    """Untargeted linf Square Attack (Andriushchenko et al., 2020); see the module docstring.

    Gradient-free: a sample costs one forward pass for the stripes and one per iteration, so a sample
    never broken costs ``queries`` passes. For each sample the returned point is the first
    misclassified one found; for samples never broken, the point with the best loss.

    Args:
        eps: linf radius of the threat model (≥ 0), for images in [0, 1].
        queries: forward passes per sample (≥ 1), the paper's ``n_queries``: the stripes plus
            ``queries − 1`` random-search iterations.
        p_init: fraction of the pixels the first windows cover, in (0, 1] (the paper's linf ImageNet
            experiments use 0.05); halved along the schedule of the module docstring.
        loss: ``"margin"`` (``max_{j≠y} z_j − z_y``, the paper's choice) or ``"ce"`` (cross-entropy).
        backend: ``"native"`` only; no peer library is wired in.
        batch_size: samples per forward pass.
        seed: seed of the stripes and windows; the same seed gives the same result on the same device.
    """

    name = "Square"

    def __init__(
        self,
        *,
        eps: float,
        queries: int = 1000,
        p_init: float = 0.05,
        loss: str = "margin",
        backend: str = "native",
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm="linf", backend=backend, batch_size=batch_size)
        # Refused here rather than on the first call, so a bad configuration costs no forward pass.
        if self.backend != "native":
            raise ValueError(
                f"backend={backend!r} does not support Square: it is native only; use backend='native'"
            )
        self.queries = check_int("queries", queries, minimum=1)
        self.p_init = check_float("p_init", p_init, strict=True)
        if self.p_init > 1:
            raise ValueError(f"p_init must be a fraction of the pixels in (0, 1]; got {p_init!r}")
        self.loss = check_choice("loss", loss, tuple(LOSSES))
        self.seed = check_int("seed", seed, minimum=0)

    @property
    def random_seed(self) -> int | None:
        """The seed of the stripes and windows."""
        return self.seed

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> AttackResult:
        """Attack as :meth:`Attack.__call__`; ``x`` must be images shaped ``[N, C, H, W]``."""
        # Windows need a height and a width: refuse other shapes before the model runs.
        if isinstance(x, torch.Tensor) and x.dim() != 4:
            raise ValueError(f"Square needs x shaped [N, C, H, W]; got shape {tuple(x.shape)}")
        return super().__call__(model, x, y, generator=generator)

    def _native(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        todo: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        best = x.clone()
        active = todo.nonzero().squeeze(1)
        if self.eps == 0 or active.numel() == 0:
            return best
        assert generator is not None
        n, channels, height, width = x.shape
        loss_fn = LOSSES[self.loss]

        def signs(shape: tuple[int, ...]) -> torch.Tensor:
            """Uniform ±1 for the whole chunk, in the images' dtype."""
            bits = torch.randint(0, 2, shape, generator=generator, device=x.device)
            return (2 * bits - 1).to(x.dtype)

        def evaluate(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                logits = model(point)
            return loss_fn(logits, ws.y), logits.argmax(dim=1) != ws.y

        stripes = signs((n, channels, 1, width))
        # The stripes are always taken (a best loss of −inf), as in the paper.
        best_loss = torch.full((n,), float("-inf"), device=x.device)
        ws = BestIterateSet(active, best=best, found=~todo, loss=best_loss, x0=x[active], y=y[active])
        start = (ws.x0 + self.eps * stripes[active]).clamp(0.0, 1.0)
        ws.record(start, *evaluate(start))
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        for i in range(self.queries - 1):
            side = window_side(p_at(i, self.queries, self.p_init), height, width)
            top = torch.randint(0, height - side + 1, (n,), generator=generator, device=x.device)[ws.idx]
            left = torch.randint(0, width - side + 1, (n,), generator=generator, device=x.device)[ws.idx]
            colour = signs((n, channels, 1, 1))[ws.idx]
            in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
            in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
            window = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
            proposal = project_to_box(ws.x0, ws.best + 2.0 * self.eps * colour, self.eps, "linf")
            # Outside the window the current point is kept as it is, not re-projected (no rounding drift).
            proposal = torch.where(window, proposal, ws.best)
            # The proposal is kept where the loss improves, and also where it is the first misclassified
            # point even though the loss did not improve (cross-entropy can fall as the label flips;
            # with the margin loss a flip always improves it).
            ws.record(proposal, *evaluate(proposal))
            if not ws.drop_found(i + 1):
                return best
        ws.store()
        return best
