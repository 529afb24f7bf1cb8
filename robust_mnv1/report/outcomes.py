"""Per-image outcomes of one trained model, read back from its run records.

Every evaluation takes a prefix of one fixed image order (``eval.order``), so image ``i`` of one
model's record is image ``i`` of every other model's record of the same data: two models can be
compared image by image, which is what gives the verdicts their power.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from robust_mnv1.infra.errors import UserError
from robust_mnv1.records.run_record import RunRecord

# PGD at a small radius: where standard models, all fooled at the headline radius, still differ.
SMALL_EPS_255 = 2.0
_NAMES = {"fgsm": "FGSM", "pgd": "PGD", "worst": "worst-case"}


@dataclass(frozen=True)
class Headline:
    """The radius of the board's headline columns, worst case and verdicts (the records'
    ``eval.headline_eps_255``), and the names derived from it: at 8/255 the points are ``fgsm8``,
    ``pgd2``, ``pgd8`` and ``worst8`` (each a ``<point>_acc``, ``_lo``, ... column of the table),
    labelled ``FGSM@8/255`` and so on."""

    eps_255: float = 8.0

    @property
    def tag(self) -> str:
        return f"{self.eps_255:g}"

    @property
    def worst(self) -> str:
        """The key of the per-image worst case over every attack at the headline radius."""
        return f"worst{self.tag}"

    @property
    def radius(self) -> str:
        return f"{self.tag}/255"

    def label(self, name: str, eps_255: float | None = None) -> str:
        return f"{name}@{self.radius if eps_255 is None else f'{eps_255:g}/255'}"

    @property
    def points(self) -> tuple[tuple[str, str, float], ...]:
        """(key, attack or "worst", eps in units of 1/255) of each point the table, verdicts and
        figures use, in the table's column order."""
        h = self.eps_255
        points = [(f"fgsm{self.tag}", "fgsm", h), (f"pgd{SMALL_EPS_255:g}", "pgd", SMALL_EPS_255)]
        points += [(f"pgd{self.tag}", "pgd", h), (self.worst, "worst", h)]
        return tuple({key: (key, attack, eps) for key, attack, eps in points}.values())

    def point_label(self, key: str) -> str:
        _, attack, eps = next(p for p in self.points if p[0] == key)
        return self.label(_NAMES[attack], eps)


def headline_of(records: Iterable[RunRecord]) -> Headline:
    """The one headline radius of ``records``; records made at different ones cannot share a board."""
    radii = sorted({r.headline_eps_255 for r in records})
    if len(radii) > 1:
        shown = ", ".join(f"{e:g}" for e in radii)
        raise UserError(
            f"the records were made with different eval.headline_eps_255 ({shown}); "
            "a board needs one: put each in a results directory of its own"
        )
    return Headline(radii[0]) if radii else Headline()


# Compared by identity: its arrays have no single truth value.
@dataclass(frozen=True, eq=False)
class Outcomes:
    """One (data, model, regime, seed): clean-correct and robust masks over the FGSM/PGD images, and
    C&W distances over the C&W images (nan where the image is misclassified, inf where C&W never
    broke it). ``robust[key]`` is True where the image is classified correctly and survives every
    attack of that point (every loss at that ε; for the worst case every attack at the headline ε)."""

    data_key: str
    model: str
    regime: str
    seed: int
    alpha: float
    rho: float
    macs: int
    correct: np.ndarray | None
    robust: dict[str, np.ndarray] = field(default_factory=dict)
    cw_l2: np.ndarray | None = None

    def fooled(self, key: str) -> np.ndarray:
        """Clean-correct images the attacks of ``key`` flip."""
        assert self.correct is not None
        return self.correct & ~self.robust[key]


def eps_key(eps_255: float) -> float:
    """The grid point of a recorded eps: JSON floats make 8 and 7.99999999 the same point."""
    return round(float(eps_255), 4)


def _from_records(records: Sequence[RunRecord], families: set[str], headline: Headline) -> Outcomes:
    first = records[0]
    model = first.model
    linf = [r for r in records if r.eps_results]
    # FGSM and PGD take the same first n images; the clean mask comes with either.
    masks = (r.clean.mask() for r in sorted(linf, key=lambda r: r.attack))
    correct = next((m for m in masks if m is not None), None)
    robust: dict[str, np.ndarray] = {}
    n = None if correct is None else len(correct)
    for key, attack, eps in headline.points:
        entries = [
            e for r in linf for e in r.linf() if eps_key(e.eps_255) == eps and attack in ("worst", e.attack)
        ]
        # A worst case needs every L-inf family its dataset's records hold, so all models compare alike.
        if not entries or (attack == "worst" and {e.attack for e in entries} != families):
            continue
        # Records made before clean masks were kept still pair their robust masks.
        size = n if n is not None else entries[0].n
        if any(e.n != size for e in entries):
            continue
        mask = np.ones(size, dtype=bool)
        for e in entries:
            mask &= e.mask()
        robust[key] = mask
    cw_l2 = None
    cw = next((r for r in records if r.cw is not None), None)
    if cw is not None and cw.cw.l2_per_image is not None and (cw_mask := cw.clean.mask()) is not None:
        cw_l2 = np.full(len(cw_mask), np.nan)
        cw_l2[cw_mask] = np.asarray(cw.cw.l2_per_image, dtype=float)
    return Outcomes(
        data_key=first.data.key,
        model=model.name,
        regime=first.regime,
        seed=int(first.seed),
        alpha=float(model.alpha),
        rho=float(model.rho),
        macs=int(model.macs),
        correct=correct,
        robust=robust,
        cw_l2=cw_l2,
    )


def collect(records: Iterable[RunRecord], headline: Headline | None = None) -> list[Outcomes]:
    """One :class:`Outcomes` per (data, model, regime, seed) of ``records``, in a stable order, with the
    points of ``headline`` (by default the records' own)."""
    records = list(records)
    headline = headline or headline_of(records)
    groups: dict[tuple[str, str, str, int], list[RunRecord]] = defaultdict(list)
    families: dict[str, set[str]] = defaultdict(set)
    for r in records:
        groups[(r.data.key, r.model.name, r.regime, int(r.seed))].append(r)
        families[r.data.key] |= {e.attack for e in r.linf()}
    ordered = sorted(groups.items())
    return [
        _from_records(sorted(g, key=lambda r: r.run_id), families[key[0]], headline) for key, g in ordered
    ]
