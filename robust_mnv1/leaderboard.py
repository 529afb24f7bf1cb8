"""Generate the robustness leaderboard from the run records.

``python -m robust_mnv1.leaderboard [--results DIR]`` reads ``DIR/runs/*.json`` and writes
``DIR/leaderboard.md``, ``DIR/leaderboard.csv`` and ``DIR/figures/*.png``. Everything shown,
verdicts included, is computed from the records, and the output is a pure function of them:
fixed bootstrap seeds, stable sorting with tie-breakers and no wall-clock time, so
regenerating from the same records gives byte-identical markdown and CSV.

Records are grouped into rows by (dataset key, model name, regime); the FGSM, PGD and C&W
records of a row merge, and several seeds are averaged.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from robust_mnv1.atomic import atomic_write_text
from robust_mnv1.errors import UserError
from robust_mnv1.records import REGIMES, check_combinable, decode_mask, load_profiles, read_records
from robust_mnv1.report.figures import plot_gains, plot_series, save_png
from robust_mnv1.report.outcomes import collect
from robust_mnv1.report.verdict_text import section as verdict_section
from robust_mnv1.report.verdicts import Board, analyse
from robust_mnv1.stats import percentile_interval, wilson_ci

REGIME_LABELS = {"standard": "standard", "pgd-at": "PGD-AT", "fast-at": "fast-AT", "trades": "TRADES"}
# (metric key, attack, eps in units of 1/255) of the accuracy columns; "worst" is every attack.
ACC_METRICS = (("fgsm8", "fgsm", 8.0), ("pgd2", "pgd", 2.0), ("pgd8", "pgd", 8.0), ("worst8", "worst", 8.0))
METRIC_LABELS = {
    "fgsm8": "FGSM@8/255",
    "pgd2": "PGD@2/255",
    "pgd8": "PGD@8/255",
    "worst8": "worst-case@8/255",
    "cw": "C&W median L2",
}
# Column holding each metric's row value (the mean over seeds).
METRIC_COLUMNS = {
    "fgsm8": "fgsm8_acc",
    "pgd2": "pgd2_acc",
    "pgd8": "pgd8_acc",
    "worst8": "worst8_acc",
    "cw": "cw_l2",
}
FIGURES = ("width_series", "resolution_series", "finetune_gain", "robust_acc_vs_eps", "robustness_vs_macs")
# Bootstrap of several seeds' C&W median (their per-image distances drawn together).
# The eps at which the board reports what APGD added to the worst case (the worst case's own).
APGD_EPS = 8.0
REDRAW_SEED = (0, 1)
N_BOOT = 2000
DASH = "—"


# -- aggregation --------------------------------------------------------------------------------


def _eps_key(eps_255: float) -> float:
    # eps_255 is a float in JSON; rounding makes 8 and 7.99999999 the same grid point.
    return round(float(eps_255), 4)


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
    model: Mapping[str, Any]
    regime: str
    records: list[Mapping[str, Any]]
    seeds: dict[int, _SeedSummary]


def _families(records: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """The L∞ attack families each dataset's records hold: a seed lacking one has no worst case yet."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in records:
        out[r["data"]["key"]] |= {e["attack"] for e in r["eps_results"]}
    return out


