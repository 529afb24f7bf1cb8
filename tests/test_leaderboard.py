"""Tests for robust_mnv1.leaderboard on hand-made records (tests/_records.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# tests/ may be run as a package (tests/__init__.py) or as plain modules on sys.path.
try:
    from tests._records import DATA, make_study, skewed_distances, write_study
except ImportError:
    from _records import DATA, make_study, skewed_distances, write_study

from robust_mnv1 import leaderboard as lb
from robust_mnv1.errors import UserError
from robust_mnv1.records import decode_mask
from robust_mnv1.stats import wilson_ci

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study() -> list[dict]:
    return make_study(flags={(0.25, "standard"): ["pgd_weaker_than_fgsm"]})


@pytest.fixture(scope="module")
def table(study):
    return lb.build_table(study)


def _row(table, alpha: float, regime: str):
    rows = table[(table["alpha"] == alpha) & (table["regime"] == regime)]
    assert len(rows) == 1
    return rows.iloc[0]


def _records_of(study, alpha: float, regime: str, seed: int = 0) -> dict[str, dict]:
    return {
        r["attack"]: r
        for r in study
        if r["model"]["alpha"] == alpha and r["regime"] == regime and r["seed"] == seed
    }


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
    clean = recs["pgd"]["clean"]
    assert (row["clean_k"], row["clean_n"]) == (clean["correct"], clean["n"])
    assert (row["clean_lo"], row["clean_hi"]) == wilson_ci(clean["correct"], clean["n"])
    fgsm8 = next(e for e in recs["fgsm"]["eps_results"] if e["eps_255"] == 8)
    assert row["fgsm8_k"] == fgsm8["robust"]
    # PGD@8 reports the stronger loss (ce+margin), PGD@2 the only one (ce).
    pgd8 = min((e for e in recs["pgd"]["eps_results"] if e["eps_255"] == 8), key=lambda e: e["robust"])
    assert pgd8["loss"] == "ce+margin"
    assert row["pgd8_k"] == pgd8["robust"]


def test_markdown_ci_text(study, table):
    md = lb.render_markdown(study, table)
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
    assert lb.TABLE_HEADER[:6] == ("rank", "model", "regime", "params (M)", "MACs (M)", "clean acc")


def test_worst_case_is_the_per_sample_and_of_all_attacks(study, table):
    for alpha in (0.25, 1.0):
        for regime in ("standard", "pgd-at"):
            recs = _records_of(study, alpha, regime)
            entries = [e for a in ("fgsm", "pgd") for e in recs[a]["eps_results"] if e["eps_255"] == 8]
            assert len(entries) == 3  # FGSM ce, PGD ce, PGD ce+margin
            robust = np.ones(entries[0]["n"], dtype=bool)
            for e in entries:
                robust &= decode_mask(e["robust_mask"], e["n"])
            row = _row(table, alpha, regime)
            assert row["worst8_k"] == robust.sum()
            assert row["worst8_k"] < min(row["fgsm8_k"], row["pgd8_k"])
            assert not row["worst8_prefix"]


def test_worst_case_uses_common_prefix_when_n_differs():
    records = make_study(alphas=(0.5,), regimes=("standard",), pgd_n=120)
    row = lb.build_table(records).iloc[0]
    recs = _records_of(records, 0.5, "standard")
    assert (row["worst8_n"], row["pgd8_n"], row["fgsm8_n"]) == (120, 120, 200)
    assert row["worst8_prefix"]
    robust = np.ones(120, dtype=bool)
    for a in ("fgsm", "pgd"):
        for e in recs[a]["eps_results"]:
            if e["eps_255"] == 8:
                robust &= decode_mask(e["robust_mask"], e["n"])[:120]
    assert row["worst8_k"] == robust.sum()
    assert "common first images" in lb.render_markdown(records)


def test_worst_case_with_a_single_attack_is_that_attack():
    records = make_study(alphas=(0.5,), regimes=("standard",), attacks=("fgsm",))
    row = lb.build_table(records).iloc[0]
    assert row["worst8_k"] == row["fgsm8_k"]
    assert math.isnan(row["pgd8_acc"]) and math.isnan(row["cw_l2"])
    md = lb.render_markdown(records)
    assert "| — |" in md


def test_seed_averaging():
    records = make_study(alphas=(0.5, 1.0), regimes=("standard",), seeds=(0, 1, 2))
    table = lb.build_table(records)
    row = _row(table, 0.5, "standard")
    assert row["n_seeds"] == 3 and row["seeds"] == "0,1,2"
    for key, attack in (("clean", "pgd"), ("pgd2", "pgd")):
        counts = []
        for seed in (0, 1, 2):
            rec = _records_of(records, 0.5, "standard", seed)[attack]
            if key == "clean":
                counts.append((rec["clean"]["correct"], rec["clean"]["n"]))
            else:
                e = next(e for e in rec["eps_results"] if e["eps_255"] == 2)
                counts.append((e["robust"], e["n"]))
        accs = [k / n for k, n in counts]
        assert row[f"{key}_acc"] == pytest.approx(np.mean(accs))
        assert row[f"{key}_std"] == pytest.approx(np.std(accs, ddof=1))
        assert row[f"{key}_std"] > 0
        pooled = wilson_ci(sum(k for k, _ in counts), sum(n for _, n in counts))
        assert (row[f"{key}_lo"], row[f"{key}_hi"]) == pytest.approx(pooled)
    cws = [_records_of(records, 0.5, "standard", s)["cw"]["cw"] for s in (0, 1, 2)]
    assert row["cw_l2"] == pytest.approx(np.mean([cw["median_l2"] for cw in cws]))
    # The seeds' per-image distances are bootstrapped together: inside the per-seed envelope.
    envelope = (min(cw["median_l2_ci95"][0] for cw in cws), max(cw["median_l2_ci95"][1] for cw in cws))
    assert envelope[0] < row["cw_lo"] < row["cw_l2"] < row["cw_hi"] < envelope[1]
    del cws[0]["l2_per_image"]  # a seed without distances: back to the envelope
    assert tuple(_row(lb.build_table(records), 0.5, "standard")[["cw_lo", "cw_hi"]]) == envelope
    md = lb.render_markdown(records, table)
    assert f"{100 * row['clean_acc']:.1f} ± {100 * row['clean_std']:.1f} [" in md


def _verdicts(findings, kind: str) -> dict[tuple[str, str], str]:
    return {(f.regime, f.metric): f.verdict for f in findings if f.kind == kind}


# Seven widths, as many models as the study has per regime; 2000 images keep the test-set noise
# of the gains (the difference of two redrawn accuracies) small against their trend.
SEVEN = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def test_monotone_data_lighter_models_are_easier_to_fool():
    found = lb.findings(make_study(alphas=SEVEN, n=2000))
    robustness = _verdicts(found, "robustness")
    assert len(robustness) == 2 * 5
    assert set(robustness.values()) == {lb.LIGHTER}
    assert set(_verdicts(found, "gain").values()) == {lb.GAIN_LARGER}
    f = next(f for f in found if (f.kind, f.regime, f.metric) == ("robustness", "standard", "pgd2"))
    assert f.n == 7 and f.rho == 1.0 and f.lo > 0
    assert f.p == pytest.approx(2 / math.factorial(7))
    assert f.text.startswith(
        "standard training: lighter models are easier to fool under PGD@2/255 (ρ_s = 1.00"
    )
    assert "permutation p = 0.000397, n = 7 models" in f.text


def test_reversed_data_larger_models_are_easier_to_fool():
    records = make_study(alphas=SEVEN, regimes=("standard",), robust_rank=tuple(range(6, -1, -1)), n=2000)
    assert set(_verdicts(lb.findings(records), "robustness").values()) == {lb.LARGER}


def test_shuffled_data_is_inconclusive():
    # ranks (1, 3, 0, 2) against MACs order (0, 1, 2, 3) have Spearman rho = 0.
    records = make_study(robust_rank=(1, 3, 0, 2))
    found = lb.findings(records)
    assert set(_verdicts(found, "robustness").values()) == {lb.INCONCLUSIVE}
    assert set(_verdicts(found, "gain").values()) == {lb.INCONCLUSIVE}
    for f in found:
        assert f.lo < 0 < f.hi
        assert "inconclusive" in f.text


def test_four_perfectly_ordered_models_are_no_verdict(table):
    # A bootstrap over 4 perfectly ordered models puts the CI above 0; yet a random order of 4
    # is perfect (either way) in 1 case of 12, so the permutation test keeps it inconclusive.
    found = lb.findings(table)
    assert {f.verdict for f in found} == {lb.INCONCLUSIVE}
    f = next(f for f in found if (f.kind, f.regime, f.metric) == ("robustness", "standard", "pgd2"))
    assert (f.n, f.rho, f.hi) == (4, 1.0, 1.0) and f.lo > 0
    assert f.p == pytest.approx(1 / 12)
    assert "permutation p = 0.0833, n = 4 models; too few models for a verdict" in f.text


def test_test_set_noise_can_outweigh_a_perfect_order():
    table = lb.build_table(make_study(alphas=SEVEN, regimes=("standard",), n=2000))
    n = 10_000

    def pgd8_finding(counts):
        tab = table.copy()
        tab["pgd8_k"], tab["pgd8_n"] = counts, n
        tab["pgd8_acc"] = tab["pgd8_k"] / n
        return next(f for f in lb.findings(tab) if f.metric == "pgd8")

    # Models one image apart in 10000 are perfectly ordered (p = 2/7!), but the order is noise.
    by_macs = np.argsort(np.argsort(table["macs"].to_numpy()))
    noise = pgd8_finding(1 + by_macs)
    assert noise.rho == 1.0 and noise.p < lb.VERDICT_P
    assert noise.lo < 0 < noise.hi and noise.verdict == lb.INCONCLUSIVE
    # Two hundred images apart, the same order is a verdict.
    assert pgd8_finding(200 * (1 + by_macs)).verdict == lb.LIGHTER


def test_test_set_noise_can_outweigh_a_perfect_order_of_gains():
    table = lb.build_table(make_study(alphas=SEVEN, n=2000))
    n = 10_000
    by_macs = np.argsort(np.argsort(table.loc[table["regime"] == "standard", "macs"].to_numpy()))
    # Both regimes are far apart model to model, but their gains differ by one image in 10000:
    # only redraws of the difference (not of either regime alone) see that as noise.
    standard = table["regime"] == "standard"
    table.loc[standard, "pgd8_k"] = 200 * (1 + by_macs)
    table.loc[~standard, "pgd8_k"] = 200 * (1 + by_macs) + 1000 + by_macs
    table["pgd8_n"] = n
    table["pgd8_acc"] = table["pgd8_k"] / n
    gain = next(f for f in lb.findings(table) if (f.kind, f.metric) == ("gain", "pgd8"))
    assert gain.rho == 1.0 and gain.p < lb.VERDICT_P
    assert gain.lo < 0 < gain.hi and gain.verdict == lb.INCONCLUSIVE


def test_cw_medians_are_redrawn_from_per_image_distances():
    records = make_study(alphas=SEVEN, regimes=("standard",))
    table = lb.build_table(records)
    tight = next(f for f in lb.findings(table) if f.metric == "cw")
    assert tight.verdict == lb.LIGHTER and "not redrawn" not in tight.text
    # The same ordered medians over images spread far wider than their steps: no verdict.
    for r in records:
        if r["attack"] == "cw":
            k, median = r["cw"]["n_clean_correct"], r["cw"]["median_l2"]
            r["cw"]["l2_per_image"] = list(median + np.linspace(-2.0, 2.0, k))
    wide = next(f for f in lb.findings(records) if f.metric == "cw")
    assert (wide.rho, wide.p) == (tight.rho, tight.p)
    assert wide.lo < 0 < wide.hi and wide.verdict == lb.INCONCLUSIVE


def test_infinite_cw_medians_rank_above_in_findings_and_gains():
    records = make_study(alphas=SEVEN)
    for r in records:
        if r["attack"] != "cw" or r["model"]["alpha"] < 0.875:
            continue
        k = r["cw"]["n_clean_correct"]
        if r["regime"] == "pgd-at":
            # The two widest fine-tuned models resist C&W on 60% of their images: median inf.
            broken = round(0.4 * k)
            l2 = sorted(r["cw"]["l2_per_image"])[:broken] + [math.inf] * (k - broken)
            r["cw"].update(l2_per_image=l2, median_l2=math.inf, median_l2_ci95=[l2[0], math.inf])
        else:
            # Their standard medians lie far above every finite fine-tuned one, so a gain taken
            # after mapping inf to a finite rank (instead of before) would come out negative.
            median = 4.0 * r["model"]["alpha"]
            r["cw"].update(l2_per_image=skewed_distances(median, k), median_l2=median)
    found = {(f.kind, f.regime): f for f in lb.findings(records) if f.metric == "cw"}
    robust, gain = found[("robustness", "pgd-at")], found[("gain", "pgd-at")]
    # Both keep all 7 models; the infinite gains rank on top rather than being dropped or misranked.
    assert robust.n == gain.n == 7
    assert robust.verdict == lb.LIGHTER
    assert gain.verdict == lb.GAIN_LARGER and gain.lo > 0


def test_records_without_distances_leave_cw_unredrawn(tmp_path):
    records = make_study(alphas=SEVEN, regimes=("standard",))
    del next(r for r in records if r["attack"] == "cw")["cw"]["l2_per_image"]
    f = next(f for f in lb.findings(records) if f.metric == "cw")
    assert "medians not redrawn: records without per-image distances" in f.text
    write_study(records, tmp_path)
    lb.generate(tmp_path)
    header = (tmp_path / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert "cw_l2" in header and "cw_l2_per_seed" not in header


def test_accuracy_redraws_follow_the_jeffreys_posterior():
    rows = pd.DataFrame({"pgd8_k": [0, 50], "pgd8_n": [100, 100]})
    draws = lb._redraw(rows, "pgd8", np.random.default_rng(0))
    assert draws.shape == (lb.N_BOOT, 2)
    assert draws[:, 0].std() > 0  # a binomial redraw of 0 correct would always be 0
    assert draws.mean(axis=0) == pytest.approx([0.5 / 101, 50.5 / 101], abs=0.003)


def test_too_few_models_is_inconclusive():
    found = lb.findings(make_study(alphas=(0.5, 1.0), regimes=("standard",)))
    assert {f.verdict for f in found} == {lb.INCONCLUSIVE}
    assert all("too few models" in f.text for f in found)


def test_infinite_and_undefined_cw_medians():
    records = make_study(regimes=("standard",))
    cws = {r["model"]["alpha"]: r["cw"] for r in records if r["attack"] == "cw"}
    # The largest model resists C&W on most images (median inf); the smallest has no defined median.
    cws[1.0].update(median_l2=math.inf, median_l2_ci95=[0.5, math.inf])
    cws[0.25].update(median_l2=math.nan, median_l2_ci95=[math.nan, math.nan], mean_l2=math.nan)
    table = lb.build_table(records)
    assert _row(table, 1.0, "standard")["cw_l2"] == math.inf
    assert math.isnan(_row(table, 0.25, "standard")["cw_l2"])
    f = next(f for f in lb.findings(table) if f.metric == "cw")
    assert (f.n, f.rho) == (3, 1.0)  # inf ranks above every finite median
    md = lb.render_markdown(records, table)
    assert "| inf [0.500, inf] |" in md


def test_findings_accept_records_or_table(study, table):
    assert lb.findings(study) == lb.findings(table)


def test_markdown_sections(study, table):
    md = lb.render_markdown(study, table)
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
        "fewer than 5 models can never reach that p",
        "### Clean-accuracy cost of fine-tuning",
        "![finetune_gain](figures/finetune_gain.png)",
    ):
        assert needle in md, needle
    assert md.index("### Evaluation protocol") < md.index("| rank |") < md.index("### Findings")


def test_one_table_per_dataset():
    other = {**DATA, "key": "svhn", "label": "SVHN", "n_train": 73257, "n_test": 26032}
    records = make_study(alphas=(0.5, 1.0), regimes=("standard",)) + make_study(
        alphas=(0.25, 0.5), regimes=("standard",), data=other
    )
    table = lb.build_table(records)
    assert table.groupby("data_key")["rank"].apply(list).to_dict() == {"cifar10-jpeg": [1, 2], "svhn": [1, 2]}
    md = lb.render_markdown(records, table)
    assert md.count("| rank |") == 2
    assert md.index("## CIFAR-10 (JPEG q75)") < md.index("## SVHN")
    assert {f.data for f in lb.findings(table)} == {"cifar10-jpeg", "svhn"}


def test_generate_is_deterministic_and_writes_pngs(tmp_path, study):
    write_study(study, tmp_path)
    first = lb.generate(tmp_path)
    assert set(first) == {"markdown", "csv", *lb.FIGURES}
    snapshot = {k: p.read_bytes() for k, p in first.items()}
    second = lb.generate(tmp_path)
    assert second == first
    assert first["markdown"].read_bytes() == snapshot["markdown"]
    assert first["csv"].read_bytes() == snapshot["csv"]
    for name in lb.FIGURES:
        data = first[name].read_bytes()
        assert first[name].parent == tmp_path / "figures"
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        assert data == snapshot[name]  # no Software/date metadata: PNGs are stable too
    csv_header = snapshot["csv"].decode().splitlines()[0].split(",")
    assert csv_header[:5] == ["data_key", "data_label", "rank", "model", "regime"]


def test_generate_copes_with_missing_regimes_and_attacks(tmp_path):
    # Only standard training and no C&W: no gains, gain figure falls back to a note.
    write_study(make_study(alphas=(0.5, 1.0), regimes=("standard",), attacks=("fgsm", "pgd")), tmp_path)
    paths = lb.generate(tmp_path)
    md = paths["markdown"].read_text()
    assert "Clean-accuracy cost" not in md and "Gain from fine-tuning" not in md
    assert paths["finetune_gain"].read_bytes().startswith(PNG_MAGIC)


def test_corrupt_record_is_skipped_and_the_rest_render(tmp_path, study):
    runs = write_study(study, tmp_path)
    victim = runs / f"{study[0]['run_id']}.json"
    victim.write_text(victim.read_text()[:100])
    with pytest.warns(UserWarning, match=victim.name):
        paths = lb.generate(tmp_path)
    md = paths["markdown"].read_text()
    assert f"from the {len(study) - 1} run records" in md
    assert md.count("| MobileNetV1-") == 8


def test_cli_writes_outputs(tmp_path, study, capsys):
    write_study(study, tmp_path)
    assert lb.main(["--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert str(tmp_path / "leaderboard.md") in out


def test_cli_empty_dir_is_a_one_line_error(tmp_path, capsys):
    assert lb.main(["--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no valid run records")
    with pytest.raises(UserError):
        lb.generate(tmp_path)


def test_records_of_different_weights_are_a_one_line_error_and_nothing_is_written(tmp_path, study, capsys):
    import copy

    records = copy.deepcopy(study)
    for r in records:
        r["model"]["weights"] = "a" * 16 if r["attack"] == "cw" else "b" * 16
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
