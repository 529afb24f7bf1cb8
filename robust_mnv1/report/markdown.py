"""The leaderboard page in markdown.

Per dataset: the evaluation protocol as the records state it, the reading notes, the ranked table
(:mod:`robust_mnv1.report.table`), the verdicts (:mod:`robust_mnv1.report.verdict_text`) and the
clean-accuracy cost of fine-tuning; then the per-layer latency notes and links to the figures.
Nothing here reads the clock, so the same records give the same page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from robust_mnv1.records.run_record import RunRecord
from robust_mnv1.records.schema import REGIMES
from robust_mnv1.report.figures import FIGURES
from robust_mnv1.report.outcomes import Headline, eps_key, headline_of
from robust_mnv1.report.summary import summary_lines
from robust_mnv1.report.table import REGIME_LABELS, against_standard, build_table
from robust_mnv1.report.verdict_text import section as verdict_section
from robust_mnv1.report.verdicts import Board, analyse_all

DASH = "—"


def _change(name: str, row: Mapping[str, Any], col: str) -> str:
    before, after = 100 * row[f"{col}_std"], 100 * row[col]
    return f"{name} {before:.1f}% → {after:.1f}% ({after - before:+.1f} points)"


def _clean_cost_lines(table: pd.DataFrame, headline: Headline) -> list[str]:
    lines = []
    col = f"{headline.worst}_acc"
    for regime in REGIMES[1:]:
        for _, r in against_standard(table, regime).iterrows():
            text = f"{r['model']}, {REGIME_LABELS[regime]}: {_change('clean accuracy', r, 'clean_acc')}"
            if not math.isnan(r[col] - r[f"{col}_std"]):
                text += f"; {_change(headline.point_label(headline.worst), r, col)}"
            lines.append(text)
    return lines


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


def table_header(headline: Headline, apgd: bool = False) -> tuple[str, ...]:
    """The ranked table's column names; boards with APGD records gain a column after the worst case:
    what APGD took from it."""
    return (
        "rank",
        "model",
        "regime",
        "params (M)",
        "MACs (M)",
        "clean acc",
        *(headline.point_label(key) for key, _, _ in headline.points),
        *((headline.label("APGD added"),) if apgd else ()),
        "C&W median L2",
        "latency (ms, CPU b=1)",
        "sanity flags",
        "seeds",
    )


def table_lines(rows: pd.DataFrame, headline: Headline) -> list[str]:
    """The ranked table's markdown lines (header, rule, one line a row) for rows of a table from
    :func:`robust_mnv1.report.table.build_table` at ``headline``."""
    apgd = "apgd_added_acc" in rows.columns
    header = table_header(headline, apgd)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, r in rows.iterrows():
        cells = [
            str(r["rank"]),
            r["model"],
            REGIME_LABELS[r["regime"]],
            f"{r['params_m']:.2f}",
            f"{r['macs_m']:.1f}",
            _fmt_acc(r, "clean"),
            *(_fmt_acc(r, key) for key, _, _ in headline.points),
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


def _attack_settings(records: Sequence[RunRecord], attack: str) -> str:
    settings = set()
    for r in records:
        if r.attack != attack:
            continue
        cfg = r.config.get("attack")
        if isinstance(cfg, Mapping) and isinstance(cfg.get(attack), Mapping):
            cfg = cfg[attack]  # the study records {"attack": {"pgd": {...}}}
        settings.add(
            ", ".join(_flatten("", cfg)) if isinstance(cfg, Mapping) else "not recorded in config.attack"
        )
    return " | ".join(sorted(settings))


def _protocol_lines(records: Sequence[RunRecord]) -> list[str]:
    clean_ns = ", ".join(_distinct(r.clean.n for r in records))
    orders = ", ".join(_distinct(r.eval_order for r in records))
    lines = [
        f"- Every evaluation takes the first n test images of the `{orders}` order (eval.order: "
        "`stratified` is a fixed shuffle in which every prefix holds each class in its share; "
        f"`dataset` is the dataset's own order). Clean accuracy: n = {clean_ns}."
    ]
    entries = [e for r in records for e in r.eps_results]
    for attack, name in (("fgsm", "FGSM"), ("pgd", "PGD"), ("apgd", "APGD")):
        mine = [e for e in entries if e.attack == attack]
        if not mine:
            continue
        grid = sorted({eps_key(e.eps_255) for e in mine if e.norm == "linf"})
        losses = ", ".join(_distinct(e.loss for e in mine))
        ns = ", ".join(_distinct(e.n for e in mine))
        settings = _attack_settings(records, attack)
        lines.append(
            f"- {name} (L∞): ε ∈ {{{', '.join(_fmt_eps(e) for e in grid)}}}; losses {losses}; n = {ns}"
            + (f"; settings {settings}." if settings else ".")
        )
    cw = [r.cw for r in records if r.cw is not None]
    if cw:
        budgets = ", ".join(
            _distinct(f"{c.steps} steps × {c.binary_search_steps} binary-search steps" for c in cw)
        )
        lines.append(
            f"- C&W (L2): {budgets}; n = {', '.join(_distinct(c.n for c in cw))} images; "
            f"settings {_attack_settings(records, 'cw')}."
        )
    lines.append(f"- Seeds: {', '.join(str(s) for s in sorted({r.seed for r in records}))}.")
    envs = [r.env for r in records]
    lines.append(f"- Hardware: {'; '.join(_distinct(e['device'] for e in envs))}.")
    trained = _distinct(_trained_on(r) for r in records if r.model.trained_on)
    if trained:
        lines.append(f"- Models trained on: {'; '.join(trained)}.")
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


def _trained_on(record: RunRecord) -> str:
    """Where and in what precision the record's model was trained, as the board names it."""
    info = record.model.trained_on or {}
    device = info.get("device") or "an unrecorded device"
    return f"{device} ({info['precision']})" if info.get("precision") else device