def _summarize_seed(records: Sequence[Mapping[str, Any]], families: set[str]) -> _SeedSummary:
    # Attack records of the same model and seed evaluate the same images; the largest n is the
    # most informative clean estimate (a C&W run may use fewer images).
    best_clean = max(records, key=lambda r: r["clean"]["n"])["clean"]
    entries = [e for r in records for e in r["eps_results"] if e["norm"] == "linf"]
    by_point: dict[tuple[str, float], list[Mapping[str, Any]]] = defaultdict(list)
    for e in entries:
        by_point[(e["attack"], _eps_key(e["eps_255"]))].append(e)
    points = {}
    for key, group in by_point.items():
        # Several losses at one point (ce, ce+margin): report the strongest, i.e. lowest accuracy.
        strongest = min(group, key=lambda e: (e["robust"] / e["n"] if e["n"] else 1.0, e["loss"]))
        points[key] = (strongest["robust"], strongest["n"])
    worst = {}
    # FGSM alone is no worst case: a seed still missing a family the others have (a study still
    # running, a lost record) contributes none.
    complete = families <= {e["attack"] for e in entries}
    for eps in sorted({k[1] for k in by_point}) if complete else ():
        group = [e for e in entries if _eps_key(e["eps_255"]) == eps]
        n = min(e["n"] for e in group)
        robust = np.ones(n, dtype=bool)
        for e in group:
            robust &= decode_mask(e["robust_mask"], e["n"])[:n]
        worst[eps] = (int(robust.sum()), n, len({e["n"] for e in group}) > 1)
    apgd = [e for e in entries if e["attack"] == "apgd"]
    apgd_added = {_eps_key(e["eps_255"]): (e["attacked"] - e["robust"], e["n"]) for e in apgd}
    cw = None
    cw_records = [r for r in records if r["cw"] is not None]
    if cw_records:
        block = cw_records[0]["cw"]
        l2 = np.asarray(block["l2_per_image"], dtype=float) if "l2_per_image" in block else None
        cw = (float(block["median_l2"]), *map(float, block["median_l2_ci95"]), l2)
    return _SeedSummary((best_clean["correct"], best_clean["n"]), points, worst, apgd_added, cw)


def _group_rows(records: Iterable[Mapping[str, Any]]) -> list[_Row]:
    records = list(records)
    families = _families(records)
    grouped: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r["run_id"]):
        grouped[(r["data"]["key"], r["model"]["name"], r["regime"])].append(r)
    rows = []
    for (data_key, _, regime), group in sorted(grouped.items()):
        by_seed: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
        for r in group:
            by_seed[r["seed"]].append(r)
        seeds = {s: _summarize_seed(rs, families[data_key]) for s, rs in sorted(by_seed.items())}
        rows.append(_Row(data_key, group[0]["model"], regime, group, seeds))
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


def _sanity_text(records: Sequence[Mapping[str, Any]]) -> str:
    flags = sorted({f for r in records for f in r["sanity"]["flags"]})
    if flags:
        return ",".join(flags)
    return "ok" if all(r["sanity"]["passed"] for r in records) else "failed"


def _row_dict(row: _Row) -> dict[str, Any]:
    model = row.model
    out: dict[str, Any] = {
        "data_key": row.data_key,
        "data_label": row.records[0]["data"]["label"],
        "model": model["name"],
        "regime": row.regime,
        "alpha": float(model["alpha"]),
        "rho": float(model["rho"]),
        "input_resolution": int(model["input_resolution"]),
        "params": int(model["params"]),
        "macs": int(model["macs"]),
        "params_m": model["params"] / 1e6,
        "macs_m": model["macs"] / 1e6,
        "n_seeds": len(row.seeds),
        "seeds": ",".join(str(s) for s in row.seeds),
    }
    summaries = list(row.seeds.values())
    out.update({f"clean_{k}": v for k, v in _agg_counts([s.clean for s in summaries]).items()})
    for key, attack, eps in ACC_METRICS:
        if attack == "worst":
            found = [s.worst[eps] for s in summaries if eps in s.worst]
            out[f"{key}_prefix"] = any(prefix for _, _, prefix in found)
            agg = _agg_counts([(k, n) for k, n, _ in found])
        else:
            agg = _agg_counts([s.points[(attack, eps)] for s in summaries if (attack, eps) in s.points])
        out.update({f"{key}_{k}": v for k, v in agg.items()})
    if any(s.apgd_added for s in summaries):
        added = [s.apgd_added[APGD_EPS] for s in summaries if APGD_EPS in s.apgd_added]
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
    latencies = [r["latency_ms_cpu_b1"] for r in row.records if r["latency_ms_cpu_b1"] is not None]
    out["latency_ms"] = float(np.mean(latencies)) if latencies else math.nan
    out["sanity_flags"] = _sanity_text(row.records)
    return out


def _rank_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    worst, clean = row["worst8_acc"], row["clean_acc"]
    return (
        row["data_key"],
        -worst if not math.isnan(worst) else math.inf,
        -clean if not math.isnan(clean) else math.inf,
        row["model"],
        REGIMES.index(row["regime"]),
    )


