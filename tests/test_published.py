"""The committed leaderboards are exactly what their committed records (runs, latency and per-layer profiles)
generate, and the README section is a copy of them: regenerate into a temp dir and compare bytes."""

import shutil

import pytest

from robust_mnv1.leaderboard import generate
from robust_mnv1.readme_findings import main as readme_findings

from .conftest import REPO

RESULTS = (REPO / "results", REPO / "results" / "cpu-preview", REPO / "results" / "cpu-preview" / "retrained")
PUBLISHED = [d for d in RESULTS if list((d / "runs").glob("*.json"))]


@pytest.mark.parametrize("results", PUBLISHED, ids=[d.name for d in PUBLISHED])
def test_leaderboard_regenerates_byte_identically(results, tmp_path):
    for inputs in ("runs", "profiles", "latency"):
        if (results / inputs).is_dir():
            shutil.copytree(results / inputs, tmp_path / inputs)
    generate(tmp_path)
    for name in ("leaderboard.md", "leaderboard.csv"):
        assert (tmp_path / name).read_bytes() == (results / name).read_bytes(), f"{results / name} is stale"
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert figures == sorted(p.name for p in (results / "figures").glob("*.png"))
    for name in figures:
        fresh, published = tmp_path / "figures" / name, results / "figures" / name
        assert fresh.read_bytes() == published.read_bytes(), f"{published} is stale"


@pytest.mark.skipif(not PUBLISHED, reason="no published results yet")
def test_readme_findings_match_generated_files():
    readme = REPO / "README.md"
    assert readme_findings(["--results", str(PUBLISHED[0]), "--readme", str(readme), "--check"]) == 0


DEPLOYED = [d for d in RESULTS if any(list((d / sub).glob("*.json")) for sub in ("deployed", "transfer"))]


@pytest.mark.parametrize("results", DEPLOYED, ids=[d.name for d in DEPLOYED])
def test_deployed_report_regenerates_byte_identically(results, tmp_path):
    pytest.importorskip("onnxruntime")  # the report reads no ONNX, but its module sits with the exporter
    from robust_mnv1.edge.deployed_report import generate as deployed_report

    for inputs in ("deployed", "transfer"):
        if (results / inputs).is_dir():
            ignore = shutil.ignore_patterns("*.csv", "*.png")
            shutil.copytree(results / inputs, tmp_path / inputs, ignore=ignore)
    written = deployed_report(tmp_path)
    for path in written:
        published = results / path.relative_to(tmp_path)
        assert path.read_bytes() == published.read_bytes(), f"{published} is stale"
