"""Per-image outcomes of one trained model, read back from its run records.

Every evaluation takes a prefix of one fixed image order (``eval.order``), so image ``i`` of one
model's record is image ``i`` of every other model's record of the same data: two models can be
compared image by image, which is what gives the verdicts their power.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robust_mnv1.records.schema import decode_mask

# The attack points the verdicts and figures use: (key, attack or "worst", eps in units of 1/255).
POINTS = (("fgsm8", "fgsm", 8.0), ("pgd2", "pgd", 2.0), ("pgd8", "pgd", 8.0), ("worst8", "worst", 8.0))


# Compared by identity: its arrays have no single truth value.
@dataclass(frozen=True, eq=False)
class Outcomes:
    """One (data, model, regime, seed): clean-correct and robust masks over the FGSM/PGD images, and
    C&W distances over the C&W images (nan where the image is misclassified, inf where C&W never
    broke it). ``robust[key]`` is True where the image is classified correctly and survives every
    attack of that point (every loss at that ε; for ``worst8`` every attack at 8/255)."""

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


def _mask(record: Mapping[str, Any]) -> np.ndarray | None:
    clean = record["clean"]
    return decode_mask(clean["correct_mask"], clean["n"]) if "correct_mask" in clean else None


def eps_key(eps_255: float) -> float:
    """The grid point of a recorded eps: JSON floats make 8 and 7.99999999 the same point."""
    return round(float(eps_255), 4)


def _from_records(records: Sequence[Mapping[str, Any]], families: set[str]) -> Outcomes:
    first = records[0]
    model = first["model"]
    linf = [r for r in records if r["eps_results"]]
    # FGSM and PGD take the same first n images; the clean mask comes with either.
    correct = next((m for m in map(_mask, sorted(linf, key=lambda r: r["attack"])) if m is not None), None)
    robust: dict[str, np.ndarray] = {}
    n = None if correct is None else len(correct)
    for key, attack, eps in POINTS:
        entries = [
            e
            for r in linf
            for e in r["eps_results"]
            if e["norm"] == "linf" and eps_key(e["eps_255"]) == eps and attack in ("worst", e["attack"])
        ]
        # A worst case needs every L-inf family its dataset's records hold, so all models compare alike.
        if not entries or (attack == "worst" and {e["attack"] for e in entries} != families):
            continue
        # Records made before clean masks were kept still pair their robust masks.
        size = n if n is not None else entries[0]["n"]
        if any(e["n"] != size for e in entries):
            continue
        mask = np.ones(size, dtype=bool)
        for e in entries:
            mask &= decode_mask(e["robust_mask"], e["n"])
        robust[key] = mask
    cw_l2 = None
    cw = next((r for r in records if r["cw"] is not None), None)
    if cw is not None and "l2_per_image" in cw["cw"] and (cw_mask := _mask(cw)) is not None:
        cw_l2 = np.full(len(cw_mask), np.nan)
        cw_l2[cw_mask] = np.asarray(cw["cw"]["l2_per_image"], dtype=float)
    return Outcomes(
        data_key=first["data"]["key"],
        model=model["name"],
        regime=first["regime"],
        seed=int(first["seed"]),
        alpha=float(model["alpha"]),
        rho=float(model["rho"]),
        macs=int(model["macs"]),
        correct=correct,
        robust=robust,
        cw_l2=cw_l2,
    )


def collect(records: Iterable[Mapping[str, Any]]) -> list[Outcomes]:
    """One :class:`Outcomes` per (data, model, regime, seed) of ``records``, in a stable order."""
    groups: dict[tuple[str, str, str, int], list[Mapping[str, Any]]] = defaultdict(list)
    families: dict[str, set[str]] = defaultdict(set)
    for r in records:
        groups[(r["data"]["key"], r["model"]["name"], r["regime"], int(r["seed"]))].append(r)
        families[r["data"]["key"]] |= {e["attack"] for e in r["eps_results"] if e["norm"] == "linf"}
    ordered = sorted(groups.items())
    return [_from_records(sorted(g, key=lambda r: r["run_id"]), families[key[0]]) for key, g in ordered]