def build_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (dataset, model, regime), ranked within each dataset.

    Accuracies are fractions in [0, 1]: ``<metric>_acc`` is the mean over seeds, ``_std`` the
    sample std over seeds (nan for one seed), ``_lo``/``_hi`` the Wilson 95% CI on the counts
    pooled over seeds (``_k``/``_n``). Metrics: ``clean``, ``fgsm8``, ``pgd2``, ``pgd8`` and
    ``worst8`` (per-sample worst case over every attack at 8/255, from the robust masks;
    ``worst8_prefix`` is true when masks of different n were cut to their common prefix; a row
    lacking an L∞ attack family other rows of its dataset have names it in ``missing`` and has no
    worst case).
    ``cw_l2`` is the mean over seeds of the C&W median L2 with ``cw_lo``/``cw_hi`` its CI, and
    ``cw_l2_per_seed`` the seeds' per-image distances (a tuple of arrays; None unless every seed's
    record has them), which the CSV leaves out. Sorted by ``data_key``, then worst-case accuracy
    descending, clean accuracy descending, model name and regime; ``rank`` restarts at 1 for each
    dataset. Records that cannot be combined
    (:func:`robust_mnv1.records.check_combinable`) raise :class:`UserError`.
    """
    records = list(records)
    check_combinable(records)
    groups = _group_rows(records)
    rows = [_row_dict(r) for r in groups]
    # Rows and seeds without every L∞ family of their dataset have no worst case (see _summarize_seed);
    # a row none of whose seeds is complete ranks last instead of first on FGSM alone.
    families = _families(records)
    for row, group in zip(rows, groups, strict=True):
        by_seed: dict[int, set[str]] = defaultdict(set)
        for r in group.records:
            by_seed[r["seed"]] |= {e["attack"] for e in r["eps_results"]}
        row["missing"] = ",".join(sorted(families[row["data_key"]] - set.intersection(*by_seed.values())))
    rows.sort(key=_rank_key)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table.insert(2, "rank", table.groupby("data_key", sort=False).cumcount() + 1)
    return table


def build_eps_curves(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
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
                    "model": row.model["name"],
                    "regime": row.regime,
                    "alpha": float(row.model["alpha"]),
                    "rho": float(row.model["rho"]),
                    "attack": attack,
                    "eps_255": eps,
                    **agg,
                }
            )
    return pd.DataFrame(out)


def analyse_all(records: Iterable[Mapping[str, Any]]) -> dict[str, Board]:
    """The verdict board (:mod:`robust_mnv1.report.verdicts`) of each dataset of ``records``."""
    outcomes = collect(records)
    return {key: analyse(outcomes, key) for key in sorted({o.data_key for o in outcomes})}


# -- several seeds' C&W interval ----------------------------------------------------------------


def _cw_median_draws(seeds: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """N_BOOT bootstrap medians of each seed's per-image C&W distances, averaged over the seeds."""
    return np.mean([np.median(d[rng.integers(0, d.size, (N_BOOT, d.size))], axis=1) for d in seeds], axis=0)


def _change(name: str, row: Mapping[str, Any], col: str) -> str:
    before, after = 100 * row[f"{col}_std"], 100 * row[col]
    return f"{name} {before:.1f}% → {after:.1f}% ({after - before:+.1f} points)"


def _clean_cost_lines(table: pd.DataFrame) -> list[str]:
    lines = []
    for regime in REGIMES[1:]:
        col = METRIC_COLUMNS["worst8"]
        merged = table[table["regime"] == regime].merge(
            table[table["regime"] == "standard"], on=["data_key", "model"], suffixes=("", "_std"), sort=True
        )
        for _, r in merged.iterrows():
            text = f"{r['model']}, {REGIME_LABELS[regime]}: {_change('clean accuracy', r, 'clean_acc')}"
            if not math.isnan(r[col] - r[f"{col}_std"]):
                text += f"; {_change('worst-case@8/255', r, col)}"
            lines.append(text)
    return lines


# -- markdown -----------------------------------------------------------------------------------


def _fmt_eps(eps_255: float) -> str:
    return f"{int(eps_255)}/255" if float(eps_255).is_integer() else f"{eps_255:g}/255"


