"""The leaderboard's table: one row per (dataset, model, regime), aggregated over seeds and ranked.

Records are grouped into rows by (dataset key, model name, regime); the FGSM, PGD, APGD and C&W
records of a row merge, and several seeds are averaged. The table is a pure function of the
records (a fixed bootstrap seed, a stable sort with tie-breakers), so the same records give the
same table, and the same CSV.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from robust_mnv1.records.intervals import percentile_interval, wilson_ci
from robust_mnv1.records.run_record import EpsResult, ModelInfo, RunRecord
from robust_mnv1.records.schema import REGIMES
from robust_mnv1.records.store import check_combinable
from robust_mnv1.report.outcomes import Headline, eps_key, headline_of

# How the board's table and figures name each regime.
REGIME_LABELS = {"standard": "standard", "pgd-at": "PGD-AT", "fast-at": "fast-AT", "trades": "TRADES"}
# Bootstrap of several seeds' C&W median (their per-image distances drawn together).
REDRAW_SEED = (0, 1)
N_BOOT = 2000


@dataclass
class _SeedSummary:
    """Everything one seed of one row contributes, merged over its attack records."""

    clean: tuple[int, int]
    points: dict[tuple[str, float], tuple[int, int]]  # (attack, eps_255) -> (robust, n), strongest loss
    worst: dict[float, tuple[int, int, bool]]  # eps_255 -> (robust, n, masks had different n)
    apgd_added: dict[float, tuple[int, int]]  # eps_255 -> (images APGD broke after FGSM and PGD, n)
    # median L2, CI lo, CI hi, and the per-image distances when the record has them
    cw: tuple[float, float, float, np.ndarray | None] | None


@dataclass
class _Row:
    data_key: str
    model: ModelInfo
    regime: str
    records: list[RunRecord]
    seeds: dict[int, _SeedSummary]


def _families(records: Iterable[RunRecord]) -> dict[str, set[str]]:
    """The L∞ attack families each dataset's records hold: a seed lacking one has no worst case yet."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in records:
        out[r.data.key] |= {e.attack for e in r.eps_results}
    return out


def _summarize_seed(records: Sequence[RunRecord], families: set[str]) -> _SeedSummary:
    # Attack records of the same model and seed evaluate the same images; the largest n is the
    # most informative clean estimate (a C&W run may use fewer images).
    best_clean = max(records, key=lambda r: r.clean.n).clean
    entries = [e for r in records for e in r.linf()]
    by_point: dict[tuple[str, float], list[EpsResult]] = defaultdict(list)
    for e in entries:
        by_point[(e.attack, eps_key(e.eps_255))].append(e)
    points = {}
    for key, group in by_point.items():
        # Several losses at one point (ce, ce+margin): report the strongest, i.e. lowest accuracy.
        strongest = min(group, key=lambda e: (e.robust / e.n if e.n else 1.0, e.loss))
        points[key] = (strongest.robust, strongest.n)
    worst = {}
    # FGSM alone is no worst case: a seed still missing a family the others have (a study still
    # running, a lost record) contributes none.
    complete = families <= {e.attack for e in entries}
    for eps in sorted({k[1] for k in by_point}) if complete else ():
        group = [e for e in entries if eps_key(e.eps_255) == eps]
        n = min(e.n for e in group)
        robust = np.ones(n, dtype=bool)
        for e in group:
            robust &= e.mask()[:n]
        worst[eps] = (int(robust.sum()), n, len({e.n for e in group}) > 1)
    apgd = [e for e in entries if e.attack == "apgd"]
    apgd_added = {eps_key(e.eps_255): (e.attacked - e.robust, e.n) for e in apgd}
    cw = None
    cw_records = [r.cw for r in records if r.cw is not None]
    if cw_records:
        block = cw_records[0]
        l2 = np.asarray(block.l2_per_image, dtype=float) if block.l2_per_image is not None else None
        cw = (float(block.median_l2), *map(float, block.median_l2_ci95), l2)
    return _SeedSummary((best_clean.correct, best_clean.n), points, worst, apgd_added, cw)


def _group_rows(records: Iterable[RunRecord]) -> list[_Row]:
    records = list(records)
    families = _families(records)
    grouped: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r.run_id):
        grouped[(r.data.key, r.model.name, r.regime)].append(r)
    rows = []
    for (data_key, _, regime), group in sorted(grouped.items()):
        by_seed: dict[int, list[RunRecord]] = defaultdict(list)
        for r in group:
            by_seed[r.seed].append(r)
        seeds = {s: _summarize_seed(rs, families[data_key]) for s, rs in sorted(by_seed.items())}
        rows.append(_Row(data_key, group[0].model, regime, group, seeds))
    return rows


