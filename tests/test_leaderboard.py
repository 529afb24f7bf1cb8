"""Tests for the leaderboard (robust_mnv1.report and its CLI, robust_mnv1.leaderboard) on hand-made
records (tests/_records.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

# tests/ may be run as a package (tests/__init__.py) or as plain modules on sys.path.
try:
    from tests._records import APGD_BREAKS, DATA, make_study, write_study
except ImportError:
    from _records import APGD_BREAKS, DATA, make_study, write_study

from robust_mnv1 import leaderboard as lb
from robust_mnv1.infra.errors import UserError
from robust_mnv1.readme_findings import main as readme_findings
from robust_mnv1.records.intervals import wilson_ci
from robust_mnv1.records.schema import decode_mask
from robust_mnv1.report.board import generate
from robust_mnv1.report.figures import FIGURES, _percent_window
from robust_mnv1.report.findings import END, START
from robust_mnv1.report.markdown import render_markdown, table_header
from robust_mnv1.report.outcomes import Headline, collect
from robust_mnv1.report.table import build_table
from robust_mnv1.report.timing import stage_times, totals
from robust_mnv1.report.verdict_text import verdict_lines
from robust_mnv1.report.verdicts import analyse_all

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study() -> list[dict]:
    return make_study(flags={(0.25, "standard"): ["pgd_weaker_than_fgsm"]})


@pytest.fixture(scope="module")
def table(study):
    return build_table(study)


def _row(table, alpha: float, regime: str):
    rows = table[(table["alpha"] == alpha) & (table["regime"] == regime)]
    assert len(rows) == 1
    return rows.iloc[0]


def _records_of(study, alpha: float, regime: str, seed: int = 0) -> dict[str, dict]:
    return {r.attack: r for r in study if r.model.alpha == alpha and r.regime == regime and r.seed == seed}


def test_one_row_per_model_and_regime(table):
    assert len(table) == 8
    assert set(table["regime"]) == {"standard", "pgd-at"}
    assert (table["n_seeds"] == 1).all()


def test_ranking_order(table):
    assert table["rank"].tolist() == list(range(1, 9))
    worst = table["worst8_acc"].to_numpy()
    assert (np.diff(worst) <= 0).all()
    top = table.iloc[0]
    assert (top["alpha"], top["regime"]) == (1.0, "pgd-at")
    # alpha 0.75 standard and alpha 0.25 PGD-AT tie on worst-case; higher clean accuracy wins.
    tied = table[np.isclose(table["worst8_acc"], _row(table, 0.25, "pgd-at")["worst8_acc"])]
    assert tied["regime"].tolist() == ["standard", "pgd-at"]
    assert tied["clean_acc"].is_monotonic_decreasing


def test_counts_and_wilson_ci_match_records(study, table):
    recs = _records_of(study, 0.5, "standard")
    row = _row(table, 0.5, "standard")
    clean = recs["pgd"].clean
    assert (row["clean_k"], row["clean_n"]) == (clean.correct, clean.n)
    assert (row["clean_lo"], row["clean_hi"]) == wilson_ci(clean.correct, clean.n)
    fgsm8 = next(e for e in recs["fgsm"].eps_results if e.eps_255 == 8)
    assert row["fgsm8_k"] == fgsm8.robust
    # PGD@8 reports the stronger loss (ce+margin), PGD@2 the only one (ce).
    pgd8 = min((e for e in recs["pgd"].eps_results if e.eps_255 == 8), key=lambda e: e.robust)
    assert pgd8.loss == "ce+margin"
    assert row["pgd8_k"] == pgd8.robust


def test_markdown_ci_text(study, table):
    md = render_markdown(study, table)
    row = _row(table, 0.5, "standard")
    k, n = int(row["clean_k"]), int(row["clean_n"])
    lo, hi = wilson_ci(k, n)
    cell = f"{100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    line = next(
        ln for ln in md.splitlines() if ln.startswith(f"| {row['rank']} | MobileNetV1-0.50-32px | standard |")
    )
    assert f"| {cell} |" in line
    assert line.rstrip().endswith("| ok | 1 |")
    flagged = next(ln for ln in md.splitlines() if "MobileNetV1-0.25-32px | standard |" in ln)
    assert "| pgd_weaker_than_fgsm |" in flagged
    assert table_header(Headline())[:6] == ("rank", "model", "regime", "params (M)", "MACs (M)", "clean acc")


def test_worst_case_is_the_per_sample_and_of_all_attacks(study, table):
    for alpha in (0.25, 1.0):
        for regime in ("standard", "pgd-at"):
            recs = _records_of(study, alpha, regime)
            entries = [e for a in ("fgsm", "pgd") for e in recs[a].eps_results if e.eps_255 == 8]
            assert len(entries) == 3  # FGSM ce, PGD ce, PGD ce+margin
            robust = np.ones(entries[0].n, dtype=bool)
            for e in entries:
                robust &= decode_mask(e.robust_mask, e.n)
            row = _row(table, alpha, regime)
            assert row["worst8_k"] == robust.sum()
            assert row["worst8_k"] < min(row["fgsm8_k"], row["pgd8_k"])
            assert not row["worst8_prefix"]


def test_worst_case_uses_common_prefix_when_n_differs():
    records = make_study(alphas=(0.5,), regimes=("standard",), pgd_n=120)
    row = build_table(records).iloc[0]
    recs = _records_of(records, 0.5, "standard")
    assert (row["worst8_n"], row["pgd8_n"], row["fgsm8_n"]) == (120, 120, 200)
    assert row["worst8_prefix"]
    robust = np.ones(120, dtype=bool)
    for a in ("fgsm", "pgd"):
        for e in recs[a].eps_results:
            if e.eps_255 == 8:
                robust &= decode_mask(e.robust_mask, e.n)[:120]
    assert row["worst8_k"] == robust.sum()
    assert "common first images" in render_markdown(records)


def test_worst_case_with_a_single_attack_is_that_attack():
    records = make_study(alphas=(0.5,), regimes=("standard",), attacks=("fgsm",))
    row = build_table(records).iloc[0]
    assert row["worst8_k"] == row["fgsm8_k"]
    assert math.isnan(row["pgd8_acc"]) and math.isnan(row["cw_l2"])
    md = render_markdown(records)
    assert "| — |" in md


def test_seed_averaging():
    records = make_study(alphas=(0.5, 1.0), regimes=("standard",), seeds=(0, 1, 2))
    table = build_table(records)
    row = _row(table, 0.5, "standard")
    assert row["n_seeds"] == 3 and row["seeds"] == "0,1,2"
    for key, attack in (("clean", "pgd"), ("pgd2", "pgd")):
        counts = []
        for seed in (0, 1, 2):
            rec = _records_of(records, 0.5, "standard", seed)[attack]
            if key == "clean":
                counts.append((rec.clean.correct, rec.clean.n))
            else:
                e = next(e for e in rec.eps_results if e.eps_255 == 2)
                counts.append((e.robust, e.n))
        accs = [k / n for k, n in counts]
        assert row[f"{key}_acc"] == pytest.approx(np.mean(accs))
        assert row[f"{key}_std"] == pytest.approx(np.std(accs, ddof=1))
        assert row[f"{key}_std"] > 0
        pooled = wilson_ci(sum(k for k, _ in counts), sum(n for _, n in counts))
        assert (row[f"{key}_lo"], row[f"{key}_hi"]) == pytest.approx(pooled)
    cws = [_records_of(records, 0.5, "standard", s)["cw"].cw for s in (0, 1, 2)]
    assert row["cw_l2"] == pytest.approx(np.mean([cw.median_l2 for cw in cws]))
    # The seeds' per-image distances are bootstrapped together: inside the per-seed envelope.
    envelope = (min(cw.median_l2_ci95[0] for cw in cws), max(cw.median_l2_ci95[1] for cw in cws))
    assert envelope[0] < row["cw_lo"] < row["cw_l2"] < row["cw_hi"] < envelope[1]
    # A seed without distances: back to the envelope.
    older = _records_of(records, 0.5, "standard", 0)["cw"]
    records = [replace(r, cw=replace(r.cw, l2_per_image=None)) if r is older else r for r in records]
    assert tuple(_row(build_table(records), 0.5, "standard")[["cw_lo", "cw_hi"]]) == envelope
    md = render_markdown(records, table)
    assert f"{100 * row['clean_acc']:.1f} ± {100 * row['clean_std']:.1f} [" in md


def test_latency_is_the_least_over_the_architectures_records():
    records = make_study(alphas=(0.5, 1.0), seeds=(0, 1))
    slowed = [
        replace(r, latency_ms_cpu_b1=r.model.alpha * 10 + (r.seed + 1) * (2 if r.regime == "standard" else 1))
        for r in records
    ]
    table = build_table(slowed)
    for alpha in (0.5, 1.0):
        # The fine-tuned seed 0 ran quietest: both rows of the architecture show its figure.
        assert {_row(table, alpha, regime)["latency_ms"] for regime in ("standard", "pgd-at")} == {
            alpha * 10 + 1
        }


def test_the_board_names_where_models_were_trained_and_rows_that_mix_it():
    gpu = {"device": "NVIDIA H200", "precision": "bf16-autocast"}
    cpu = {"device": "cpu (x86_64)", "precision": "fp32"}

    def trained(r):
        # Seed 2 of alpha 0.5 comes from the GPU, every other model from the CPU.
        where = gpu if (r.model.alpha, r.seed) == (0.5, 2) else cpu
        return replace(r, model=replace(r.model, trained_on=where))

    records = [trained(r) for r in make_study(alphas=(0.5, 1.0), seeds=(0, 1, 2))]
    md = render_markdown(records)
    assert "- Models trained on: NVIDIA H200 (bf16-autocast); cpu (x86_64) (fp32)." in md
    for regime in ("standard", "PGD-AT"):
        assert (
            f"- MobileNetV1-0.50-32px ({regime}): trained seeds 0, 1 on cpu (x86_64) (fp32); seed 2 on "
            "NVIDIA H200 (bf16-autocast), so its spread over seeds includes the difference between those."
        ) in md
    assert "MobileNetV1-1.00-32px (standard): trained" not in md
    # Records that do not say where their model was trained add neither line.
    md = render_markdown(make_study(alphas=(0.5, 1.0), seeds=(0, 1, 2)))
    assert "Models trained on" not in md and "): trained seed" not in md


def test_the_board_concludes_on_a_planted_width_effect():
    # Robustness grows with width; on 2000 paired images the lightest vs the largest is a verdict.
    boards = analyse_all(make_study(n=2000))
    lines = verdict_lines(boards["cifar10-jpeg"])
    assert any("lighter is easier to fool" in line for line in lines)
    assert all("width (α at ρ = 1)" in line for line in lines)


def test_records_without_clean_masks_compare_robust_accuracy_only():
    records = [replace(r, clean=replace(r.clean, correct_mask=None)) for r in make_study()]
    board = analyse_all(records)["cifar10-jpeg"]
    # Robust masks still pair; fooling rates and C&W distances need to know the correct images.
    assert {t.metric.key for t in board.tests} == {"robust_worst8"}
    assert len(board.skipped) == 3 * len(board.series)


def test_markdown_sections(study, table):
    md = render_markdown(study, table)
    for needle in (
        "# MobileNet V1 adversarial-robustness leaderboard",
        "## CIFAR-10 (JPEG q75)",
        "50000 train / 10000 test images",
        "ε ∈ {1/255, 2/255, 4/255, 8/255}; losses ce, ce+margin",
        'settings eps_255=[1, 2, 4, 8], loss="ce", margin_at_255=[8], restarts=1, steps=20.',
        "100 steps × 9 binary-search steps",
        "- Seeds: 0.",
        "Hardware: NVIDIA H200",
        "torch 2.11.0",
        "`abc1234`",
        "pooled over seeds",
        "Holm-adjusted p < 0.05",
        "#### Every test",
        "### Clean-accuracy cost of fine-tuning",
        "![finetune_gain](figures/finetune_gain.png)",
    ):
        assert needle in md, needle
    assert md.index("### Evaluation protocol") < md.index("| rank |") < md.index("### Is a lighter model")


def test_one_table_per_dataset():
    other = replace(DATA, key="svhn", label="SVHN", n_train=73257, n_test=26032)
    records = make_study(alphas=(0.5, 1.0), regimes=("standard",)) + make_study(
        alphas=(0.25, 0.5), regimes=("standard",), data=other
    )
    table = build_table(records)
    assert table.groupby("data_key")["rank"].apply(list).to_dict() == {"cifar10-jpeg": [1, 2], "svhn": [1, 2]}
    md = render_markdown(records, table)
    assert md.count("| rank |") == 2
    assert md.index("## CIFAR-10 (JPEG q75)") < md.index("## SVHN")
    assert set(analyse_all(records)) == {"cifar10-jpeg", "svhn"}


def test_generate_is_deterministic_and_writes_pngs(tmp_path, study):
    write_study(study, tmp_path)
    first = generate(tmp_path)
    assert set(first) == {"markdown", "csv", *FIGURES}
    snapshot = {k: p.read_bytes() for k, p in first.items()}
    second = generate(tmp_path)
    assert second == first
    assert first["markdown"].read_bytes() == snapshot["markdown"]
    assert first["csv"].read_bytes() == snapshot["csv"]
    for name in FIGURES:
        data = first[name].read_bytes()
        assert first[name].parent == tmp_path / "figures"
        # The study has widths only: its resolution figure is the short "no series" note.
        assert data.startswith(PNG_MAGIC) and len(data) > (2000 if name == "resolution_series" else 5000)
        assert data == snapshot[name]  # no Software/date metadata: PNGs are stable too
    csv_header = snapshot["csv"].decode().splitlines()[0].split(",")
    assert csv_header[:5] == ["data_key", "data_label", "rank", "model", "regime"]


def test_generate_copes_with_missing_regimes_and_attacks(tmp_path):
    # Only standard training and no C&W: no gains, gain figure falls back to a note.
    write_study(make_study(alphas=(0.5, 1.0), regimes=("standard",), attacks=("fgsm", "pgd")), tmp_path)
    paths = generate(tmp_path)
    md = paths["markdown"].read_text()
    assert "Clean-accuracy cost" not in md and "Gain from fine-tuning" not in md
    assert paths["finetune_gain"].read_bytes().startswith(PNG_MAGIC)


def test_an_invalid_record_stops_the_board_and_leaves_the_old_one(tmp_path, study, capsys):
    runs = write_study(study, tmp_path)
    generate(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.parent != runs}
    victim = runs / f"{study[0].run_id}.json"
    victim.write_text(victim.read_text()[:100])
    assert lb.main(["--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and victim.name in err[0] and "--skip-invalid" in err[0]
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.parent != runs}


def test_skip_invalid_leaves_the_record_out_and_says_so(tmp_path, study):
    runs = write_study(study, tmp_path)
    victim = runs / f"{study[0].run_id}.json"
    victim.write_text(victim.read_text()[:100])
    md = generate(tmp_path, skip_invalid=True)["markdown"].read_text()
    assert f"from the {len(study) - 1} run records" in md
    assert md.split("### Is a lighter")[0].count("| MobileNetV1-") == 8
    assert "## Skipped record files" in md and victim.name in md


def test_cli_writes_outputs(tmp_path, study, capsys):
    write_study(study, tmp_path)
    assert lb.main(["--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert str(tmp_path / "leaderboard.md") in out


def test_cli_timing_prints_each_models_stage_times_and_writes_nothing(tmp_path, study, capsys):
    write_study(study, tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert lb.main(["--results", str(tmp_path), "--timing"]) == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    lines, totals = capsys.readouterr().out.split("\n\n")
    lines = lines.splitlines()
    assert totals.splitlines()[0] == "| stage | device | worker hours |"
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    families = sorted({r.attack for r in study}, key=["fgsm", "pgd", "apgd", "cw"].index)
    assert header == ["model", "seed", "regime", "trained on", "train s", "finetune s"] + [
        f"{a} s" for a in families
    ] + ["sanity s", "evaluated on"]
    assert len(lines) - 2 == len({(r.model.name, r.seed, r.regime) for r in study})
    first = next(r for r in study if r.regime == "standard")
    row = next(
        [c.strip() for c in line.strip("|").split("|")]
        for line in lines[2:]
        if f"| {first.model.name} | {first.seed} | standard |" in line
    )
    assert row[5] == "—"  # no fine-tuning in a standard row
    assert row[header.index(f"{first.attack} s")] == f"{first.timing['eval_s']:.0f}"


def test_timing_gives_each_row_the_largest_peak_its_records_measured(study):
    assert "peak RSS MiB" not in stage_times(study)  # no record measured it
    first = next(r for r in study if r.regime == "standard")
    key = (first.model.name, first.seed, "standard")
    twins = [r for r in study if (r.model.name, r.seed, r.regime) == key]
    assert len(twins) > 1
    peaks = {r.run_id: 1000.0 + 10 * i for i, r in enumerate(twins)}
    measured = [replace(r, memory={"peak_rss_mib": peaks[r.run_id]}) if r in twins else r for r in study]
    table = stage_times(measured)
    row = table[(table["model"] == key[0]) & (table["seed"] == key[1]) & (table["regime"] == key[2])]
    assert row["peak RSS MiB"].item() == max(peaks.values())
    assert list(table.columns[-2:]) == ["peak RSS MiB", "evaluated on"]
    assert table["peak RSS MiB"].isna().sum() == len(table) - 1  # rows without a measurement show a dash


def test_timing_totals_count_each_models_training_once(study):
    table = stage_times(study)
    hours = totals(table).set_index("stage")["worker hours"]
    trained = {(r.model.name, r.seed): r.timing["train_s"] for r in study}
    tuned = {(r.model.name, r.seed): r.timing["finetune_s"] for r in study if r.regime != "standard"}
    evaluated = sum(r.timing["eval_s"] for r in study)
    # The table rounds each stage to whole seconds.
    assert hours["training"] * 3600 == pytest.approx(sum(trained.values()), abs=len(trained))
    assert hours["fine-tuning"] * 3600 == pytest.approx(sum(tuned.values()), abs=len(tuned))
    assert hours["evaluation"] * 3600 == pytest.approx(evaluated, abs=len(study))


def test_timing_counts_each_run_of_the_sanity_checks_once(study):
    first = next(r for r in study if r.regime == "standard")
    key = (first.model.name, first.seed, "standard")
    twins = [r for r in study if (r.model.name, r.seed, r.regime) == key]
    assert len(twins) > 2
    # One run wrote all but the last record and repeats its sanity time in each; a later run wrote the last.
    ran = {r.run_id: 7.0 if r is twins[-1] else 10.0 for r in twins}
    timed = [replace(r, timing={**r.timing, "sanity_s": ran[r.run_id]}) if r in twins else r for r in study]
    table = stage_times(timed)
    row = table[(table["model"] == key[0]) & (table["seed"] == key[1]) & (table["regime"] == key[2])]
    assert row["sanity s"].item() == 17
    assert (table["sanity s"] == 0).sum() == len(table) - 1
    evaluated = sum(r.timing["eval_s"] for r in timed) + 17
    assert totals(table).set_index("stage")["worker hours"]["evaluation"] * 3600 == pytest.approx(
        evaluated, abs=len(timed)
    )


def test_cli_empty_dir_is_a_one_line_error(tmp_path, capsys):
    assert lb.main(["--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no valid run records")
    with pytest.raises(UserError):
        generate(tmp_path)


def test_records_of_different_weights_are_a_one_line_error_and_nothing_is_written(tmp_path, study, capsys):
    records = [
        replace(r, model=replace(r.model, weights="a" * 16 if r.attack == "cw" else "b" * 16)) for r in study
    ]
    write_study(records, tmp_path)
    assert lb.main(["--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evaluated different weights" in err
    assert not (tmp_path / "leaderboard.md").exists()


def test_cli_module_entry_point_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "robust_mnv1.leaderboard", "--results", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_a_row_missing_an_attack_family_has_no_worst_case_and_ranks_last():
    records = [r for r in make_study() if not (r.model.alpha == 1.0 and r.attack == "pgd")]
    table = build_table(records)
    incomplete = table[table["alpha"] == 1.0]
    assert set(incomplete["missing"]) == {"pgd"} and incomplete["worst8_acc"].isna().all()
    assert list(table["rank"][table["alpha"] == 1.0]) == [len(table) - 1, len(table)]
    assert "no PGD record yet" in render_markdown(records, table)


def test_a_seed_missing_an_attack_family_leaves_the_worst_case_to_the_complete_seeds():
    both = make_study(alphas=(0.5, 1.0), seeds=(0, 1))
    records = [r for r in both if not (r.seed == 1 and r.attack == "pgd")]
    seed0 = build_table([r for r in both if r.seed == 0])
    table = build_table(records)
    assert list(table["worst8_acc"]) == list(seed0["worst8_acc"])
    assert set(table["missing"]) == {"pgd"}
    assert "some seeds have no PGD record yet" in render_markdown(records, table)


def test_apgd_records_lower_the_worst_case_and_the_board_says_by_how_much():
    plain = build_table(make_study(alphas=(0.5, 1.0)))
    records = make_study(alphas=(0.5, 1.0), attacks=("fgsm", "pgd", "apgd", "cw"))
    table = build_table(records)
    broke = sum(APGD_BREAKS.values())
    assert list(table["worst8_k"]) == [
        k - broke
        for k in plain.set_index(["model", "regime"]).loc[
            list(zip(table["model"], table["regime"], strict=True)), "worst8_k"
        ]
    ]
    assert (table["apgd_added_k"] == broke).all() and (table["apgd_added_n"] == table["worst8_n"]).all()
    md = render_markdown(records, table)
    assert "| APGD added@8/255 |" in md and "APGD-CE and APGD-T" in md
    assert "- APGD (L∞): ε ∈ {8/255}; losses apgd-ce+apgd-t" in md
    # Without APGD records the board has no such column: published boards stay as they were.
    assert "apgd_added_acc" not in plain.columns
    assert "APGD" not in render_markdown(make_study(alphas=(0.5, 1.0)), plain)


def test_a_row_without_apgd_where_others_have_it_has_no_worst_case():
    records = make_study(alphas=(0.5, 1.0), attacks=("fgsm", "pgd", "apgd", "cw"))
    records = [r for r in records if not (r.model.alpha == 1.0 and r.attack == "apgd")]
    table = build_table(records)
    assert set(table["missing"][table["alpha"] == 1.0]) == {"apgd"}
    assert table["worst8_acc"][table["alpha"] == 1.0].isna().all()


def test_the_verdicts_worst_case_takes_apgd_too():
    records = make_study(alphas=(0.5, 1.0), attacks=("fgsm", "pgd", "apgd", "cw"))
    for outcome in collect(records):
        (apgd,) = [
            r
            for r in records
            if r.attack == "apgd" and (r.model.name, r.regime) == (outcome.model, outcome.regime)
        ]
        entry = apgd.eps_results[0]
        assert np.array_equal(outcome.robust["worst8"], decode_mask(entry.robust_mask, entry.n))


def _at_headline(records, eps_255):
    """The records as if made with eval.headline_eps_255 = ``eps_255`` (a config change, so a new hash)."""
    return [replace(r, config={**r.config, "eval": {"headline_eps_255": eps_255}}) for r in records]


def test_the_headline_radius_comes_from_the_records():
    records = _at_headline(make_study(alphas=(0.5, 1.0)), 4)
    table = build_table(records)
    assert {"fgsm4_acc", "pgd4_acc", "worst4_acc", "pgd2_acc"} <= set(table.columns)
    assert "worst8_acc" not in table.columns
    # The worst case at 4/255 is the AND of every 4/255 mask, and the ranking follows it.
    assert (np.diff(table["worst4_acc"].to_numpy()) <= 0).all()
    md = render_markdown(records, table)
    assert "| FGSM@4/255 | PGD@2/255 | PGD@4/255 | worst-case@4/255 |" in md
    assert "8/255" not in md.split("### Is a lighter")[0].split("### Leaderboard")[1]
    board = analyse_all(records)["cifar10-jpeg"]
    assert board.headline == Headline(4.0)
    assert {t.metric.key for t in board.tests} >= {"robust_worst4", "fool_worst4"}


def test_records_of_two_headline_radii_cannot_share_a_board():
    records = make_study(alphas=(0.5,), regimes=("standard",))
    mixed = records[:1] + _at_headline(records[1:], 4)
    with pytest.raises(UserError, match=r"different eval\.headline_eps_255 \(4, 8\)"):
        build_table(mixed)


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ([100.0, 100.0], (91.0, 101.0)),  # saturated at 100%: not the middle of 95-105
        ([0.0, 0.0], (-1.0, 9.0)),
        ([49.0, 51.0], (44.9, 55.1)),  # too flat: opened to 10 points around the data, plus the margin
        ([9.0, 80.0, np.nan], (5.45, 83.55)),  # tall enough: the data and a 5% margin
        ([np.nan, np.nan], (0.0, 1.0)),  # nothing to show: matplotlib's empty axis
    ],
)
def test_percentage_panels_stay_inside_0_to_100_and_at_least_10_points_tall(bounds, expected):
    ax = Figure().subplots()
    _percent_window(ax, bounds)
    assert ax.get_ylim() == pytest.approx(expected)


def test_readme_findings_fills_the_block_and_check_tells_stale_from_fresh(tmp_path, study, capsys):
    write_study(study, tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{START}\nold\n{END}\n\nkept\n")
    assert readme_findings(["--results", str(tmp_path), "--readme", str(readme), "--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    assert readme_findings(["--results", str(tmp_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\n") and text.endswith(f"{END}\n\nkept\n") and "\nold\n" not in text
    assert "In short, counted from the verdicts and the table below:" in text and "- **Width**" in text
    assert readme_findings(["--results", str(tmp_path), "--readme", str(readme), "--check"]) == 0


def test_readme_findings_bad_input_is_one_line_and_writes_nothing(tmp_path, study, capsys):
    write_study(study, tmp_path)
    missing = tmp_path / "nowhere" / "README.md"
    assert readme_findings(["--results", str(tmp_path), "--readme", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot read {missing}")
    assert not missing.parent.exists()
    unmarked = tmp_path / "README.md"
    unmarked.write_text("# no block here\n")
    assert readme_findings(["--results", str(tmp_path), "--readme", str(unmarked)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no <!-- findings:start -->" in err
    assert unmarked.read_text() == "# no block here\n"
