"""Hand-made schema-v1 run records for the records and leaderboard tests, built from the same typed
classes (:mod:`robust_mnv1.records.run_record`) the study produces and the board consumes.

:func:`make_study` builds a realistic little study (a few width multipliers x regimes x
FGSM/PGD/C&W x seeds) whose robustness grows with model size in a controlled order, and
whose robust masks overlap only partly across attacks, so the per-sample worst case is
strictly below every single attack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robust_mnv1.records.intervals import wilson_ci
from robust_mnv1.records.run_record import (
    CleanResult,
    CwRadius,
    CwResult,
    DataInfo,
    EpsResult,
    ModelInfo,
    RunRecord,
    SanityResult,
)
from robust_mnv1.records.schema import REGIMES, config_hash, encode_mask, make_run_id
from robust_mnv1.records.store import write_record

ALPHAS = (0.25, 0.5, 0.75, 1.0)
EPS_255 = (1, 2, 4, 8)
DATA = DataInfo(
    name="imagefolder", label="CIFAR-10 (JPEG q75)", key="cifar10-jpeg", n_train=50000, n_test=10000
)
ENV = {
    "device": "NVIDIA H200",
    "torch": "2.11.0",
    "torchvision": "0.26.0",
    "foolbox": "3.3.4",
    "art": "1.20.1",
    "python": "3.11.7",
    "git_commit": "abc1234",
    "platform": "Linux-x86_64",
}
# As the study records it: config.attack holds only the record's own attack.
ATTACK_CONFIG = {
    "fgsm": {"fgsm": {"eps_255": list(EPS_255)}},
    "pgd": {
        "pgd": {"eps_255": list(EPS_255), "steps": 20, "restarts": 1, "loss": "ce", "margin_at_255": [8]}
    },
    "cw": {"cw": {"steps": 100, "binary_search_steps": 9, "l2_radii": [0.1, 0.25, 0.5]}},
    "apgd": {"apgd": {"eps_255": [8], "ce_steps": 50, "targeted_steps": 50, "n_target_classes": 3}},
}
# How many of the images FGSM and PGD left robust at 8/255 each APGD stage of make_study breaks.
APGD_BREAKS = {"apgd-ce": 2, "apgd-t": 1}


def model_block(alpha: float, rho: float = 1.0) -> ModelInfo:
    """A ``model`` block whose params and MACs grow with alpha (and MACs with rho)."""
    res = round(32 * rho)
    return ModelInfo(
        name=f"MobileNetV1-{alpha:.2f}-{res}px",
        alpha=alpha,
        rho=rho,
        profile="cifar",
        input_resolution=res,
        params=int(3.2e6 * alpha**2 + 1e4),
        macs=int(46e6 * alpha**2 * rho**2 + 1e5),
    )


def eps_entry(attack: str, eps_255: float, loss: str, mask: np.ndarray, **apgd: Any) -> EpsResult:
    """One ``eps_results`` entry whose counts and accuracy agree with ``mask``."""
    n, k = int(mask.size), int(mask.sum())
    return EpsResult(
        attack=attack,
        norm="linf",
        eps=eps_255 / 255,
        eps_255=eps_255,
        loss=loss,
        n=n,
        robust=k,
        accuracy=k / n,
        ci95=wilson_ci(k, n),
        robust_mask=encode_mask(mask),
        **apgd,
    )


def skewed_distances(median: float, k: int) -> list[float]:
    """``k`` C&W distances with this median and a long upper tail, so their mean is not it."""
    h = (k - 1) // 2
    low = median - 0.05 * np.linspace(1.0, 0.01, h)
    high = median + 0.5 * np.linspace(0.1, 1.0, h) ** 2
    return [*low, *[median] * (k - 2 * h), *high]


def make_record(
    *,
    model: ModelInfo,
    regime: str,
    attack: str,
    seed: int,
    clean_mask: np.ndarray,
    eps_results: Sequence[EpsResult] = (),
    cw_median: float | None = None,
    flags: Sequence[str] = (),
    latency_ms: float | None = 3.0,
    data: DataInfo = DATA,
) -> RunRecord:
    """A complete, valid record; ``cw_median`` is required for (and only used by) C&W records."""
    n, k = int(clean_mask.size), int(clean_mask.sum())
    config = {
        "model": {"alpha": model.alpha, "rho": model.rho, "profile": model.profile},
        "data": {"key": data.key},
        "attack": ATTACK_CONFIG[attack],
        "regime": regime,
        "seed": seed,
    }
    cw = None
    if attack == "cw":
        radii = []
        for l2 in (0.1, 0.25, 0.5):
            kr = round(k * (1 - l2))
            radii.append(CwRadius(l2=l2, accuracy=kr / n, ci95=wilson_ci(kr, n)))
        cw = CwResult(
            n=n,
            n_clean_correct=k,
            median_l2=cw_median,
            median_l2_ci95=(cw_median - 0.02, cw_median + 0.02),
            mean_l2=cw_median * 1.1,
            success_rate=0.99,
            robust_at=tuple(radii),
            steps=100,
            binary_search_steps=9,
            l2_per_image=tuple(skewed_distances(cw_median, k)),
        )
    return RunRecord(
        run_id=make_run_id(model.name, regime, attack, data.key, seed),
        model=model,
        regime=regime,
        attack=attack,
        data=data,
        seed=seed,
        config=config,
        config_hash=config_hash(config),
        clean=CleanResult(n, k, k / n, wilson_ci(k, n), encode_mask(clean_mask)),
        eps_results=tuple(eps_results),
        cw=cw,
        sanity=SanityResult.combined([{"name": f, "flagged": True, "detail": "hand-made"} for f in flags]),
        timing={"train_s": 12.5, "finetune_s": 0.0 if regime == "standard" else 4.0, "eval_s": 40.0},
        latency_ms_cpu_b1=latency_ms,
        env=dict(ENV),
        created="2026-11-28T04:00:00Z",
    )


def _first(perm: np.ndarray, start: int, count: int, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[perm[start : start + count]] = True
    return mask


def _apgd_entry(built: Mapping[str, RunRecord]) -> EpsResult:
    """APGD's entry at 8/255: it breaks the first :data:`APGD_BREAKS` images FGSM and PGD left robust."""
    at8 = [e for a in ("fgsm", "pgd") for e in built[a].eps_results if e.eps_255 == 8]
    n = min(e.n for e in at8)
    before = np.logical_and.reduce([e.mask()[:n] for e in at8])
    after = before.copy()
    after[np.flatnonzero(before)[: sum(APGD_BREAKS.values())]] = False
    return eps_entry("apgd", 8, "apgd-ce+apgd-t", after, attacked=int(before.sum()), broken=dict(APGD_BREAKS))