def _fmt_acc(row: Mapping[str, Any], key: str) -> str:
    acc = row[f"{key}_acc"]
    if math.isnan(acc):
        return DASH
    std = row[f"{key}_std"]
    spread = f" ± {100 * std:.1f}" if not math.isnan(std) else ""
    return f"{100 * acc:.1f}{spread} [{100 * row[f'{key}_lo']:.1f}, {100 * row[f'{key}_hi']:.1f}]"


def _fmt_cw(row: Mapping[str, Any]) -> str:
    if math.isnan(row["cw_l2"]):
        return DASH
    spread = f" ± {row['cw_std']:.3f}" if not math.isnan(row["cw_std"]) else ""
    return f"{row['cw_l2']:.3f}{spread} [{row['cw_lo']:.3f}, {row['cw_hi']:.3f}]"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


TABLE_HEADER = (
    "rank",
    "model",
    "regime",
    "params (M)",
    "MACs (M)",
    "clean acc",
    "FGSM@8/255",
    "PGD@2/255",
    "PGD@8/255",
    "worst-case@8/255",
    "C&W median L2",
    "latency (ms, CPU b=1)",
    "sanity flags",
    "seeds",
)


def table_lines(rows: pd.DataFrame) -> list[str]:
    # Boards with APGD records gain a column after the worst case: what APGD took from it.
    apgd = "apgd_added_acc" in rows.columns
    at = TABLE_HEADER.index("worst-case@8/255") + 1
    header = TABLE_HEADER[:at] + ("APGD added@8/255",) * apgd + TABLE_HEADER[at:]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, r in rows.iterrows():
        cells = [
            str(r["rank"]),
            r["model"],
            REGIME_LABELS[r["regime"]],
            f"{r['params_m']:.2f}",
            f"{r['macs_m']:.1f}",
            _fmt_acc(r, "clean"),
            *(_fmt_acc(r, key) for key, _, _ in ACC_METRICS),
            *((_fmt_acc(r, "apgd_added"),) if apgd else ()),
            _fmt_cw(r),
            DASH if math.isnan(r["latency_ms"]) else f"{r['latency_ms']:.2f}",
            r["sanity_flags"],
            str(r["n_seeds"]),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _distinct(values: Iterable[Any]) -> list[str]:
    # Sort before converting so counts order numerically (500 before 1000).
    return [str(v) for v in sorted({v for v in values if v is not None})]


def _flatten(prefix: str, value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [
            item for k in sorted(value) for item in _flatten(f"{prefix}.{k}" if prefix else str(k), value[k])
        ]
    return [f"{prefix}={json.dumps(value, sort_keys=True)}"]


def _attack_settings(records: Sequence[Mapping[str, Any]], attack: str) -> str:
    settings = set()
    for r in records:
        if r["attack"] != attack:
            continue
        cfg = r["config"].get("attack")
        if isinstance(cfg, Mapping) and isinstance(cfg.get(attack), Mapping):
            cfg = cfg[attack]  # the study records {"attack": {"pgd": {...}}}
        settings.add(
            ", ".join(_flatten("", cfg)) if isinstance(cfg, Mapping) else "not recorded in config.attack"
        )
    return " | ".join(sorted(settings))


def _protocol_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    clean_ns = ", ".join(_distinct(r["clean"]["n"] for r in records))
    orders = ", ".join(_distinct(r["config"].get("eval", {}).get("order", "dataset") for r in records))
    lines = [
        f"- Every evaluation takes the first n test images of the `{orders}` order (eval.order: "
        "`stratified` is a fixed shuffle in which every prefix holds each class in its share; "
        f"`dataset` is the dataset's own order). Clean accuracy: n = {clean_ns}."
    ]
    entries = [e for r in records for e in r["eps_results"]]
    for attack, name in (("fgsm", "FGSM"), ("pgd", "PGD"), ("apgd", "APGD")):
        mine = [e for e in entries if e["attack"] == attack]
        if not mine:
            continue
        grid = sorted({_eps_key(e["eps_255"]) for e in mine if e["norm"] == "linf"})
        losses = ", ".join(_distinct(e["loss"] for e in mine))
        ns = ", ".join(_distinct(e["n"] for e in mine))
        settings = _attack_settings(records, attack)
        lines.append(
            f"- {name} (L∞): ε ∈ {{{', '.join(_fmt_eps(e) for e in grid)}}}; losses {losses}; n = {ns}"
            + (f"; settings {settings}." if settings else ".")
        )
    cw = [r["cw"] for r in records if r["cw"] is not None]
    if cw:
        budgets = ", ".join(
            _distinct(f"{c['steps']} steps × {c['binary_search_steps']} binary-search steps" for c in cw)
        )
        lines.append(
            f"- C&W (L2): {budgets}; n = {', '.join(_distinct(c['n'] for c in cw))} images; "
            f"settings {_attack_settings(records, 'cw')}."
        )
    lines.append(f"- Seeds: {', '.join(str(s) for s in sorted({r['seed'] for r in records}))}.")
    envs = [r["env"] for r in records]
    lines.append(f"- Hardware: {'; '.join(_distinct(e['device'] for e in envs))}.")
    libs = []
    for key, name in (
        ("torch", "torch"),
        ("torchvision", "torchvision"),
        ("foolbox", "foolbox"),
        ("art", "ART"),
    ):
        libs.append(f"{name} {' / '.join(_distinct(e[key] for e in envs)) or 'unknown'}")
    libs.append(f"Python {' / '.join(_distinct(e['python'] for e in envs)) or 'unknown'}")
    platforms = "; ".join(_distinct(e["platform"] for e in envs)) or "unknown"
    lines.append(f"- Libraries: {', '.join(libs)}; platform {platforms}.")
    commits = _distinct(e["git_commit"] for e in envs)
    lines.append(f"- Git commit(s): {', '.join(f'`{c}`' for c in commits) if commits else 'unknown'}.")
    return lines


def _worst_attacks(records: Sequence[Mapping[str, Any]]) -> str:
    """The attacks a worst case combines, as the reading notes name them."""
    names = "FGSM and PGD with each loss"
    if any(e["attack"] == "apgd" for r in records for e in r["eps_results"]):
        names = "FGSM, PGD with each loss, then APGD-CE and APGD-T on what those left robust"
    return names


def _reading_notes(rows: pd.DataFrame, records: Sequence[Mapping[str, Any]]) -> list[str]:
    notes = [
        "- Accuracies are percentages: mean over seeds, ± the sample standard deviation over seeds (only "
        "with more than one seed), and a Wilson 95% CI on the counts pooled over seeds.",
        "- FGSM@ε and PGD@ε use, per seed, the strongest recorded loss at that ε (lowest accuracy). PGD "
        "walks the ε grid upwards and attacks only the images the previous ε left robust, so its masks "
        "shrink with ε; the margin loss attacks the images cross-entropy left robust.",
        "- worst-case@8/255 counts an image as robust only if it survives every attack record of the row "
        f"at 8/255 ({_worst_attacks(records)}): the per-sample AND of the robust masks."
        + (
            " APGD added@8/255 is the share of the images that it broke after FGSM and PGD had left them "
            "robust: how much a PGD-only worst case would overstate robustness (AutoAttack's gap)."
            if "apgd_added_acc" in rows.columns
            else ""
        ),
        "- C&W median L2: mean over seeds of the median minimal L2 perturbation over the C&W images the "
        "model classifies correctly, an image C&W never broke counting as infinitely far (so fewer "
        "correct images stand behind a fine-tuned row's median), with its percentile bootstrap 95% CI "
        "from the record; with several seeds, a bootstrap of the seeds' mean median from their per-image "
        "distances (the envelope of the per-seed CIs for records without them).",
        "- Ranked by worst-case@8/255, then clean accuracy, then model name and regime.",
        "- latency: median wall time of a batch-1 forward on one thread of the study host's CPU ("
        + ("; ".join(_distinct(r["env"].get("cpu") for r in records)) or "not recorded")
        + ")"
        + (
            f"; {missing} records predate that rule and name no CPU (their latency used torch's default "
            "thread count)."
            if (missing := sum("cpu" not in r["env"] for r in records))
            else "."
        ),
    ]
    for _, r in rows[rows["missing"] != ""].iterrows():
        missing = r["missing"].upper().replace(",", ", ")
        notes.append(
            f"- {r['model']} ({REGIME_LABELS[r['regime']]}): "
            + (
                f"no {missing} record yet, so no worst case; ranked last."
                if math.isnan(r["worst8_acc"])
                else f"some seeds have no {missing} record yet; its worst case is over the seeds that do."
            )
        )
    cut = rows[rows["worst8_prefix"]]
    for _, r in cut.iterrows():
        notes.append(
            f"- {r['model']} ({REGIME_LABELS[r['regime']]}): its attacks' masks cover different numbers of "
            "images, so worst-case@8/255 uses the common first images only."
        )
    return notes


def _profile_lines(profiles: Sequence[Mapping[str, Any]]) -> list[str]:
    """The per-layer latency notes: one table row per (device, model, layer kind)."""
    out = [
        "",
        "## Per-layer latency",
        "",
        "Time per layer kind (each conv unit = conv + BN + ReLU, eval mode, median of repeated timings) "
        "next to its share of mult-adds, from `python -m robust_mnv1.cost profile=true "
        "profile_out=DIR/profiles`. The paper: 1x1 (pointwise) convs hold ~95% of the mult-adds and "
        "map onto GEMM; depthwise convs are little math but memory-bound, so they take far more than "
        "their share of time.",
        "",
        "| device | model | batch | torch | layer kind | time (ms) | time % | mult-adds % "
        "| time share / mult-add share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in profiles:
        device = p["env"]["device"] + (f", {p['threads']} thread(s)" if p.get("threads") else "")
        for row in p["kinds"]:
            out.append(
                f"| {device} | {p['model']} | {p['batch']} | {p['env'].get('torch', 'n/a')} | {row['kind']} "
                f"| {row['time_ms']:.2f} | {row['time_%']:.1f} | {row['mult_adds_%']:.2f} "
                f"| {row['time_per_mult_add_vs_avg']:.2f} |"
            )
    return out


def render_markdown(
    records: Sequence[Mapping[str, Any]],
    table: pd.DataFrame | None = None,
    profiles: Sequence[Mapping[str, Any]] = (),
    boards: Mapping[str, Board] | None = None,
) -> str:
    """The leaderboard page: one section (protocol, table, verdicts) per dataset, the per-layer
    latency notes when there are ``profiles``, then figures.

    ``table`` and ``boards`` default to ``build_table(records)`` and ``analyse_all(records)``;
    pass them to avoid recomputing them.
    """
    records = sorted(records, key=lambda r: r["run_id"])
    if table is None:
        table = build_table(records)
    newest = max((r["created"] for r in records), default="n/a")
    out = [
        "# MobileNet V1 adversarial-robustness leaderboard",
        "",
        "Generated by `python -m robust_mnv1.leaderboard --results DIR`, DIR being the directory of this "
        f"file, from the {len(records)} run records in DIR/runs (newest created {newest}); "
        "do not edit by hand.",
    ]
    if boards is None:
        boards = analyse_all(records)
    for data_key in sorted(table["data_key"].unique()) if not table.empty else []:
        mine = [r for r in records if r["data"]["key"] == data_key]
        rows = table[table["data_key"] == data_key]
        labels = " / ".join(_distinct(r["data"]["label"] for r in mine))
        sizes = "; ".join(
            _distinct(f"{r['data']['n_train']} train / {r['data']['n_test']} test images" for r in mine)
        )
        out += [
            "",
            f"## {labels}",
            "",
            f"Dataset `{data_key}` ({', '.join(_distinct(r['data']['name'] for r in mine))}): {sizes}.",
            "",
            "### Evaluation protocol",
            "",
            *_protocol_lines(mine),
            "",
            "### Leaderboard",
            "",
            *_reading_notes(rows, mine),
            "",
            *table_lines(rows),
            "",
            "### Is a lighter model easier to fool?",
            "",
            *verdict_section(boards[data_key]),
        ]
        costs = _clean_cost_lines(rows)
        if costs:
            out += ["", "### Clean-accuracy cost of fine-tuning", ""]
            out += [f"- {c}" for c in costs]
    if profiles:
        out += _profile_lines(profiles)
    out += ["", "## Figures", ""]
    out += [f"![{name}](figures/{name}.png)" for name in FIGURES]
    return "\n".join(out) + "\n"


# -- figures ------------------------------------------------------------------------------------

_REGIME_STYLE = {"standard": ("-", "o"), "pgd-at": ("--", "s"), "fast-at": (":", "^"), "trades": ("-.", "D")}


def _model_colors(table: pd.DataFrame) -> dict[str, Any]:
    from matplotlib import colormaps

    models = (
        table.sort_values(["alpha", "rho", "model"], kind="mergesort")["model"].drop_duplicates().tolist()
    )
    cmap = colormaps["viridis"]
    return {m: cmap(i / max(1, len(models) - 1) * 0.9) for i, m in enumerate(models)}


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_axis_off()


def _data_labels(table: pd.DataFrame) -> dict[str, str]:
    return {k: " / ".join(sorted(set(g["data_label"]))) for k, g in table.groupby("data_key", sort=True)}


def _plot_eps(table: pd.DataFrame, curves: pd.DataFrame, path: Path) -> None:
    labels = _data_labels(table)
    colors = _model_colors(table)
    fig = Figure(figsize=(12, 4.5 * len(labels)), layout="constrained")
    axes = fig.subplots(len(labels), 2, squeeze=False)
    for (data_key, label), ax_row in zip(labels.items(), axes, strict=True):
        for ax, attack, name in ((ax_row[0], "pgd", "PGD"), (ax_row[1], "fgsm", "FGSM")):
            sub = (
                curves[(curves["data_key"] == data_key) & (curves["attack"] == attack)]
                if len(curves)
                else curves
            )
            if sub.empty:
                _note(ax, f"{label}: no {name} records")
                continue
            for (model, regime), g in sub.groupby(["model", "regime"], sort=True):
                clean = table[
                    (table["data_key"] == data_key) & (table["model"] == model) & (table["regime"] == regime)
                ]
                g = g.sort_values("eps_255")
                c = clean.iloc[0]
                xs = [0.0, *g["eps_255"]]
                ys = 100 * np.array([c["clean_acc"], *g["acc"]])
                lo = 100 * np.array([c["clean_lo"], *g["lo"]])
                hi = 100 * np.array([c["clean_hi"], *g["hi"]])
                style, marker = _REGIME_STYLE[regime]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[ys - lo, hi - ys],
                    linestyle=style,
                    marker=marker,
                    capsize=2,
                    color=colors[model],
                    label=f"{model} ({REGIME_LABELS[regime]})",
                )
            ax.set_title(f"{label}: {name} (L∞) robust accuracy, Wilson 95% CIs")
            ax.set_xlabel("ε (×1/255; 0 = clean)")
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    save_png(fig, path)


def _pareto(points: pd.DataFrame) -> pd.DataFrame:
    """Rows not beaten by a cheaper-or-equal model with higher-or-equal robustness."""
    ordered = points.sort_values(["macs_m", "worst8_acc"], ascending=[True, False], kind="mergesort")
    best = -math.inf
    keep = []
    for idx, acc in ordered["worst8_acc"].items():
        if acc > best:
            keep.append(idx)
            best = acc
    return ordered.loc[keep]


def _plot_macs(table: pd.DataFrame, path: Path) -> None:
    labels = _data_labels(table)
    fig = Figure(figsize=(8, 5 * len(labels)), layout="constrained")
    axes = fig.subplots(len(labels), 1, squeeze=False)
    for (data_key, label), (ax,) in zip(labels.items(), axes, strict=True):
        rows = table[(table["data_key"] == data_key) & np.isfinite(table["worst8_acc"])]
        if rows.empty:
            _note(ax, f"{label}: no worst-case@8/255 results")
            continue
        std = rows[rows["regime"] == "standard"].set_index("model")
        for _, r in rows[rows["regime"] != "standard"].iterrows():
            if r["model"] in std.index:  # before -> after fine-tuning
                before = std.loc[r["model"]]
                ax.annotate(
                    "",
                    xy=(r["macs_m"], 100 * r["worst8_acc"]),
                    xytext=(before["macs_m"], 100 * before["worst8_acc"]),
                    arrowprops={"arrowstyle": "->", "color": "0.6", "lw": 0.8},
                )
        for regime in REGIMES:
            g = rows[rows["regime"] == regime]
            if not g.empty:
                ys = 100 * g["worst8_acc"]
                ax.errorbar(
                    g["macs_m"],
                    ys,
                    yerr=[ys - 100 * g["worst8_lo"], 100 * g["worst8_hi"] - ys],
                    fmt=_REGIME_STYLE[regime][1],
                    capsize=3,
                    label=REGIME_LABELS[regime],
                )
        front = _pareto(rows)
        ax.step(
            front["macs_m"], 100 * front["worst8_acc"], where="post", color="k", lw=1, label="Pareto front"
        )
        ax.scatter(front["macs_m"], 100 * front["worst8_acc"], s=120, facecolors="none", edgecolors="k")
        ax.set_xscale("log")
        # Plain numbers (3, 10, 40) read better than 3×10^0 on a short log axis.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(f"{label}: worst-case@8/255 robust accuracy vs MACs")
        ax.set_xlabel("MACs (M, log scale)")
        ax.set_ylabel("worst-case@8/255 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_png(fig, path)


# -- entry points -------------------------------------------------------------------------------


def generate(results_dir: str | Path, skip_invalid: bool = False) -> dict[str, Path]:
    """Regenerate the markdown, CSV and figures from ``results_dir/runs/*.json`` (and the latency
    notes from ``results_dir/profiles/*.json``).

    Returns the written paths keyed ``markdown``, ``csv`` and one key per figure name. Raises
    :class:`UserError`, before writing anything, when there is no valid record or when a record
    file is invalid: a board silently rebuilt without one of its records can rank a model on the
    wrong numbers. ``skip_invalid`` leaves such files out instead, and the board names them.
    """
    results_dir = Path(results_dir)
    runs = results_dir / "runs"
    records, invalid = read_records(runs)
    if invalid and not skip_invalid:
        names = "; ".join(f"{p.name} ({reason})" for p, reason in invalid)
        raise UserError(
            f"{len(invalid)} invalid record file(s) in {runs}: {names}; fix or remove them, "
            "or pass --skip-invalid to leave them out"
        )
    if not records:
        raise UserError(f"no valid run records in {runs}; run the study first (it writes runs/<run_id>.json)")
    table = build_table(records)
    boards = analyse_all(records)
    paths = {"markdown": results_dir / "leaderboard.md", "csv": results_dir / "leaderboard.csv"}
    profiles = load_profiles(results_dir / "profiles")
    markdown = render_markdown(records, table, profiles, boards)
    if invalid:
        skipped = "".join(f"\n- `{p.name}`: {reason}" for p, reason in invalid)
        markdown += f"\n## Skipped record files\n\nLeft out with --skip-invalid:\n{skipped}\n"
    csv = table.drop(columns="cw_l2_per_seed").to_csv(index=False, float_format="%.6g", lineterminator="\n")
    figures = results_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    paths.update({name: figures / f"{name}.png" for name in FIGURES})
    plot_series(boards, "width", paths["width_series"])
    plot_series(boards, "resolution", paths["resolution_series"])
    plot_gains(boards, paths["finetune_gain"])
    _plot_eps(table, build_eps_curves(records), paths["robust_acc_vs_eps"])
    _plot_macs(table, paths["robustness_vs_macs"])
    # The board last: it links the figures, so it never describes figures that failed to render.
    atomic_write_text(paths["csv"], csv)
    atomic_write_text(paths["markdown"], markdown)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m robust_mnv1.leaderboard",
        description="Regenerate leaderboard.md, leaderboard.csv and figures/ from DIR/runs/*.json.",
    )
    parser.add_argument(
        "--results", default="results", type=Path, help="results directory (default: results)"
    )
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="leave out record files that fail validation (the board lists them) instead of stopping",
    )
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            paths = generate(args.results, skip_invalid=args.skip_invalid)
        except UserError as exc:
            paths = None
            error = str(exc)
    # One line per skipped record instead of the default two-line warning format.
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if paths is None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
