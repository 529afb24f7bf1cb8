"""``python -m robust_mnv1.deployed_report [--results DIR]``: the deployed model's tables, from records alone.

Reads ``DIR/deployed/*.json`` (``python -m robust_mnv1.deployed``) and ``DIR/transfer/*.json``
(``python -m robust_mnv1.transfer``) and writes

* ``DIR/transfer/transfer_matrix.csv``: one row per (eps, source, target), the target's accuracy on the
  source's PGD examples, with its count and Wilson 95% interval;
* ``DIR/transfer/transfer_matrix_<eps>.png``: that matrix at each eps as an annotated heatmap;
* ``DIR/deployed.md``: per model and regime, ONNX fp32/int8 latency, int8's clean drop and int8's
  robust accuracy on examples crafted on fp32 against fp32's own at 2/255 and 8/255 with the paired
  test's verdict; then the transfer matrices.

The same records give the same bytes: rows are sorted, numbers formatted to fixed digits, nothing
holds a date, and the PNGs carry no timestamp. A record that fails validation is one ``error:`` line
naming it and exit status 1, and nothing is written.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robust_mnv1.edge.deployed_records import (
    model_id,
    read_records,
    validate_deployed_record,
    validate_transfer_record,
)
from robust_mnv1.infra.atomic import atomic_write_text
from robust_mnv1.infra.errors import UserError
from robust_mnv1.records.schema import REGIMES

# The eps of deployed.md's columns: the study's headline 8/255, and 2/255, where standard models are
# not all broken, so that int8 against fp32 can show a difference there too.
TABLE_EPS = (2.0, 8.0)
CSV_COLUMNS = (
    *("data", "eps_255", "source", "source_regime", "source_seed", "target", "target_regime", "target_seed"),
    *("white_box", "n", "robust", "accuracy", "ci95_lo", "ci95_hi"),
)
_REGIME_LABELS = {"standard": "standard", "pgd-at": "PGD-AT", "fast-at": "Fast-AT", "trades": "TRADES"}


def _order(m: Mapping[str, Any]) -> tuple:
    """Models sorted as the study's boards sort them: by regime, then α, ρ and seed."""
    regime = REGIMES.index(m["regime"]) if m["regime"] in REGIMES else len(REGIMES)
    return regime, m["alpha"], m["rho"], m["seed"], m["name"]


def label(m: Mapping[str, Any]) -> str:
    """A model's short name on the tables and figures: ``0.25-32px PGD-AT`` (``s1`` for seed 1)."""
    seed = f" s{m['seed']}" if m["seed"] else ""
    return f"{m['name'].removeprefix('MobileNetV1-')} {_REGIME_LABELS.get(m['regime'], m['regime'])}{seed}"


@dataclass
class Matrix:
    """One eps of the transfer matrix: ``cells[(source, target)]`` is the target's accuracy entry on
    the source's examples; sources and targets are model ids in board order."""

    data: str
    eps_255: float
    models: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)

    def accuracy(self, source: str, target: str) -> float:
        cell = self.cells.get((source, target))
        return math.nan if cell is None else cell["accuracy"]

    def ns(self) -> list[int]:
        return sorted({c["n"] for c in self.cells.values()})


def matrices(records: Sequence[Mapping[str, Any]]) -> list[Matrix]:
    """The transfer matrix at each eps the records hold, from one record per source."""
    labels = {r["data"]["label"] for r in records}
    if len(labels) > 1:
        raise UserError(f"transfer records of several data sets in one results directory: {sorted(labels)}")
    out: dict[float, Matrix] = {}
    for r in records:
        source = model_id(r["source"]["name"], r["source"]["regime"], r["source"]["seed"])
        for e in r["eps"]:
            m = out.setdefault(float(e["eps_255"]), Matrix(r["data"]["label"], float(e["eps_255"])))
            m.models.update(r["targets"])
            m.sources.append(source)
            m.cells.update({(source, t): entry for t, entry in e["targets"].items()})
    for m in out.values():
        m.sources = sorted(set(m.sources), key=lambda i: _order(m.models[i]))
        m.targets = sorted(m.models, key=lambda i: _order(m.models[i]))
    return [out[e] for e in sorted(out)]


