"""Where a study's time went: each model's training and each record's evaluation, from the records.

The records keep their stage times (``timing``: training and fine-tuning as the model cache measured
them where the model was trained, evaluation and sanity checks where the record was made), so the
table can be rebuilt whenever records are added, on any machine. Times depend on the machine and its
load when the record was made; the table names the CPU or GPU of each.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from robust_mnv1.records.run_record import RunRecord
from robust_mnv1.records.schema import ATTACKS

COLUMNS = ("model", "seed", "regime", "trained on", "train s", "finetune s")
# A record's peak covers its unit up to that record, so a row's peak is the largest of its records'.
PEAKS = {"peak_rss_mib": "peak RSS MiB", "peak_cuda_mib": "peak CUDA MiB"}


def stage_times(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per (model, seed, regime): training seconds, each attack family's evaluation seconds (its
    record's ``eval_s``), the sanity checks' seconds, the peak memory of the unit's process where
    records measured it, plus the device each record was evaluated on. The sanity checks run once per
    model in each run that evaluates it, and every record that run writes repeats their ``sanity_s``:
    a row counts each distinct figure once."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        key = (r.data.key, r.model.macs, r.model.name, r.seed, r.regime)
        t = r.timing
        row = rows.setdefault(
            key,
            {
                "model": r.model.name,
                "seed": r.seed,
                "regime": r.regime,
                "trained on": (r.model.trained_on or {}).get("device") or "",
                "train s": round(t["train_s"]),
                "finetune s": round(t["finetune_s"]) if r.regime != "standard" else None,
                "evaluated on": set(),
                "sanity": set(),
            },
        )
        row[f"{r.attack} s"] = round(t["eval_s"])
        row["sanity"].add(t.get("sanity_s", 0.0))
        row["evaluated on"].add(r.env.get("cpu") or r.env["device"])
        for key, column in PEAKS.items():
            if key in (r.memory or {}):
                row[column] = max(row.get(column, 0.0), r.memory[key])
    ordered = [rows[k] for k in sorted(rows, key=lambda k: (*k[:4], k[4] != "standard", k[4]))]
    table = pd.DataFrame(
        [
            {
                **row,
                "sanity s": round(sum(row["sanity"])),
                "evaluated on": ", ".join(sorted(row["evaluated on"])),
            }
            for row in ordered
        ]
    )
    attacks = [f"{a} s" for a in ATTACKS if f"{a} s" in table]
    peaks = [c for c in PEAKS.values() if c in table]
    return table[[*COLUMNS, *attacks, "sanity s", *peaks, "evaluated on"]] if len(table) else table


def totals(table: pd.DataFrame) -> pd.DataFrame:
    """Hours of one worker per stage and device, summed over a :func:`stage_times` table: training once
    per (model, seed) (its standard and fine-tuned rows share it), fine-tuning per fine-tuned row, and
    every attack family's evaluation with the sanity checks. What a study cost in compute, whatever its
    wall time was."""
    attacks = [c for c in table.columns if c.endswith(" s") and c not in ("train s", "finetune s")]
    trained = table.drop_duplicates(["model", "seed"])
    parts = [
        ("training", trained.groupby("trained on")["train s"].sum()),
        ("fine-tuning", table.groupby("trained on")["finetune s"].sum()),
        ("evaluation", table[attacks].sum(axis=1).groupby(table["evaluated on"]).sum()),
    ]
    rows = [
        {"stage": stage, "device": device, "worker hours": seconds / 3600}
        for stage, per_device in parts
        for device, seconds in per_device.items()
        if seconds > 0
    ]
    return pd.DataFrame(rows, columns=["stage", "device", "worker hours"])


def markdown(table: pd.DataFrame, digits: int = 0) -> str:
    """The table as GitHub markdown, numbers to ``digits`` decimals; a missing stage is a dash."""
    if not len(table):
        return "no records\n"
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        # Seconds are whole numbers; pandas holds a column with gaps as floats.
        cells = ["—" if pd.isna(v) else f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
