"""The protocol's attacks as plain values, one small frozen dataclass per family.

:mod:`robust_mnv1.config.spec` makes them from the ``attack`` config group; everything below that
boundary (:mod:`.protocol`, the edge commands' crafting) takes them. Radii are given in units of
1/255, as the configs and records give them, and turned into pixel units by
:func:`robust_mnv1.infra.units.eps` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks import APGD, APGDT, PGD, CarliniWagnerL2
from attacks.cw_search import SearchCheckpoint
from robust_mnv1.infra.units import eps


@dataclass(frozen=True, kw_only=True)
class FGSMSpec:
    eps_255: tuple[float, ...]
    batch_size: int


@dataclass(frozen=True, kw_only=True)
class PGDSpec:
    """PGD at each radius of ``eps_255``; at the radii of ``margin_at_255`` the margin loss also
    attacks what ``loss`` left robust (unless ``loss`` is the margin loss already)."""

    eps_255: tuple[float, ...]
    steps: int
    restarts: int
    random_start: bool
    loss: str
    margin_at_255: tuple[float, ...]
    batch_size: int

    def attack(self, eps_255: float, seed: int, loss: str | None = None) -> PGD:
        """The attack at one radius, with ``loss`` (default: the spec's)."""
        return PGD(
            eps=eps(eps_255),
            steps=self.steps,
            random_start=self.random_start,
            restarts=self.restarts,
            batch_size=self.batch_size,
            seed=seed,
            loss=loss or self.loss,
        )

    def adds_margin(self, eps_255: float) -> bool:
        """Whether the protocol also attacks with the margin loss at this radius."""
        return eps_255 in self.margin_at_255 and self.loss != "margin"

    def loss_label(self, eps_255: float) -> str:
        """The losses a record entry at this radius names: ``ce`` or ``ce+margin``."""
        return f"{self.loss}+margin" if self.adds_margin(eps_255) else self.loss


@dataclass(frozen=True, kw_only=True)
class SquareSpec:
    """The gradient-free check on APGD's survivors: ``samples`` images (0: off), ``queries`` each."""

    samples: int
    queries: int


@dataclass(frozen=True, kw_only=True)
class APGDSpec:
    eps_255: tuple[float, ...]
    ce_steps: int
    targeted_steps: int
    n_target_classes: int
    batch_size: int
    square: SquareSpec

    def stages(self, eps_255: float, seed: int) -> list[tuple[str, APGD | APGDT]]:
        """The attacks at one radius, in the order they run: APGD-CE, then APGD-T."""
        common = dict(eps=eps(eps_255), seed=seed, batch_size=self.batch_size)
        return [
            ("apgd-ce", APGD(**common, steps=self.ce_steps, loss="ce")),
            ("apgd-t", APGDT(**common, steps=self.targeted_steps, n_target_classes=self.n_target_classes)),
        ]


@dataclass(frozen=True, kw_only=True)
class CWSpec:
    """Carlini-Wagner L2, and the L2 radii at which a record reports robust accuracy."""

    steps: int
    binary_search_steps: int
    confidence: float
    lr: float
    initial_const: float
    l2_radii: tuple[float, ...]
    batch_size: int

    def attack(self, checkpoint: SearchCheckpoint | None = None) -> CarliniWagnerL2:
        """The attack; with ``checkpoint``, it keeps its binary search there and resumes from it."""
        return CarliniWagnerL2(
            steps=self.steps,
            binary_search_steps=self.binary_search_steps,
            confidence=self.confidence,
            lr=self.lr,
            initial_const=self.initial_const,
            batch_size=self.batch_size,
            checkpoint=checkpoint,
        )


AttackSpec = FGSMSpec | PGDSpec | APGDSpec | CWSpec
