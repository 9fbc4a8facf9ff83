"""Quality gates: `ruff check` clean on the package, tests and benchmarks (rules in pyproject.toml),
`snakemake --lint` clean, `snakefmt --check` passing (line length from pyproject.toml), and `snakemake --report`
embedding the QC pictures of a finished run."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, copy_workdir, run_snakemake
from wf_configs import load_config

SMALL_DEMO = load_config("two_slides")
WORKFLOW_FILES = [REPO / "Snakefile", REPO / "workflow" / "rules"]


def test_lint_is_clean(tmp_path):
    proc = run_snakemake(tmp_path, SMALL_DEMO, "--lint", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in output, output[-6000:]


def test_ruff_check_is_clean():
    ruff = Path(sys.executable).parent / "ruff"
    assert ruff.exists(), f"ruff is not installed beside {sys.executable} (test extra)"
    proc = subprocess.run([str(ruff), "check", "pipeline", "tests", "bench"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, f"run `ruff check --fix pipeline tests bench`:\n{proc.stdout[-6000:]}"


def test_snakefmt_check_passes():
    snakefmt = Path(sys.executable).parent / "snakefmt"
    assert snakefmt.exists(), f"snakefmt is not installed beside {sys.executable} (test extra)"
    cmd = [str(snakefmt), "--check", "--diff", "--config", str(REPO / "pyproject.toml"), *map(str, WORKFLOW_FILES)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    diff = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f"run `snakefmt Snakefile workflow/rules` to fix:\n{diff}"


@pytest.fixture(scope="module")
def demo_with_report(two_slides_patched, tmp_path_factory) -> Path:
    """The session's patched two-slide demo (its SMALL_DEMO run through patch_all), copied, with its report."""
    workdir = copy_workdir(two_slides_patched[0], tmp_path_factory.mktemp("report") / "run")
    run_snakemake(workdir, SMALL_DEMO, "patch_all", "--report", "report.html")
    return workdir


@pytest.mark.workflow
def test_report_embeds_every_qc_picture(demo_with_report):
    report = demo_with_report / "report.html"
    assert report.exists() and report.stat().st_size > 0
    html = report.read_text()
    results = demo_with_report / "results"
    slides = sorted(p.stem for p in (results / "patches").glob("*.h5"))
    assert slides
    for kind in ("tissue", "patches"):
        for slide in slides:
            png = results / "qc" / kind / f"{slide}.png"
            entry = f'"results/qc/{kind}/{slide}.png"'
            assert entry in html, f"{png} is not in the report: mark the rule's qc output with report()"
            # the picture itself is embedded (base64), so the report is readable away from the results folder
            assert base64.b64encode(png.read_bytes()).decode() in html, f"{png}: bytes not embedded in the report"
    assert "Quality control" in html
