"""Sanity checks that flag signs of gradient masking (Athalye et al., 2018; Carlini et al., 2019).

Each ``check_*`` function runs on a model and a batch and returns a :class:`CheckReport`; a flag means
"the robust accuracy measured by gradient attacks on this model should not be trusted", not proof of
masking. :func:`run_all` runs every check while sharing attack runs between them; on CPU it takes a
few seconds for a couple of hundred images of a small model (``steps`` sets the budget).

:func:`check_square_breaks_robust` (a gradient-free attack against the images PGD left robust) is not
part of :func:`run_all`: it costs up to ``samples · queries`` forward passes, and adding it there would
change what existing callers compute and pay; call it on its own.

Accuracy comparisons allow ``tol`` (a fraction of the batch) of slack, because attacks with different
settings legitimately break slightly different samples. Fractions are compared in whole samples, so a
difference of exactly ``tol`` never flags.

Over 400 lines because the checks share one cache of attack runs (``_Session``): each public check is
a few lines over a private one that reads that cache, and ``run_all`` needs them all in one place.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attacks.base import model_hygiene, predict_logits
from attacks.fgsm import FGSM
from attacks.losses import LOSSES, value_and_grad
from attacks.pgd import PGD
from attacks.projection import NORMS
from attacks.result import AttackResult
from attacks.square import Square
from attacks.validation import check_choice, check_float, check_int, validate_inputs


@dataclass(frozen=True)
class CheckReport:
    """Outcome of one sanity check.

    Attributes:
        name: stable identifier of the check, e.g. ``"pgd_weaker_than_fgsm"``.
        flagged: True when the check saw a sign of gradient masking.
        detail: one human-readable sentence with the numbers behind the verdict.
        metrics: the numbers themselves (accuracies as fractions of the batch).
    """

    name: str
    flagged: bool
    detail: str
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: ``name``, ``flagged``, ``detail`` and every metric."""
        return {"name": self.name, "flagged": self.flagged, "detail": self.detail, **self.metrics}


