"""What every attack returns: :class:`AttackResult`, and :func:`worst_case` to combine several.

The tensors stay on the device the attack ran on; the scalar summaries (``robust_accuracy`` and
friends) synchronise once when read, which is fine outside an attack's inner loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class AttackResult:
    """Outcome of one attack on one batch.

    Attributes:
        x_adv: adversarial images, same shape, dtype and device as the input ``x``.
        success: bool[N]; the model, run afresh in eval mode on ``x_adv``, misclassifies a sample that it
            classified correctly on the clean input (already-misclassified samples are never a success).
        clean_correct: bool[N]; the model's clean prediction equals the label.
        linf: float[N], ``‖x_adv − x‖∞`` per sample.
        l2: float[N], ``‖x_adv − x‖₂`` per sample.
        queries: total number of per-sample model forward passes the attack made (a forward over a batch of
            ``b`` images counts ``b``; the backward that follows it is not counted again). The clean and the
            success-check passes that every attack shares are not included.
        seconds: wall-clock time of the attack itself (inputs checked, the clean and success passes excluded).
        attack: the attack's name, e.g. ``"PGD"``.
        backend: ``"native"``, ``"foolbox"`` or ``"art"``.
        minimization: True for attacks that minimise the perturbation (C&W): then ``robust_accuracy_at``
            gives the accuracy at any L2 radius from this one run.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    clean_correct: torch.Tensor
    linf: torch.Tensor
    l2: torch.Tensor
    queries: int
    seconds: float
    attack: str
    backend: str
    minimization: bool = False

    @property
    def num_samples(self) -> int:
        """Number of samples in the batch."""
        return int(self.success.shape[0])

    @property
    def clean_accuracy(self) -> float:
        """Fraction of samples the model classifies correctly without any perturbation."""
        return _mean(self.clean_correct)

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples that are correct on clean input and that the attack failed to break."""
        return _mean(self.clean_correct & ~self.success)

    @property
    def success_rate(self) -> float:
        """Fraction of the clean-correct samples the attack broke (0 when none were correct)."""
        n_correct = int(self.clean_correct.sum())
        return float(self.success.sum()) / n_correct if n_correct else 0.0

    def robust_accuracy_at(self, eps: float) -> float:
        """Robust accuracy against L2 perturbations of norm at most ``eps``, read off a minimization attack.

        A sample counts as broken at ``eps`` when the attack succeeded with ``l2 <= eps``. Because C&W
        returns, per sample, the smallest perturbation it found, one run gives the whole accuracy-vs-ε
        curve; it is an upper bound on the true robust accuracy, like any attack's.
        """
        if not self.minimization:
            raise ValueError(
                f"robust_accuracy_at needs a minimization attack (CarliniWagnerL2), got {self.attack}; "
                "use robust_accuracy for fixed-eps attacks"
            )
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        broken = self.success & (self.l2 <= eps)
        return _mean(self.clean_correct & ~broken)

    def median_l2(self) -> float:
        """Median L2 norm over the successful samples (NaN when no sample was broken)."""
        if not bool(self.success.any()):
            return float("nan")
        return float(self.l2[self.success].float().median())

    def to_dict(self) -> dict[str, Any]:
        """Scalar summary for logs and JSON records (no tensors)."""
        return {
            "attack": self.attack,
            "backend": self.backend,
            "num_samples": self.num_samples,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "median_l2": self.median_l2(),
            "max_linf": float(self.linf.max()) if self.num_samples else 0.0,
            "queries": self.queries,
            "seconds": self.seconds,
        }


def _mean(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else 0.0


def worst_case(results: Sequence[AttackResult]) -> AttackResult:
    """Combine results of several attacks on the same batch into the per-sample worst case.

    A sample counts as broken if any attack broke it; its ``x_adv`` comes from the successful attack with
    the smallest L2 perturbation (the first one on ties), so combining minimization attacks keeps their
    distances meaningful. Unbroken samples keep the first result's ``x_adv``. ``queries`` and ``seconds``
    are summed; the combination is a minimization result only if every input is.
    """
    if not results:
        raise ValueError("results must contain at least one AttackResult")
    first = results[0]
    for r in results[1:]:
        if r.x_adv.shape != first.x_adv.shape or not torch.equal(r.clean_correct, first.clean_correct):
            raise ValueError(
                "results must come from the same model and batch (shapes or clean_correct differ)"
            )
    success = torch.stack([r.success for r in results])  # [A, N]
    l2 = torch.stack([r.l2 for r in results])
    # Unsuccessful entries must never win the argmin, so they get an infinite distance.
    ranked = torch.where(success, l2, torch.full_like(l2, float("inf")))
    pick = ranked.argmin(dim=0)  # first minimum on ties
    any_success = success.any(dim=0)
    pick = torch.where(any_success, pick, torch.zeros_like(pick))
    rows = torch.arange(pick.shape[0], device=pick.device)
    x_adv = torch.stack([r.x_adv for r in results])[pick, rows]
    linf = torch.stack([r.linf for r in results])[pick, rows]
    return AttackResult(
        x_adv=x_adv,
        success=any_success,
        clean_correct=first.clean_correct,
        linf=linf,
        l2=l2[pick, rows],
        queries=sum(r.queries for r in results),
        seconds=sum(r.seconds for r in results),
        attack="worst_case(" + ",".join(f"{r.attack}/{r.backend}" for r in results) + ")",
        backend="mixed" if len({r.backend for r in results}) > 1 else first.backend,
        minimization=all(r.minimization for r in results),
    )