def _mixed_training_notes(records: Sequence[RunRecord]) -> list[str]:
    """A note per row whose seeds were trained on different hardware or in different precision:
    its spread over seeds then measures that difference too, not only the training seed."""
    rows: dict[tuple[str, str], dict[str, set[int]]] = {}
    for r in records:
        rows.setdefault((r.model.name, r.regime), {}).setdefault(_trained_on(r), set()).add(r.seed)
    notes = []
    for (name, regime), where in sorted(rows.items()):
        if len(where) > 1:
            parts = [
                f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, sorted(seeds)))} on {device}"
                for device, seeds in sorted(where.items(), key=lambda item: min(item[1]))
            ]
            notes.append(
                f"- {name} ({REGIME_LABELS[regime]}): trained {'; '.join(parts)}, so its spread over "
                "seeds includes the difference between those."
            )
    return notes


def _worst_attacks(records: Sequence[RunRecord]) -> str:
    """The attacks a worst case combines, as the reading notes name them."""
    names = "FGSM and PGD with each loss"
    if any(e.attack == "apgd" for r in records for e in r.eps_results):
        names = "FGSM, PGD with each loss, then APGD-CE and APGD-T on what those left robust"
    return names


def _latency_note(rows: pd.DataFrame, records: Sequence[RunRecord], run: Mapping[str, Any] | None) -> str:
    """Where the latency column's figures come from: one run that timed every architecture, or each
    architecture's own records."""
    from_records = (
        "the least over the records of the architecture (both regimes, every seed: weights do not "
        "change the cost, other processes only add time, so a model's two rows show one figure), on "
        "the study host's CPU ("
        + ("; ".join(_distinct(r.env.get("cpu") for r in records)) or "not recorded")
        + ")"
        + (
            f"; {missing} records predate that rule and name no CPU (their latency used torch's default "
            "thread count)"
            if (missing := sum("cpu" not in r.env for r in records))
            else ""
        )
    )
    head = "- latency: median wall time of a batch-1 forward on one thread, "
    if run is None:
        return head + from_records + "."
    measured = {m["model"] for m in run["models"]}
    others = sorted(set(rows["model"]) - measured)
    note = (
        head + f"of {run['reps']} calls of every architecture, all timed in one run in {run['blocks']} "
        f"interleaved blocks (`python -m robust_mnv1.latency`, {run['created']}, on "
        f"{run['env'].get('cpu') or run['env'].get('device', 'an unnamed CPU')}; p10, p90 and IQR in "
        "DIR/latency), so the figures compare across rows."
    )
    if others:
        note += f" Not in that run ({', '.join(others)}): {from_records}, so not comparable with the rest."
    return note