class _Session:
    """One model, batch and attack budget; caches attack runs so checks can share them."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        norm: str,
        steps: int,
        loss: str,
        seed: int,
        batch_size: int,
    ) -> None:
        self.x, self.y = validate_inputs(model, x, y)
        self.model = model
        self.eps = check_float("eps", eps, strict=True)
        self.norm = check_choice("norm", norm, NORMS)
        self.steps = check_int("steps", steps, minimum=1)
        self.loss = check_choice("loss", loss, tuple(LOSSES))
        self.seed = check_int("seed", seed, minimum=0)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self._cache: dict[tuple, AttackResult] = {}

    def pgd(
        self,
        eps: float,
        *,
        steps: int | None = None,
        restarts: int = 1,
        random_start: bool = True,
        seed_offset: int = 0,
    ) -> AttackResult:
        key = ("pgd", eps, steps, restarts, random_start, seed_offset)
        if key not in self._cache:
            attack = PGD(
                eps=eps,
                norm=self.norm,
                steps=steps or self.steps,
                random_start=random_start,
                restarts=restarts,
                loss=self.loss,
                batch_size=self.batch_size,
                seed=self.seed + seed_offset,
            )
            self._cache[key] = attack(self.model, self.x, self.y)
        return self._cache[key]

    def fgsm(self) -> AttackResult:
        if ("fgsm",) not in self._cache:
            attack = FGSM(eps=self.eps, norm=self.norm, loss=self.loss, batch_size=self.batch_size)
            self._cache[("fgsm",)] = attack(self.model, self.x, self.y)
        return self._cache[("fgsm",)]

    def clean_accuracy(self) -> float:
        return self.pgd(self.eps).clean_accuracy

    def logits(self) -> torch.Tensor:
        with model_hygiene(self.model):
            return predict_logits(self.model, self.x, self.batch_size)


def _session(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> _Session:
    defaults: dict[str, Any] = {"norm": "linf", "steps": 10, "loss": "ce", "seed": 0, "batch_size": 512}
    return _Session(model, x, y, **{**defaults, **kwargs})


def _more_than(fraction: float, tol: float, n: int) -> bool:
    """Whether ``fraction`` of a batch of ``n`` is more than ``tol`` of it, counted in whole samples.

    Accuracies are float32 means, so a difference of exactly ``tol`` (2 samples of 200 against 0.01)
    can exceed it by a rounding error and would flag a check that should stay quiet.
    """
    return round(fraction * n) > tol * n


def _monotone(s: _Session, factors: tuple[float, ...], tol: float) -> CheckReport:
    accs = [s.clean_accuracy() if f == 0 else s.pgd(f * s.eps).robust_accuracy for f in sorted(factors)]
    rises = [b - a for a, b in itertools.pairwise(accs)]
    worst = max(rises, default=0.0)
    metrics = {f"acc_at_{f:g}eps": a for f, a in zip(sorted(factors), accs, strict=True)}
    flagged = _more_than(worst, tol, s.x.shape[0])
    return CheckReport(
        name="accuracy_not_monotone_in_eps",
        flagged=flagged,
        detail=f"PGD accuracy over eps x {sorted(factors)}: {', '.join(f'{a:.3f}' for a in accs)}"
        + (f"; rises by {worst:.3f} at a larger eps" if flagged else ""),
        metrics={**metrics, "largest_rise": worst},
    )


def _pgd_vs_fgsm(s: _Session, tol: float) -> CheckReport:
    pgd, fgsm = s.pgd(s.eps), s.fgsm()
    gap = pgd.robust_accuracy - fgsm.robust_accuracy
    fgsm_only = float((fgsm.success & ~pgd.success).float().mean())
    return CheckReport(
        name="pgd_weaker_than_fgsm",
        flagged=_more_than(gap, tol, s.x.shape[0]),
        detail=f"PGD-{s.steps} accuracy {pgd.robust_accuracy:.3f} vs FGSM {fgsm.robust_accuracy:.3f} "
        f"at eps={s.eps:g}; FGSM alone broke {fgsm_only:.3f} of the batch",
        metrics={
            "pgd_accuracy": pgd.robust_accuracy,
            "fgsm_accuracy": fgsm.robust_accuracy,
            "fgsm_only_fraction": fgsm_only,
        },
    )


def _more_effort(s: _Session, steps_factor: int, restarts: int, tol: float) -> CheckReport:
    base = s.pgd(s.eps).robust_accuracy
    more_steps = s.pgd(s.eps, steps=s.steps * steps_factor).robust_accuracy
    # A different seed: with the base seed the first restart would replay the base run exactly.
    more_restarts = s.pgd(s.eps, restarts=restarts, seed_offset=1).robust_accuracy
    rise = max(more_steps, more_restarts) - base
    return CheckReport(
        name="more_steps_or_restarts_raise_accuracy",
        flagged=_more_than(rise, tol, s.x.shape[0]),
        detail=f"PGD accuracy {base:.3f} with {s.steps} steps, {more_steps:.3f} with "
        f"{s.steps * steps_factor} steps, {more_restarts:.3f} with {restarts} restarts",
        metrics={
            "base_accuracy": base,
            "more_steps_accuracy": more_steps,
            "more_restarts_accuracy": more_restarts,
            "largest_rise": rise,
        },
    )


def _random_noise(s: _Session, draws: int, tol: float) -> CheckReport:
    pgd = s.pgd(s.eps)
    generator = torch.Generator(device=s.x.device)
    generator.manual_seed(s.seed)
    noise_broken = torch.zeros_like(pgd.success)
    with model_hygiene(s.model):
        for _ in range(draws):
            # The strongest random points of the ball: its corners for linf, its surface for l2.
            g = torch.randn(s.x.shape, generator=generator, device=s.x.device, dtype=s.x.dtype)
            if s.norm == "linf":
                noise = s.eps * g.sign()
            else:
                noise = s.eps * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
            pred = predict_logits(s.model, (s.x + noise).clamp(0.0, 1.0), s.batch_size).argmax(dim=1)
            noise_broken |= pgd.clean_correct & (pred != s.y)
    noise_only = float((noise_broken & ~pgd.success).float().mean())
    noise_acc = float((pgd.clean_correct & ~noise_broken).float().mean())
    return CheckReport(
        name="random_noise_beats_attack",
        flagged=_more_than(noise_only, tol, s.x.shape[0]),
        detail=f"random noise ({draws} draws) leaves accuracy {noise_acc:.3f}, "
        f"PGD {pgd.robust_accuracy:.3f}; noise alone broke {noise_only:.3f} of the batch",
        metrics={
            "noise_accuracy": noise_acc,
            "pgd_accuracy": pgd.robust_accuracy,
            "noise_only_fraction": noise_only,
        },
    )


def _unbounded(s: _Session, max_accuracy: float) -> CheckReport:
    # Radius of the whole [0, 1] box, so every image is reachable; no random start, so it is the
    # gradients alone that must find the way.
    radius = 1.0 if s.norm == "linf" else math.sqrt(s.x[0].numel())
    res = s.pgd(radius, random_start=False)
    return CheckReport(
        name="unbounded_attack_fails",
        flagged=_more_than(res.robust_accuracy, max_accuracy, s.x.shape[0]),
        detail=f"PGD with {s.norm} eps={radius:g} (the whole box) leaves accuracy {res.robust_accuracy:.3f}, "
        f"expected <= {max_accuracy:g}",
        metrics={"unbounded_accuracy": res.robust_accuracy},
    )


def _square_breaks_robust(s: _Session, samples: int, queries: int, max_fraction: float) -> CheckReport:
    if s.norm != "linf":
        raise ValueError(f"the Square check is linf only (Square is a linf attack); got norm={s.norm!r}")
    pgd = s.pgd(s.eps)
    robust = (pgd.clean_correct & ~pgd.success).nonzero().squeeze(1)
    # A seeded random subset rather than the first ones, so that the batch's order cannot bias it.
    order = torch.randperm(robust.numel(), generator=torch.Generator().manual_seed(s.seed))
    picked = robust[order[:samples].to(robust.device)].sort().values
    n = int(picked.numel())
    broken = 0
    if n:
        attack = Square(eps=s.eps, queries=queries, seed=s.seed, batch_size=s.batch_size)
        broken = int(attack(s.model, s.x[picked], s.y[picked]).success.sum())
    fraction = broken / n if n else 0.0
    return CheckReport(
        name="square_breaks_robust",
        flagged=_more_than(fraction, max_fraction, n),
        detail=f"Square ({queries} queries) broke {broken} of {n} images PGD-{s.steps} left robust "
        f"at eps={s.eps:g} (PGD accuracy {pgd.robust_accuracy:.3f}), limit {max_fraction:g} of them",
        metrics={
            "pgd_accuracy": pgd.robust_accuracy,
            "square_attacked": float(n),
            "square_broken_fraction": fraction,
        },
    )


def _zero_gradients(s: _Session, max_fraction: float) -> CheckReport:
    fractions = {}
    with model_hygiene(s.model):
        for name in ("ce", "margin"):
            zero = []
            for i in range(0, s.x.shape[0], s.batch_size):
                _, _, grad = value_and_grad(
                    s.model, s.x[i : i + s.batch_size], s.y[i : i + s.batch_size], LOSSES[name]
                )
                zero.append((grad.flatten(1) == 0).all(dim=1))
            fractions[name] = float(torch.cat(zero).float().mean())
    n = s.x.shape[0]
    flagged = _more_than(max(fractions.values()), max_fraction, n)
    hint = ""
    if _more_than(fractions["margin"], max_fraction, n):
        hint = "; the logits themselves are flat (masked gradients)"
    elif _more_than(fractions["ce"], max_fraction, n):
        hint = "; cross-entropy is saturated, use loss='margin'"
    return CheckReport(
        name="zero_gradients",
        flagged=flagged,
        detail=f"input gradient exactly zero for {fractions['ce']:.3f} of samples (ce), "
        f"{fractions['margin']:.3f} (margin){hint}",
        metrics={"zero_grad_fraction_ce": fractions["ce"], "zero_grad_fraction_margin": fractions["margin"]},
    )


def _probabilities(s: _Session, max_fraction: float) -> CheckReport:
    out = s.logits().float()
    looks_like_probs = (out >= 0).all(dim=1) & (out <= 1).all(dim=1) & ((out.sum(dim=1) - 1).abs() < 1e-3)
    fraction = float(looks_like_probs.float().mean())
    flagged = _more_than(fraction, max_fraction, s.x.shape[0])
    return CheckReport(
        name="outputs_look_like_probabilities",
        flagged=flagged,
        detail=f"{fraction:.3f} of output rows are non-negative and sum to 1"
        + ("; attacks need logits, remove the final softmax" if flagged else ""),
        metrics={"probability_rows_fraction": fraction},
    )


def check_monotone_in_eps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    factors: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0),
    tol: float = 0.01,
    **kwargs: Any,
) -> CheckReport:
    """Flag PGD accuracy that rises with eps (evaluated at ``eps · factors``).

    Other keyword arguments (``norm``, ``steps``, ``loss``, ``seed``, ``batch_size``) configure the attacks
    as in :func:`run_all`.
    """
    return _monotone(_session(model, x, y, eps=eps, **kwargs), factors, tol)


def check_pgd_vs_fgsm(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, tol: float = 0.01, **kwargs: Any
) -> CheckReport:
    """Flag PGD leaving a higher accuracy than single-step FGSM at the same eps.

    Other keyword arguments (``norm``, ``steps``, ``loss``, ``seed``, ``batch_size``) configure the attacks
    as in :func:`run_all`.
    """
    return _pgd_vs_fgsm(_session(model, x, y, eps=eps, **kwargs), tol)


def check_more_effort(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps_factor: int = 4,
    restarts: int = 2,
    tol: float = 0.01,
    **kwargs: Any,
) -> CheckReport:
    """Flag more PGD steps (``steps · steps_factor``) or more restarts raising the accuracy.

    Other keyword arguments (``norm``, ``steps``, ``loss``, ``seed``, ``batch_size``) configure the attacks
    as in :func:`run_all`.
    """
    return _more_effort(_session(model, x, y, eps=eps, **kwargs), steps_factor, restarts, tol)


def check_random_noise(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    draws: int = 10,
    tol: float = 0.01,
    **kwargs: Any,
) -> CheckReport:
    """Flag random noise of the same size breaking samples that PGD did not.

    Other keyword arguments (``norm``, ``steps``, ``loss``, ``seed``, ``batch_size``) configure the attacks
    as in :func:`run_all`.
    """
    return _random_noise(_session(model, x, y, eps=eps, **kwargs), draws, tol)


def check_unbounded_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, max_accuracy: float = 0.01, **kwargs: Any
) -> CheckReport:
    """Flag a PGD attack allowed the whole [0, 1] box failing to reach ~0% accuracy.

    Other keyword arguments (``norm``, ``steps``, ``loss``, ``seed``, ``batch_size``) configure the attacks
    as in :func:`run_all`.
    """
    return _unbounded(_session(model, x, y, eps=1.0, **kwargs), max_accuracy)


def check_zero_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, max_fraction: float = 0.05, **kwargs: Any
) -> CheckReport:
    """Flag inputs whose cross-entropy or margin gradient is exactly zero at the clean point.

    Other keyword arguments (``norm``, ``steps``, ``loss``, ``seed``, ``batch_size``) configure the attacks
    as in :func:`run_all`.
    """
    return _zero_gradients(_session(model, x, y, eps=1.0, **kwargs), max_fraction)


def check_outputs_are_logits(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, max_fraction: float = 0.5, **kwargs: Any
) -> CheckReport:
    """Flag a model whose outputs look like softmax probabilities rather than logits.

    Other keyword arguments (``norm``, ``steps``, ``loss``, ``seed``, ``batch_size``) configure the attacks
    as in :func:`run_all`.
    """
    return _probabilities(_session(model, x, y, eps=1.0, **kwargs), max_fraction)


def check_square_breaks_robust(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    samples: int = 100,
    queries: int = 1000,
    max_fraction: float = 0.05,
    **kwargs: Any,
) -> CheckReport:
    """Flag the gradient-free Square attack breaking images that PGD at the same eps left robust.

    Square (``attacks.square``) reads only the logits, so gradients that are zero, shattered or
    saturated cannot mislead it; a gradient attack that works should leave it almost nothing to
    find. It runs on up to ``samples`` of the images PGD left robust (a random subset, seeded with
    ``seed``), with ``queries`` forward passes each at most, and the check flags when it breaks
    more than ``max_fraction`` of them (counted in whole images). The 5% default leaves room for what
    a short PGD run legitimately misses (one random start, ``steps`` steps), while masking hands
    Square a large share. On the tests' small CNN (200 images, PGD-10 and Square-1000) Square broke
    none of the 100 PGD-robust images picked at eps 4/255 and 8/255; behind an input quantized to 8
    grey levels (zero gradients) it broke 10, 46 and 95 of 100 at 4/255, 8/255 and 16/255.

    linf only. It is not part of :func:`run_all`, so existing callers compute and pay the same as
    before (this check costs up to ``samples · queries`` forward passes); call it on its own.
    Other keyword arguments (``steps``, ``loss``, ``seed``, ``batch_size``) configure PGD as in
    :func:`run_all`.
    """
    s = _session(model, x, y, eps=eps, **kwargs)
    samples = check_int("samples", samples, minimum=1)
    queries = check_int("queries", queries, minimum=1)
    max_fraction = check_float("max_fraction", max_fraction)
    return _square_breaks_robust(s, samples, queries, max_fraction)


def run_all(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    loss: str = "ce",
    seed: int = 0,
    batch_size: int = 512,
    tol: float = 0.01,
) -> list[CheckReport]:
    """Run every check on one batch, sharing attack runs between them; returns one report per check.

    The budget is about ``11 · steps`` PGD steps over the samples that stay unbroken (broken samples
    drop out early), plus a dozen forward passes. Defaults of the individual checks apply otherwise.
    """
    s = _session(model, x, y, eps=eps, norm=norm, steps=steps, loss=loss, seed=seed, batch_size=batch_size)
    return [
        _probabilities(s, 0.5),
        _zero_gradients(s, 0.05),
        _monotone(s, (0.0, 0.5, 1.0, 2.0), tol),
        _pgd_vs_fgsm(s, tol),
        _more_effort(s, 4, 2, tol),
        _random_noise(s, 10, tol),
        _unbounded(s, 0.01),
    ]
