"""Carlini–Wagner L2 (Carlini & Wagner, 2017): a minimization attack, fully batched.

Per sample it minimises ``‖x' − x‖² + c · max(z_y − max_{j≠y} z_j + κ, 0)`` with Adam in tanh space
and binary-searches ``c``. Five departures from the reference implementation, each meant to give
smaller distances for the same step budget; the comparison with foolbox's C&W (``bench/attacks_bench.py``,
``docs/performance.md``) measures the first three together, the "C&W defaults" entry the last two:

* The tanh map is shrunk by 0.9 and written relative to ``x``, so pixels at exactly 0 or 1 can move
  (see ``docs/attacks.md``).
* Adam's step size is ``lr`` for the first half of each binary-search step and then decays linearly
  to ``lr / 10``, so the last steps settle on the decision boundary instead of oscillating across it
  by a full step.
* Abort-early is per sample and checked every tenth of the steps. A sample that has not been
  adversarial yet in this binary-search step leaves the working batch once its loss fell by less than
  0.01% since the last check (the reference rule, which applies it to the batch's summed loss). A
  sample that has been adversarial leaves once its best distance in this step shrank by less than 0.5%
  over the last 10 steps (at least one check interval), since the distance is what the attack
  reports. Each check is one host-device synchronisation (at most ten per binary-search step); in
  exchange stalled samples stop costing forward and backward passes. Once fewer than a fifth of the
  samples are still optimising, the binary-search step ends for all of them, so that a few
  stragglers do not cost as many (small, launch-bound) forward passes as the whole batch.
* A binary-search step counts as a success for the search over ``c`` only if an iterate from the first
  abort-early check on (a tenth of the steps) is adversarial. Adam's first steps move every pixel by
  about ``lr`` whatever ``c`` is, so a sample nearer than about one step crosses the boundary on the way
  out even when ``c`` is too small to hold it there; counting that crossing halved ``c`` at every step
  of the search while the best point stayed the crossing's overshoot (up to 1.8x the exact minimum on
  linear models). Every adversarial iterate still competes for the best point.
* A final line search (``line_search_steps`` bisection steps, native only) moves each broken sample's
  best point towards ``x`` along its perturbation, to the nearest point found that is still
  adversarial, removing the overshoot along the final direction that Adam's step floor leaves.

The search over ``c`` can be kept in a :class:`SearchCheckpoint` after every binary-search step, so that
a stopped run goes on from its last finished step with the results of an uninterrupted one: a step
starts afresh from ``x`` with new Adam state, so what carries over is only the constants, their bounds,
and each sample's best point so far.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn

from attacks.backends import PEERS
from attacks.base import Attack
from attacks.cw_search import BinarySearch, SearchCheckpoint
from attacks.losses import other_max
from attacks.validation import check_float, check_int
from attacks.working_set import WorkingSet

# Tanh space: w0 = atanh(SHRINK·(2x − 1)) and x(w) = x + (tanh(w) − tanh(w0)) / (2·SHRINK), clamped to
# [0, 1]. With SHRINK < 1 a pixel at exactly 0 or 1 sits where tanh still has slope 1 − SHRINK², so it
# can move; foolbox and ART use 0.999999, where that slope (2e-6) pins saturated pixels for the whole
# run. Writing x(w) relative to x and tanh(w0) makes the start reproduce x bit for bit (recomputing
# 1/2 + tanh(w0)/(2·SHRINK) can land a rounding error outside [0, 1]), and the clamp lets the gradient
# through on the box's edges, where ``torch.clamp`` would zero it and pin every saturated pixel.
SHRINK = 0.9
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
# To keep optimising, a not-yet-adversarial sample must cut its loss by this factor since the last
# abort-early check; an adversarial one its best distance by this other factor over a window.
_ABORT_LOSS_RATIO = 0.9999
# 0.99 stopped early enough to leave a median L2 up to 4% above foolbox's; 0.995 is below it on
# MobileNet V1 at alpha 0.25/0.5/1, still 1.1-1.3x faster on CPU (docs/performance.md).
_ABORT_DISTANCE_RATIO = 0.995
# Steps over which an adversarial sample's distance must shrink (rounded up to whole check intervals).
_ABORT_DISTANCE_WINDOW = 10
# Adam's step size stays at ``lr`` for the first half of each binary-search step (the iterate must
# first travel to the boundary), then decays linearly to this fraction of ``lr``.
_FINAL_LR_FRACTION = 0.1
# A binary-search step ends for all once fewer than this fraction of its samples are still optimising:
# a handful of stragglers would otherwise cost as many (small, launch-bound) forward passes as the
# full batch.
_ROUND_END_FRACTION = 0.2
# The line search accepts a point only if its margin is below the boundary by this fraction of the
# clean margin (plus confidence): the base class judges success by a fresh forward pass in another
# batch, whose rounding may differ, and a point bisected onto the boundary could flip there. On a
# locally linear model this costs at most this fraction of the distance.
_LINE_SEARCH_MARGIN = 1e-4


def _lr_factor(step: int, steps: int) -> float:
    """Multiplier of ``lr`` at ``step`` of a binary-search step of ``steps`` steps."""
    progress = step / max(steps - 1, 1)
    return 1.0 - (1.0 - _FINAL_LR_FRACTION) * max(0.0, 2.0 * progress - 1.0)


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    """Map images in [0, 1] to unconstrained tanh-space variables."""
    return torch.atanh((2.0 * x - 1.0) * SHRINK)


def from_tanh_space(w: torch.Tensor, x0: torch.Tensor, tanh_w0: torch.Tensor) -> torch.Tensor:
    """Map tanh-space variables back to images in [0, 1], exactly ``x0`` at ``w0``.

    Pixels pushed past the box are clamped (and get no gradient); pixels exactly on its edges keep one.
    """
    x = x0 + (torch.tanh(w) - tanh_w0) * (0.5 / SHRINK)
    return torch.where((x >= 0.0) & (x <= 1.0), x, x.detach().clamp(0.0, 1.0))


class CarliniWagnerL2(Attack):
    """Untargeted Carlini–Wagner L2 attack; the result supports ``robust_accuracy_at(eps)``.

    Samples it never breaks come back as the original ``x`` and are flagged unsuccessful.

    Args:
        steps: Adam steps per binary-search step.
        binary_search_steps: rounds of the per-sample search over the constant ``c``.
        confidence: margin κ by which another class must beat the true one.
        lr: Adam step size in tanh space. Adam moves each pixel by about ``lr`` per step, which sets a
            floor under the distances found: 100 steps of 0.01 over-estimate small distances (an
            undefended model's) by several percent, 300 of 0.003 are within 2% of the exact minimum
            on linear models (``docs/attacks.md``).
        initial_const: starting ``c``; multiplied by 10 until a sample is broken, then bisected.
        line_search_steps: bisection steps of the final line search from each broken sample's best
            point towards ``x`` (each one forward pass over the broken samples, plus one for their
            clean margins); 0 turns it off. Native backend only: the peers run as their libraries do.
        backend: ``"native"``, ``"foolbox"`` (``L2CarliniWagnerAttack``) or ``"art"`` (``CarliniL2Method``,
            which optimises with line-searched gradient descent instead of Adam and is very slow).
        batch_size: samples per forward/backward pass.
        checkpoint: where each chunk's binary search is kept after every step of it (native only), and
            where a call on the same images with the same settings takes it up again: a run stopped
            part-way (a long one on a CPU takes an hour) loses at most one binary-search step, and
            gives the uninterrupted run's results. Not a setting of the attack: it belongs to one model.
    """

    name = "CarliniWagnerL2"
    minimization = True
    peers = PEERS

    def __init__(
        self,
        *,
        steps: int = 300,
        binary_search_steps: int = 9,
        confidence: float = 0.0,
        lr: float = 0.003,
        initial_const: float = 1e-3,
        line_search_steps: int = 12,
        backend: str = "native",
        batch_size: int = 512,
        checkpoint: SearchCheckpoint | None = None,
    ) -> None:
        super().__init__(backend=backend, batch_size=batch_size)
        if checkpoint is not None and self.backend != "native":
            raise ValueError(f"checkpoint= needs backend='native', not {self.backend!r}")
        self.checkpoint = checkpoint
        self.steps = check_int("steps", steps, minimum=1)
        self.binary_search_steps = check_int("binary_search_steps", binary_search_steps, minimum=1)
        self.confidence = check_float("confidence", confidence)
        self.lr = check_float("lr", lr, strict=True)
        self.initial_const = check_float("initial_const", initial_const, strict=True)
        self.line_search_steps = check_int("line_search_steps", line_search_steps, minimum=0)

    def _constrain(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return x_adv.clamp(0.0, 1.0)

    def _foolbox_attack(self) -> tuple[Any, None]:
        """foolbox's C&W with the same budget; it minimises the distance, so it takes no epsilon."""
        import foolbox as fb

        fb_attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=self.binary_search_steps,
            steps=self.steps,
            stepsize=self.lr,
            confidence=self.confidence,
            initial_const=self.initial_const,
            abort_early=True,
        )
        return fb_attack, None

    def _art_attack(self, classifier: Any, batch_size: int) -> Any:
        """ART's C&W with the same budget (optimised by line-searched gradient descent, not Adam)."""
        from art.attacks.evasion import CarliniL2Method

        return CarliniL2Method(
            classifier,
            confidence=self.confidence,
            targeted=False,
            learning_rate=self.lr,
            binary_search_steps=self.binary_search_steps,
            max_iter=self.steps,
            initial_const=self.initial_const,
            batch_size=batch_size,
            verbose=False,
        )

    def _native(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        todo: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        out = x.clone()
        idx = todo.nonzero().squeeze(1)
        if idx.numel() == 0:
            return out
        # Optimise in float32 whatever the image dtype: tanh space has no resolution in half precision.
        x0, y0 = x[idx].float(), y[idx]
        w0 = to_tanh_space(x0)
        key = self._chunk_key(x0, y0) if self.checkpoint is not None else ""
        search = self._resumed(key, x0) or self._fresh(x0)
        while search.steps_done < self.binary_search_steps:
            found = self._optimise(model, x0, y0, w0, search.const, search.best_adv, search.best_l2, x.dtype)
            search.update(found)
            if self.checkpoint is not None:
                self.checkpoint.save(key, search.state())
        if self.line_search_steps:
            self._line_search(model, x0, y0, search.best_adv, search.best_l2, x.dtype)
        out[idx] = search.best_adv.to(x.dtype)
        return out

    def _fresh(self, x0: torch.Tensor) -> BinarySearch:
        m, device = x0.shape[0], x0.device
        return BinarySearch(
            steps_done=0,
            const=torch.full((m,), self.initial_const, device=device),
            lower=torch.zeros(m, device=device),
            upper=torch.full((m,), float("inf"), device=device),
            best_adv=x0.clone(),
            best_l2=torch.full((m,), float("inf"), device=device),
        )

    def _chunk_key(self, x0: torch.Tensor, y0: torch.Tensor) -> str:
        """The checkpoint key of a chunk: its attacked images and labels, and every setting that shapes
        the search (a state saved under other settings is never taken up)."""
        h = hashlib.sha256(repr(self._search_settings()).encode())
        h.update(x0.detach().cpu().contiguous().numpy().tobytes())
        h.update(y0.detach().cpu().to(torch.int64).numpy().tobytes())
        return h.hexdigest()

    def _search_settings(self) -> tuple[Any, ...]:
        return (self.steps, self.binary_search_steps, self.confidence, self.lr, self.initial_const)

    def _resumed(self, key: str, x0: torch.Tensor) -> BinarySearch | None:
        if self.checkpoint is None:
            return None
        state = self.checkpoint.load(key)
        return None if state is None else BinarySearch.from_state(state, x0)

    @torch.no_grad()
    def _line_search(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        y0: torch.Tensor,
        best_adv: torch.Tensor,
        best_l2: torch.Tensor,
        model_dtype: torch.dtype,
    ) -> None:
        """Move each broken sample's ``best_adv`` to ``x0 + t·(best_adv − x0)``, the smallest ``t`` in (0, 1]
        that bisection finds still adversarial; updates ``best_adv``/``best_l2`` in place.

        Only points the model classified as adversarial (with ``_LINE_SEARCH_MARGIN`` to spare) are
        taken, and ``t`` never exceeds 1, so no success is lost and no distance grows. The margin along
        the segment need not be monotone on a network: bisection then stops at some crossing, still
        no farther than the point it started from.
        """
        broken = torch.isfinite(best_l2).nonzero().squeeze(1)
        if broken.numel() == 0:
            return
        xs, ys, adv = x0[broken], y0[broken], best_adv[broken]
        shape = (-1, *([1] * (xs.dim() - 1)))

        def margin(points: torch.Tensor) -> torch.Tensor:
            logits = model(points.to(model_dtype)).float()
            return logits.gather(1, ys[:, None]).squeeze(1) - other_max(logits, ys) + self.confidence

        # The clean point is not adversarial (the native attack skips misclassified samples), so its
        # margin is positive.
        below = -_LINE_SEARCH_MARGIN * margin(xs)
        delta = adv - xs
        lo = torch.zeros(broken.numel(), device=xs.device)
        hi = torch.ones(broken.numel(), device=xs.device)
        for _ in range(self.line_search_steps):
            mid = (lo + hi) / 2.0
            is_adv = margin((xs + mid.view(shape) * delta).clamp(0.0, 1.0)) < below
            hi = torch.where(is_adv, mid, hi)
            lo = torch.where(is_adv, lo, mid)
        # Where no shorter point was found, keep the original bit for bit (x + (x_adv − x) can round).
        moved = hi < 1.0
        point = torch.where(moved.view(shape), (xs + hi.view(shape) * delta).clamp(0.0, 1.0), adv)
        best_adv[broken] = point
        best_l2[broken] = torch.where(moved, (point - xs).flatten(1).norm(dim=1), best_l2[broken])

    def _optimise(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        y0: torch.Tensor,
        w0: torch.Tensor,
        const: torch.Tensor,
        best_adv: torch.Tensor,
        best_l2: torch.Tensor,
        model_dtype: torch.dtype,
    ) -> torch.Tensor:
        """One binary-search step: Adam from ``w0`` at fixed ``const``.

        Updates ``best_adv``/``best_l2`` in place with every adversarial iterate, and returns, per sample,
        whether an iterate from the first abort-early check on was adversarial: the search's verdict on
        ``const``, which the first steps' crossings (of about ``lr`` per pixel whatever ``const``) must
        not decide.
        """
        m = x0.shape[0]
        shape = (-1, *([1] * (x0.dim() - 1)))
        found = torch.zeros(m, dtype=torch.bool, device=x0.device)
        inf = torch.full((m,), float("inf"), device=x0.device)
        # Whether any iterate was adversarial (abort-early then watches the distance); the best distance
        # in this binary-search step; the loss at the last check, and that distance at the checks of the
        # last _ABORT_DISTANCE_WINDOW steps (one column per check, oldest first).
        check_every = math.ceil(self.steps / 10)
        ws = WorkingSet(
            torch.arange(m, device=x0.device),
            {"adv": best_adv, "l2": best_l2, "found": found},
            w=w0.clone(),
            mom=torch.zeros_like(w0),
            vel=torch.zeros_like(w0),
            x0=x0,
            y=y0,
            const=const,
            tanh_w0=torch.tanh(w0),
            crossed=torch.zeros(m, dtype=torch.bool, device=x0.device),
            round_l2=inf,
            prev_loss=inf,
            history=inf[:, None].expand(m, math.ceil(_ABORT_DISTANCE_WINDOW / check_every)),
        )
        beta1, beta2 = _ADAM_BETAS
        for step in range(self.steps):
            with torch.enable_grad():
                w = ws.w.requires_grad_(True)
                xa = from_tanh_space(w, ws.x0, ws.tanh_w0)
                logits = model(xa.to(model_dtype)).float()
                l2sq = (xa - ws.x0).pow(2).flatten(1).sum(dim=1)
                margin = logits.gather(1, ws.y[:, None]).squeeze(1) - other_max(logits, ws.y)
                loss = l2sq + ws.const * (margin + self.confidence).clamp_min(0.0)
                (grad,) = torch.autograd.grad(loss.sum(), w)
            ws.w = w.detach()
            loss, xa = loss.detach(), xa.detach()
            is_adv = (margin.detach() + self.confidence) < 0
            l2 = l2sq.detach().sqrt()
            ws.round_l2 = torch.where(is_adv, torch.minimum(ws.round_l2, l2), ws.round_l2)
            better = is_adv & (l2 < ws.l2)
            ws.l2 = torch.where(better, l2, ws.l2)
            ws.adv = torch.where(better.view(shape), xa, ws.adv)
            ws.crossed = ws.crossed | is_adv
            if step >= check_every:
                ws.found = ws.found | is_adv
            # Adam, written out so the whole batch updates in a few fused element-wise kernels.
            ws.mom.mul_(beta1).add_(grad, alpha=1.0 - beta1)
            ws.vel.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            t = step + 1
            step_dir = (ws.mom / (1.0 - beta1**t)) / ((ws.vel / (1.0 - beta2**t)).sqrt_().add_(_ADAM_EPS))
            ws.w.sub_(self.lr * _lr_factor(step, self.steps) * step_dir)
            if step % check_every == 0:
                progressing = torch.where(
                    ws.crossed,
                    ws.round_l2 < _ABORT_DISTANCE_RATIO * ws.history[:, 0],
                    loss <= _ABORT_LOSS_RATIO * ws.prev_loss,
                )
                ws.prev_loss = loss
                ws.history = torch.cat([ws.history[:, 1:], ws.round_l2[:, None]], dim=1)
                keep = progressing.nonzero().squeeze(1)
                if keep.numel() < _ROUND_END_FRACTION * m:
                    keep = keep[:0]
                if not ws.compact(keep):
                    return found
        ws.store()
        return found