def _agg_counts(counts: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Mean and sample std over seeds; Wilson CI on the counts pooled over seeds."""
    counts = [(k, n) for k, n in counts if n > 0]
    if not counts:
        return {"acc": math.nan, "std": math.nan, "lo": math.nan, "hi": math.nan, "k": 0, "n": 0}
    accs = [k / n for k, n in counts]
    k_sum, n_sum = sum(k for k, _ in counts), sum(n for _, n in counts)
    lo, hi = wilson_ci(k_sum, n_sum)
    std = float(np.std(accs, ddof=1)) if len(accs) > 1 else math.nan
    return {"acc": float(np.mean(accs)), "std": std, "lo": lo, "hi": hi, "k": k_sum, "n": n_sum}


def _sanity_text(records: Sequence[RunRecord]) -> str:
    flags = sorted({f for r in records for f in r.sanity.flags})
    if flags:
        return ",".join(flags)
    return "ok" if all(r.sanity.passed for r in records) else "failed"


def _row_dict(row: _Row, headline: Headline, latency_ms: float) -> dict[str, Any]:
    model = row.model
    out: dict[str, Any] = {
        "data_key": row.data_key,
        "data_label": row.records[0].data.label,
        "model": model.name,
        "regime": row.regime,
        "alpha": float(model.alpha),
        "rho": float(model.rho),
        "input_resolution": int(model.input_resolution),
        "params": int(model.params),
        "macs": int(model.macs),
        "params_m": model.params / 1e6,
        "macs_m": model.macs / 1e6,
        "n_seeds": len(row.seeds),
        "seeds": ",".join(str(s) for s in row.seeds),
    }
    summaries = list(row.seeds.values())
    out.update({f"clean_{k}": v for k, v in _agg_counts([s.clean for s in summaries]).items()})
    for key, attack, eps in headline.points:
        if attack == "worst":
            found = [s.worst[eps] for s in summaries if eps in s.worst]
            out[f"{key}_prefix"] = any(prefix for _, _, prefix in found)
            agg = _agg_counts([(k, n) for k, n, _ in found])
        else:
            agg = _agg_counts([s.points[(attack, eps)] for s in summaries if (attack, eps) in s.points])
        out.update({f"{key}_{k}": v for k, v in agg.items()})
    # What APGD took from the worst case, at the worst case's radius.
    if any(s.apgd_added for s in summaries):
        h = eps_key(headline.eps_255)
        added = [s.apgd_added[h] for s in summaries if h in s.apgd_added]
        out.update({f"apgd_added_{k}": v for k, v in _agg_counts(added).items()})
    # A nan median (no clean-correct image) carries no information about the row.
    cws = [s.cw for s in summaries if s.cw is not None and not math.isnan(s.cw[0])]
    medians = [c[0] for c in cws]
    out["cw_l2"] = float(np.mean(medians)) if cws else math.nan
    finite = all(math.isfinite(m) for m in medians)
    out["cw_std"] = float(np.std(medians, ddof=1)) if len(cws) > 1 and finite else math.nan
    # For several seeds' C&W CI; kept out of the CSV.
    distances = [c[3] for c in cws]
    out["cw_l2_per_seed"] = tuple(distances) if cws and all(d is not None for d in distances) else None
    if len(cws) > 1 and out["cw_l2_per_seed"] is not None:
        draws = _cw_median_draws(out["cw_l2_per_seed"], np.random.default_rng(REDRAW_SEED))
        out["cw_lo"], out["cw_hi"] = percentile_interval(draws, 0.95)
    else:
        # One seed: the record's own interval. Seeds without per-image distances (older records)
        # cannot be re-bootstrapped together: the envelope of their intervals (conservative).
        out["cw_lo"] = min(c[1] for c in cws) if cws else math.nan
        out["cw_hi"] = max(c[2] for c in cws) if cws else math.nan
    out["latency_ms"] = latency_ms
    out["sanity_flags"] = _sanity_text(row.records)
    return out


def _fastest_latency(records: Sequence[RunRecord]) -> dict[tuple[str, str], float]:
    """The least batch-1 latency among each architecture's records (every regime and seed). Weights do
    not change what a forward costs, and other processes on the machine only add time, so the least
    of the records' medians is the one least disturbed: a standard and a fine-tuned row of one
    architecture measured under different loads otherwise differed by half."""
    out: dict[tuple[str, str], float] = {}
    for r in records:
        if r.latency_ms_cpu_b1 is not None:
            key = (r.data.key, r.model.name)
            out[key] = min(out.get(key, math.inf), r.latency_ms_cpu_b1)
    return out


def _rank_key(row: Mapping[str, Any], worst_col: str) -> tuple[Any, ...]:
    worst, clean = row[worst_col], row["clean_acc"]
    return (
        row["data_key"],
        -worst if not math.isnan(worst) else math.inf,
        -clean if not math.isnan(clean) else math.inf,
        row["model"],
        REGIMES.index(row["regime"]),
    )


def build_table(records: Iterable[RunRecord], latency: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per (dataset, model, regime), ranked within each dataset.

    Accuracies are fractions in [0, 1]: ``<metric>_acc`` is the mean over seeds, ``_std`` the
    sample std over seeds (nan for one seed), ``_lo``/``_hi`` the Wilson 95% CI on the counts
    pooled over seeds (``_k``/``_n``). Metrics: ``clean`` and the points of the records' headline
    radius (:class:`~robust_mnv1.report.outcomes.Headline`; at 8/255 ``fgsm8``, ``pgd2``, ``pgd8`` and
    ``worst8``, the per-sample worst case over every attack at 8/255, from the robust masks;
    ``worst8_prefix`` is true when masks of different n were cut to their common prefix; a row
    lacking an L∞ attack family other rows of its dataset have names it in ``missing`` and has no
    worst case).
    ``cw_l2`` is the mean over seeds of the C&W median L2 with ``cw_lo``/``cw_hi`` its CI, and
    ``cw_l2_per_seed`` the seeds' per-image distances (a tuple of arrays; None unless every seed's
    record has them), which the CSV leaves out. ``latency_ms`` is the model's batch-1 CPU latency in
    ``latency`` (model name to ms, all measured in one run: :mod:`robust_mnv1.cost.model_latency`),
    else the least of the architecture's records (see :func:`_fastest_latency`). Sorted by
    ``data_key``, then worst-case accuracy descending, clean accuracy descending, model name and
    regime; ``rank`` restarts at 1 for each dataset. Records that cannot be combined
    (:func:`robust_mnv1.records.store.check_combinable`) raise :class:`UserError`.
    """
    records = list(records)
    check_combinable(records)
    headline = headline_of(records)
    groups = _group_rows(records)
    fastest = _fastest_latency(records)
    measured = latency or {}
    rows = [
        _row_dict(r, headline, measured.get(r.model.name, fastest.get((r.data_key, r.model.name), math.nan)))
        for r in groups
    ]
    # Rows and seeds without every L∞ family of their dataset have no worst case (see _summarize_seed);
    # a row none of whose seeds is complete ranks last instead of first on FGSM alone.
    families = _families(records)
    for row, group in zip(rows, groups, strict=True):
        by_seed: dict[int, set[str]] = defaultdict(set)
        for r in group.records:
            by_seed[r.seed] |= {e.attack for e in r.eps_results}
        row["missing"] = ",".join(sorted(families[row["data_key"]] - set.intersection(*by_seed.values())))
    rows.sort(key=lambda row: _rank_key(row, f"{headline.worst}_acc"))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table.insert(2, "rank", table.groupby("data_key", sort=False).cumcount() + 1)
    return table


def against_standard(table: pd.DataFrame, regime: str) -> pd.DataFrame:
    """The ``regime`` rows of :func:`build_table`'s ``table`` that have a standard row of the same model,
    each with that row's columns beside its own under a ``_std`` suffix, by data and model."""
    return table[table["regime"] == regime].merge(
        table[table["regime"] == "standard"], on=["data_key", "model"], suffixes=("", "_std"), sort=True
    )


def build_eps_curves(records: Iterable[RunRecord]) -> pd.DataFrame:
    """Long table of L∞ robust accuracy (mean over seeds, pooled Wilson CI) per attack and eps."""
    out = []
    for row in _group_rows(records):
        points = sorted({p for s in row.seeds.values() for p in s.points})
        for attack, eps in points:
            agg = _agg_counts(
                [s.points[(attack, eps)] for s in row.seeds.values() if (attack, eps) in s.points]
            )
            out.append(
                {
                    "data_key": row.data_key,
                    "model": row.model.name,
                    "regime": row.regime,
                    "alpha": float(row.model.alpha),
                    "rho": float(row.model.rho),
                    "attack": attack,
                    "eps_255": eps,
                    **agg,
                }
            )
    return pd.DataFrame(out)


def _cw_median_draws(seeds: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """N_BOOT bootstrap medians of each seed's per-image C&W distances, averaged over the seeds."""
    return np.mean([np.median(d[rng.integers(0, d.size, (N_BOOT, d.size))], axis=1) for d in seeds], axis=0)


def table_csv(table: pd.DataFrame) -> str:
    """``table`` as the board's CSV: every column but the per-image C&W distances, 6 significant digits."""
    return table.drop(columns="cw_l2_per_seed").to_csv(index=False, float_format="%.6g", lineterminator="\n")