def matrix_csv(ms: Sequence[Matrix]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for m in ms:
        for s in m.sources:
            for t in m.targets:
                cell = m.cells.get((s, t))
                if cell is None:
                    continue
                src, tgt = m.models[s], m.models[t]
                lo, hi = cell["ci95"]
                models = (src["name"], src["regime"], src["seed"], tgt["name"], tgt["regime"], tgt["seed"])
                numbers = (cell["n"], cell["robust"], f"{cell['accuracy']:.6f}", f"{lo:.6f}", f"{hi:.6f}")
                w.writerow((m.data, f"{m.eps_255:g}", *models, s == t, *numbers))
    return buf.getvalue()


def plot_matrix(m: Matrix, path: Path) -> None:
    """The matrix at one eps as a heatmap, each cell annotated, the white-box diagonal outlined."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from robust_mnv1.report.figures import save_png

    values = np.array([[100 * m.accuracy(s, t) for t in m.targets] for s in m.sources])
    rows, cols = values.shape
    fig = Figure(figsize=(max(6.4, 2.4 + 0.8 * cols), max(4.0, 2.2 + 0.5 * rows)))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    digits = 1 if cols <= 8 else 0
    for i in range(rows):
        for j in range(cols):
            v = values[i, j]
            text = "—" if math.isnan(v) else f"{v:.{digits}f}"
            colour = "black" if not math.isnan(v) and v >= 60 else "white"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color=colour if not math.isnan(v) else "grey",
            )
            if m.sources[i] == m.targets[j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xticks(range(cols), [label(m.models[t]) for t in m.targets], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(rows), [label(m.models[s]) for s in m.sources], fontsize=8)
    ax.set_xlabel("evaluated on (target)")
    ax.set_ylabel("PGD crafted on (source)")
    ns = m.ns()
    images = f"first {ns[0]} test images" if len(ns) == 1 else "first n test images (n in the CSV)"
    ax.set_title(
        f"PGD at {m.eps_255:g}/255: each target's accuracy (%) on each source's examples\n"
        f"{m.data}, {images}\ndiagonal (outlined): white-box; elsewhere: transferred",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, label="target accuracy (%)")
    fig.tight_layout()
    save_png(fig, path)


def _pct(entry: Mapping[str, Any]) -> str:
    lo, hi = entry["ci95"]
    return f"{100 * entry['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _eps_cells(record: Mapping[str, Any], eps_255: float) -> list[str]:
    for e in record["transfer"]["eps"]:
        if float(e["eps_255"]) == eps_255:
            c = e["int8_vs_fp32"]
            verdict = f"{c['verdict']} ({100 * c['difference']:+.1f} pp, p = {c['mcnemar_p']:.2g})"
            return [_pct(e["onnx int8"]), _pct(e["onnx fp32"]), verdict]
    return ["—"] * 3


def deployed_table(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """deployed.md's table: one row per deployed record, in board order."""
    head = ["model", "regime", "seed", "ONNX fp32 ms", "ONNX int8 ms", "int8 clean drop (pp)"]
    for e in TABLE_EPS:
        head += [f"int8 @{e:g}/255", f"fp32 white-box @{e:g}/255", f"int8 vs fp32 @{e:g}/255"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(records, key=lambda r: _order(r["model"])):
        m, lat, clean = r["model"], r["latency"]["engines"], r["clean"]
        drop = clean["int8_vs_fp32"]
        row = [
            m["name"],
            _REGIME_LABELS.get(m["regime"], m["regime"]),
            str(m["seed"]),
            f"{lat['onnx fp32']['median_ms']:.3f}",
            f"{lat['onnx int8']['median_ms']:.3f}",
            f"{100 * clean['int8_drop']:+.2f} ({drop['verdict']}, p = {drop['mcnemar_p']:.2g})",
        ]
        for e in TABLE_EPS:
            row += _eps_cells(r, e)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def matrix_table(m: Matrix) -> list[str]:
    """One eps of the transfer matrix as a markdown table, accuracy in %, the diagonal in bold."""
    lines = [
        "| crafted on ↓ / evaluated on → | " + " | ".join(label(m.models[t]) for t in m.targets) + " |",
        "|" + "---|" * (len(m.targets) + 1),
    ]
    for s in m.sources:
        cells = []
        for t in m.targets:
            v = m.accuracy(s, t)
            text = "—" if math.isnan(v) else f"{100 * v:.1f}"
            cells.append(f"**{text}**" if s == t else text)
        lines.append(f"| {label(m.models[s])} | " + " | ".join(cells) + " |")
    return lines


def _examples(attacks: Sequence[Mapping[str, Any]]) -> str:
    """How the records' PGD examples were made, once per distinct way."""
    kinds = sorted({f"{a['steps']} steps, {a['examples']}" for a in attacks})
    return "; ".join(kinds)


def markdown(
    deployed: Sequence[Mapping[str, Any]], transfer: Sequence[Mapping[str, Any]], ms: Sequence[Matrix]
) -> str:
    lines = [
        "# The deployed model: robustness of ONNX fp32 and int8, and transfer between models",
        "",
        "Generated from the records in `deployed/` and `transfer/` next to this file by "
        "`python -m robust_mnv1.deployed_report --results <this directory>`; docs/edge.md explains them.",
        "",
    ]
    if deployed:
        data = sorted({r["data"]["label"] for r in deployed})
        cpus = sorted({r["latency"]["cpu"] for r in deployed})
        calls = sorted({r["latency"]["reps"] for r in deployed})
        ns = sorted({r["transfer"]["n"] for r in deployed})
        lines += [
            "## ONNX fp32 and int8",
            "",
            f"Data: {', '.join(data)}. PGD ({_examples([r['transfer']['attack'] for r in deployed])}) "
            "crafted white-box on the PyTorch "
            f"fp32 model on the first {', '.join(map(str, ns))} test images, then run through the two ONNX "
            "files: "
            "*int8* is the int8 file's robust accuracy on those examples, *fp32 white-box* the fp32 "
            "file's, in % with Wilson 95% intervals. *int8 vs fp32* is the paired verdict: `loses`/`gains` "
            "when McNemar's exact test on the images only one of them gets right rejects at 0.05, `keeps` "
            "when the 95% interval of the difference lies within the record's margin, else `no detectable "
            "difference`; the difference is int8 − fp32. The clean drop is int8 − fp32 on the whole test "
            "set.",
            "",
            *deployed_table(deployed),
            "",
            f"Latency: median of {', '.join(map(str, calls))} calls, batch 1, one thread, on "
            f"{'; '.join(cpus)} (onnxruntime's CPU execution provider).",
            "",
        ]
    if ms:
        lines += [
            "## Transfer matrix",
            "",
            f"Data: {ms[0].data}. Each row's model crafted PGD examples "
            f"({_examples([r['attack'] for r in transfer])}) on the first "
            f"{', '.join(map(str, sorted({n for m in ms for n in m.ns()})))} test images; each column's "
            "model was run on them (PyTorch fp32). A cell is the column model's accuracy (%) on the row "
            "model's examples: on the diagonal (bold) that is the white-box robust accuracy, elsewhere a "
            "black-box transfer attack. All cells with counts and intervals: "
            "[transfer/transfer_matrix.csv](transfer/transfer_matrix.csv).",
            "",
        ]
        for m in ms:
            name = f"transfer_matrix_{m.eps_255:g}.png"
            lines += [f"### {m.eps_255:g}/255", "", *matrix_table(m), "", f"![{name}](transfer/{name})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def generate(results: str | Path) -> list[Path]:
    """Write deployed.md, the matrix CSV and its figures from the records under ``results``; return
    the paths written. Every record is read and checked before anything is written."""
    results = Path(results)
    deployed = read_records(results / "deployed", validate_deployed_record)
    transfer = read_records(results / "transfer", validate_transfer_record)
    if not deployed and not transfer:
        raise UserError(
            f"no deployed or transfer records under {results}; run python -m robust_mnv1.deployed"
        )
    ms = matrices(transfer) if transfer else []
    written = []
    if ms:
        written.append(atomic_write_text(results / "transfer" / "transfer_matrix.csv", matrix_csv(ms)))
        for m in ms:
            path = results / "transfer" / f"transfer_matrix_{m.eps_255:g}.png"
            plot_matrix(m, path)
            written.append(path)
    written.append(atomic_write_text(results / "deployed.md", markdown(deployed, transfer, ms)))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m robust_mnv1.deployed_report",
        description="Regenerate deployed.md and transfer/transfer_matrix.{csv,png} from DIR's records.",
    )
    parser.add_argument(
        "--results", default="results", type=Path, help="results directory (default: results)"
    )
    args = parser.parse_args(argv)
    try:
        paths = generate(args.results)
    except UserError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0
