"""Workflow tests for real-cohort robustness: hostile file names, the jobs' interpreter, failures that must leave a
status record."""

from __future__ import annotations

import csv
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.formats import read_features, read_patches

from conftest import snakemake_command
from wf_configs import load_config

pytestmark = pytest.mark.workflow


def env_without_venv() -> dict[str, str]:
    """The environment of a user who runs /path/to/venv/bin/snakemake without activating the venv: no venv on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    return env


def run(workdir: Path, config: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_command(workdir, config, *args), capture_output=True, text=True,
                          env=env_without_venv())  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_status(workdir: Path, results: str = "results") -> dict[tuple[str, str], dict[str, str]]:
    with open(workdir / results / "status.csv") as f:
        return {(r["slide"], r["stage"]): r for r in csv.DictReader(f)}


def test_jobs_run_with_the_interpreter_snakemake_runs_in(tmp_path):
    """Every job calls the package through $HIVE_PYTHON, which the shell prefix sets to Snakemake's interpreter."""
    proc = run(tmp_path, {"demo": {"slides_per_class": 2, "size_px": 2048}}, "-n", "-p")
    commands = [line.strip() for line in proc.stdout.splitlines() if " -m pipeline " in line]
    assert len(commands) > 10
    wrong = [c for c in commands if "$HIVE_PYTHON -m pipeline " not in c]
    assert not wrong, wrong[:3]
    common = (Path(__file__).resolve().parents[1] / "workflow" / "rules" / "common.smk").read_text()
    assert "HIVE_PYTHON={PY};" in common and "flags.python_command(" in common
    from pipeline.wiring.flags import python_command

    assert python_command(set()) == shlex.quote(sys.executable)


def test_python_command_under_conda_is_the_envs_python():
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    from pipeline.wiring.flags import python_command

    assert python_command({DeploymentMethod.CONDA}) == "python"
    assert python_command(set(), "/opt/my venv/bin/python") == "'/opt/my venv/bin/python'"
    assert python_command({DeploymentMethod.ENV_MODULES}, "/v/bin/python") == "/v/bin/python"


def test_slide_file_with_spaces_and_non_ascii_characters(tmp_path, fixtures, cmu1):
    """A work folder, output folder, slides folder and slide files with spaces and accents go through segment, patch,
    extract, hierarchy and dataset, with the venv not activated (the jobs must use Snakemake's interpreter). A slide
    without tissue and an unreadable one are left out of dataset.csv, each with its real reason in dropped.csv."""
    workdir = tmp_path / "work dir é"
    slides = workdir / "my slides"
    slides.mkdir(parents=True)
    shutil.copy(cmu1, slides / "my slide é.svs")
    shutil.copy(fixtures / "small.svs", slides / "blank scan ü.svs")  # 16x16 px: no tissue
    shutil.copy(fixtures / "unreadable.svs", slides / "broken.svs")
    (workdir / "sheet.csv").write_text(
        "slide_id,case_id,label,file\nspaced,c1,solid,my slide é.svs\nblank,c2,glandular,blank scan ü.svs\n"
        "broken,c3,glandular,broken.svs\n",
        encoding="utf-8",
    )
    config = load_config("hostile_names")
    # a label typo is refused before any job runs, with the near miss named; fixed, the run goes ahead
    sheet = (workdir / "sheet.csv").read_text(encoding="utf-8")
    (workdir / "sheet.csv").write_text(sheet.replace("c1,solid", "c1,Solid"), encoding="utf-8")
    refused = run(workdir, config, "-n", check=False)
    assert refused.returncode != 0 and "unknown label 'Solid'" in refused.stdout + refused.stderr
    assert "did you mean 'solid'" in refused.stdout + refused.stderr and not (workdir / "my results").exists()
    (workdir / "sheet.csv").write_text(sheet, encoding="utf-8")
    first = run(workdir, config, "extract_all", "my results/cohort/dataset.csv", "--keep-going", check=False)
    assert first.returncode != 0  # the unreadable slide fails
    results = workdir / "my results"
    assert len(read_patches(results / "patches" / "spaced.h5").coords_20x) > 0
    features, coords, attrs = read_features(results / "features" / "tiny" / "tiny_5x" / "spaced.h5")
    assert len(features) == len(coords) > 0 and attrs["slide_id"] == "spaced"
    assert read_patches(results / "patches" / "blank.h5").attrs["empty_reason"]
    status = read_status(workdir, "my results")
    assert {status[("spaced", s)]["status"] for s in ("segment", "patch", "extract")} == {"ok"}
    assert status[("blank", "patch")]["status"] == "ok" and "no tissue" in status[("blank", "patch")]["reason"]
    assert status[("broken", "segment")]["status"] == "failed"

    # the second --keep-going run builds the dataset without the broken slide; each left-out slide has its reason,
    # and nothing finished in the first run is rewritten
    finished = {p: p.read_bytes() for p in (results / "patches").glob("*.h5")}
    finished |= {p: p.read_bytes() for p in (results / "features").rglob("*.h5")}
    run(workdir, config, "my results/cohort/dataset.csv", "--keep-going", check=False)
    assert all(p.read_bytes() == content for p, content in finished.items())
    with open(results / "cohort" / "dataset.csv") as f:
        assert [r["slide_id"] for r in csv.DictReader(f)] == ["spaced"]
    with open(results / "cohort" / "dropped.csv") as f:
        dropped = {r["slide_id"]: r["reason"] for r in csv.DictReader(f)}
    assert set(dropped) == {"blank", "broken"}
    assert dropped["blank"].startswith("no tissue") and "segmentation" in dropped["blank"], dropped
    assert dropped["broken"].startswith("segment failed:") and "cannot decode pixels" in dropped["broken"], dropped