def make_study(
    *,
    alphas: Sequence[float] = ALPHAS,
    regimes: Sequence[str] = ("standard", "pgd-at"),
    seeds: Sequence[int] = (0,),
    n: int = 200,
    robust_rank: Sequence[int] | None = None,
    flags: Mapping[tuple[float, str], Sequence[str]] | None = None,
    pgd_n: int | None = None,
    attacks: Sequence[str] = ("fgsm", "pgd", "cw"),
    data: DataInfo = DATA,
) -> list[RunRecord]:
    """FGSM, PGD and C&W records (and APGD's, when ``attacks`` names it) for every (alpha, regime, seed).

    ``robust_rank[i]`` orders the robustness of ``alphas[i]`` (default: robustness grows with
    alpha, i.e. with MACs; up to 8 alphas). Adversarial regimes add a gain that also grows with the rank.
    ``flags`` maps (alpha, regime) to sanity flags on that row's PGD record. ``pgd_n``
    evaluates PGD on only the first ``pgd_n`` images, to exercise mismatched mask lengths.
    Only the records of ``attacks`` are returned.
    Seeds must be in 0..3 (they shift the counts, which must stay inside the clean-correct set).
    """
    ranks = list(range(len(alphas))) if robust_rank is None else list(robust_rank)
    # Robustness steps shrink with more models, so the top rank stays a valid accuracy.
    step = 0.4 / max(4, len(alphas))
    flags = flags or {}
    records = []
    for i, alpha in enumerate(alphas):
        r = ranks[i]
        model = model_block(alpha)
        for regime in regimes:
            adv = regime != "standard"
            clean_rate = (0.74 if adv else 0.84) + 0.02 * r
            base = 0.15 + step * r + (0.2 + step / 2 * r if adv else 0.0)
            for seed in seeds:
                rng = np.random.default_rng([i, REGIMES.index(regime), seed])
                # Seeds move clean and robust counts in opposite directions so seed std is non-zero.
                k_clean = round(clean_rate * n) - seed
                order = rng.permutation(n)
                clean = _first(order, 0, k_clean, n)
                fgsm_eps, pgd_eps = [], []
                for e in EPS_255:
                    k_f = round(base * (1 - 0.06 * e) * n) + seed
                    k_p = round(base * (1 - 0.08 * e) * n) + seed
                    # PGD's robust set is shifted against FGSM's so they overlap in only k_p - 3 images.
                    shift = k_f - k_p + 3
                    fgsm_eps.append(eps_entry("fgsm", e, "ce", _first(order, 0, k_f, n)))
                    pgd_ce = _first(order, shift, k_p, n)
                    pgd_eps.append(eps_entry("pgd", e, "ce", pgd_ce[:pgd_n]))
                    if e == 8:
                        pgd_cem = _first(order, shift, k_p - 2, n)
                        pgd_eps.append(eps_entry("pgd", e, "ce+margin", pgd_cem[:pgd_n]))
                common = {"model": model, "regime": regime, "seed": seed, "data": data}
                cw_median = 0.1 + 0.05 * r + (0.2 + 0.1 * r if adv else 0.0) + 0.01 * seed
                built = {
                    "fgsm": make_record(**common, attack="fgsm", clean_mask=clean, eps_results=fgsm_eps),
                    "pgd": make_record(
                        **common,
                        attack="pgd",
                        clean_mask=clean[:pgd_n],
                        eps_results=pgd_eps,
                        flags=flags.get((alpha, regime), ()),
                    ),
                    "cw": make_record(**common, attack="cw", clean_mask=clean, cw_median=cw_median),
                }
                if "apgd" in attacks:
                    built["apgd"] = make_record(
                        **common, attack="apgd", clean_mask=clean[:pgd_n], eps_results=[_apgd_entry(built)]
                    )
                records += [built[a] for a in attacks]
    return records


def write_study(records: Sequence[RunRecord], results_dir: Path) -> Path:
    """Write ``records`` to ``results_dir/runs`` and return the runs directory."""
    runs = results_dir / "runs"
    for record in records:
        write_record(record, runs)
    return runs
