"""Synthetic per-image outcomes with a known truth, for the verdict tests.

Every image has a latent hardness shared by all models (so their outcomes are paired, as on real
test images); a model of width ``alpha`` is robust where hardness plus its own per-image noise
clears a threshold that moves by ``effect`` per doubling of ``alpha``. ``effect=0`` is the null:
every model draws from the same distribution. ``seed_noise`` shifts each training seed's
threshold at random, as retraining would.
"""

from __future__ import annotations

import numpy as np

from robust_mnv1.report.outcomes import Headline, Outcomes


def synthetic_study(
    *,
    alphas=(0.25, 0.5, 0.75, 1.0),
    effect: float = 0.05,
    n: int = 2000,
    n_cw: int = 200,
    seed: int = 0,
    seeds=(0,),
    seed_noise: float = 0.0,
    regime: str = "standard",
    cw_never_broken: float = 0.0,
) -> list[Outcomes]:
    rng = np.random.default_rng(seed)
    hardness, base_l2 = rng.random(n), rng.lognormal(0.0, 0.5, n_cw)
    out = []
    for alpha in alphas:
        shift = effect * np.log2(alpha)
        for s in seeds:
            r = np.random.default_rng((seed, round(alpha * 100), s))
            drift = r.normal(0.0, seed_noise) if seed_noise else 0.0
            correct = hardness + r.normal(0, 0.05, n) > 0.15
            robust = correct & (hardness + r.normal(0, 0.1, n) > 0.5 - shift - drift)
            cw_correct = base_l2 + r.normal(0, 0.05, n_cw) > 0.3
            l2 = base_l2 * np.exp(5 * (shift + drift) + r.normal(0, 0.1, n_cw))
            l2[r.random(n_cw) < cw_never_broken] = np.inf
            out.append(
                Outcomes(
                    data_key="synthetic",
                    model=f"MobileNetV1-{alpha:.2f}-32px",
                    regime=regime,
                    seed=s,
                    alpha=alpha,
                    rho=1.0,
                    macs=int(46e6 * alpha**2),
                    correct=correct,
                    robust={key: robust for key, _, _ in Headline().points},
                    cw_l2=np.where(cw_correct, l2, np.nan),
                )
            )
    return out