def _reading_notes(
    rows: pd.DataFrame, records: Sequence[RunRecord], headline: Headline, latency: Mapping[str, Any] | None
) -> list[str]:
    worst, at, col = headline.point_label(headline.worst), headline.radius, headline.worst
    notes = [
        "- Accuracies are percentages: mean over seeds, ± the sample standard deviation over seeds (only "
        "with more than one seed), and a Wilson 95% CI on the counts pooled over seeds.",
        "- FGSM@ε and PGD@ε use, per seed, the strongest recorded loss at that ε (lowest accuracy). PGD "
        "walks the ε grid upwards and attacks only the images the previous ε left robust, so its masks "
        "shrink with ε; the margin loss attacks the images cross-entropy left robust.",
        f"- {worst} counts an image as robust only if it survives every attack record of the row "
        f"at {at} ({_worst_attacks(records)}): the per-sample AND of the robust masks."
        + (
            f" {headline.label('APGD added')} is the share of the images that it broke after FGSM and "
            "PGD had left them robust: how much a PGD-only worst case would overstate robustness "
            "(AutoAttack's gap)."
            if "apgd_added_acc" in rows.columns
            else ""
        ),
        "- C&W median L2: mean over seeds of the median minimal L2 perturbation over the C&W images the "
        "model classifies correctly, an image C&W never broke counting as infinitely far (so fewer "
        "correct images stand behind a fine-tuned row's median), with its percentile bootstrap 95% CI "
        "from the record; with several seeds, a bootstrap of the seeds' mean median from their per-image "
        "distances (the envelope of the per-seed CIs for records without them).",
        f"- Ranked by {worst}, then clean accuracy, then model name and regime.",
        _latency_note(rows, records, latency),
    ]
    for _, r in rows[rows["missing"] != ""].iterrows():
        missing = r["missing"].upper().replace(",", ", ")
        notes.append(
            f"- {r['model']} ({REGIME_LABELS[r['regime']]}): "
            + (
                f"no {missing} record yet, so no worst case; ranked last."
                if math.isnan(r[f"{col}_acc"])
                else f"some seeds have no {missing} record yet; its worst case is over the seeds that do."
            )
        )
    notes += _mixed_training_notes(records)
    cut = rows[rows[f"{col}_prefix"]]
    for _, r in cut.iterrows():
        notes.append(
            f"- {r['model']} ({REGIME_LABELS[r['regime']]}): its attacks' masks cover different numbers of "
            f"images, so {worst} uses the common first images only."
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
    records: Sequence[RunRecord],
    table: pd.DataFrame | None = None,
    profiles: Sequence[Mapping[str, Any]] = (),
    boards: Mapping[str, Board] | None = None,
    skipped: Sequence[tuple[Path, str]] = (),
    latency: Mapping[str, Any] | None = None,
) -> str:
    """The leaderboard page: one section (protocol, table, verdicts) per dataset, the per-layer
    latency notes when there are ``profiles``, the figures, then the record files left out
    (``skipped``: path and reason, as :func:`robust_mnv1.records.store.read_records` reports them).
    ``latency`` is the architecture latency record the table's latency column came from, if any
    (:func:`robust_mnv1.records.latency.load_latency`).

    ``table`` and ``boards`` default to ``build_table(records)`` and ``analyse_all(records)``;
    pass them to avoid recomputing them.
    """
    records = sorted(records, key=lambda r: r.run_id)
    headline = headline_of(records)
    if table is None:
        table = build_table(records)
    newest = max((r.created for r in records), default="n/a")
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
        mine = [r for r in records if r.data.key == data_key]
        rows = table[table["data_key"] == data_key]
        labels = " / ".join(_distinct(r.data.label for r in mine))
        sizes = "; ".join(_distinct(f"{r.data.n_train} train / {r.data.n_test} test images" for r in mine))
        out += [
            "",
            f"## {labels}",
            "",
            f"Dataset `{data_key}` ({', '.join(_distinct(r.data.name for r in mine))}): {sizes}.",
            "",
            "### Evaluation protocol",
            "",
            *_protocol_lines(mine),
            "",
            "### Leaderboard",
            "",
            *_reading_notes(rows, mine, headline, latency),
            "",
            *table_lines(rows, headline),
            "",
            "### Is a lighter model easier to fool?",
            "",
            *[f"- {line}" for line in summary_lines(boards[data_key], rows)],
            "",
            *verdict_section(boards[data_key]),
        ]
        costs = _clean_cost_lines(rows, headline)
        if costs:
            out += ["", "### Clean-accuracy cost of fine-tuning", ""]
            out += [f"- {c}" for c in costs]
    if profiles:
        out += _profile_lines(profiles)
    out += ["", "## Figures", ""]
    out += [f"![{name}](figures/{name}.png)" for name in FIGURES]
    if skipped:
        out += ["", "## Skipped record files", "", "Left out with --skip-invalid:", ""]
        out += [f"- `{path.name}`: {reason}" for path, reason in skipped]
    return "\n".join(out) + "\n"
