"""Workflow tests: snakemake runs in a temporary directory on small configs, through patching."""

from __future__ import annotations

import csv
import shutil

import pytest

from pipeline.formats import read_patches

from wf_configs import load_config

pytestmark = pytest.mark.workflow

SMALL_DEMO = load_config("two_slides", "with_real")  # five slides: two of each class and the real one


def read_status(workdir):
    with open(workdir / "results" / "status.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from conftest import run_snakemake

    workdir = tmp_path_factory.mktemp("demo")
    run_snakemake(workdir, SMALL_DEMO, "patch_all")
    return workdir


def test_demo_through_patching(demo_run):
    results = demo_run / "results"
    slides = ["CMU-1-Small-Region"] + [f"demo_{c}_{i:02d}" for c in ("glandular", "solid") for i in range(2)]
    for slide in slides:
        grid = read_patches(results / "patches" / f"{slide}.h5")
        assert len(grid.coords_20x) > 0, slide
        for sub in ("qc/tissue", "qc/patches", "tissue"):
            assert (results / sub / f"{slide}.png").stat().st_size > 0
        assert (results / "logs" / "segment" / f"{slide}.log").exists()
        assert (results / "benchmarks" / "patch" / f"{slide}.tsv").exists()
    with open(results / "cohort" / "sheet.csv") as f:
        sheet = list(csv.DictReader(f))
    assert {r["label"] for r in sheet} == {"glandular", "solid", ""}
    status = read_status(demo_run)
    assert {r["status"] for r in status} == {"ok"} and len(status) == 2 * len(slides)


def test_demo_slides_are_deterministic(demo_run, tmp_path):
    from pipeline.demo import make_demo_slide

    make_demo_slide(tmp_path / "again.tiff", "demo_solid_01", "solid", seed=7, size=2048, mpp=0.5)
    original = demo_run / "results" / "demo" / "slides" / "demo_solid_01.tiff"
    assert (tmp_path / "again.tiff").read_bytes() == original.read_bytes()


def test_deleting_one_patch_file_recomputes_only_that_slide(demo_run, snakemake):
    results = demo_run / "results" / "patches"
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.h5")}
    (results / "demo_solid_00.h5").unlink()
    dry = snakemake(demo_run, SMALL_DEMO, "patch_all", "-n")
    assert "patch                   1" in dry.stdout.replace("\t", " ") or _job_count(dry.stdout, "patch") == 1
    assert _job_count(dry.stdout, "segment") == 0
    snakemake(demo_run, SMALL_DEMO, "patch_all")
    after = {p.name: p.stat().st_mtime_ns for p in results.glob("*.h5")}
    assert after.keys() == before.keys()
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {"demo_solid_00.h5"}


def _job_count(stdout: str, rule: str) -> int:
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == rule and parts[1].isdigit():
            return int(parts[1])
    return 0


def test_full_dag_dry_run(tmp_path, snakemake):
    proc = snakemake(tmp_path, {}, "-n")
    assert _job_count(proc.stdout, "demo_slide") == 20  # 4 subtypes x 5 slides
    assert _job_count(proc.stdout, "segment") == 21
    assert _job_count(proc.stdout, "patch") == 21
    # demo: 5 methods (FiVE too) on tiny, HiVE-MIL on tiny_hlss; demo_tree: HMIL and 4 flat; demo_survival: HiLa,
    # 2 ABMILs, prompt risk (both on tiny only)
    assert _job_count(proc.stdout, "train") == 5 + 1 + 5 + 4
    assert _job_count(proc.stdout, "splits") == 3  # demo 4-shot, demo_tree 2-shot, demo_survival cv5
    assert _job_count(proc.stdout, "extract") == 21  # tiny from the slides; tiny_hlss adapts tiny's features
    assert _job_count(proc.stdout, "adapt_features") == 1
    assert _job_count(proc.stdout, "pretrain_tiles") == 1 and _job_count(proc.stdout, "pretrain") == 1
    assert _job_count(proc.stdout, "hlss_eval") == 2  # demo and demo_tree (labelled tasks)


def test_keep_going_finishes_good_slides_and_lists_bad_ones(tmp_path, snakemake, fixtures, cmu1):
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("unopenable.tiff", "unreadable.svs", "boxes.tiff"):
        shutil.copy(fixtures / name, slides / name)
    shutil.copy(cmu1, slides / "CMU-1-Small-Region.svs")
    (tmp_path / "sheet.csv").write_text(
        "slide_id,case_id,label\nCMU-1-Small-Region,c1,a\nunopenable,c2,a\nunreadable,c3,b\nboxes,c4,b\n"
    )
    config = {"source": "local", "local": {"slides_dir": "slides", "sheet": "sheet.csv"},
              "tasks": [{"name": "t", "labels": ["a", "b"], "prompts": str(tmp_path / "p.json")}]}
    proc = snakemake(tmp_path, config, "patch_all", "--keep-going", check=False)
    assert proc.returncode != 0
    assert read_patches(tmp_path / "results" / "patches" / "CMU-1-Small-Region.h5").coords_20x.shape[0] > 0
    failed = {r["slide"]: r["reason"] for r in read_status(tmp_path) if r["status"] == "failed"}
    assert set(failed) == {"unopenable", "unreadable", "boxes"}
    assert "Unsupported TIFF compression" in failed["unopenable"]
    assert "cannot decode pixels" in failed["unreadable"]
    assert "352.8" in failed["boxes"]
    # the log of a failed job names the slide and the reason
    assert "slide 'unopenable'" in (tmp_path / "results" / "logs" / "segment" / "unopenable.log").read_text()

    # an override lets boxes through; the finished slide is not recomputed
    (tmp_path / "mpp.csv").write_text("slide_id,mpp\nboxes,0.5\n")
    done = (tmp_path / "results" / "patches" / "CMU-1-Small-Region.h5").stat().st_mtime_ns
    config["mpp_overrides"] = "mpp.csv"
    snakemake(tmp_path, config, "patch_all", "--keep-going", check=False)
    assert read_patches(tmp_path / "results" / "patches" / "boxes.h5").attrs["mpp_source"].startswith("override")
    assert (tmp_path / "results" / "patches" / "CMU-1-Small-Region.h5").stat().st_mtime_ns == done
    statuses = {(r["slide"], r["stage"]): r["status"] for r in read_status(tmp_path)}
    assert statuses[("boxes", "patch")] == "ok"


@pytest.mark.parametrize(
    "config,message",
    [
        ({"tissu": {}}, "Additional properties are not allowed ('tissu' was unexpected)"),
        ({"patching": {"patch_size": "big"}}, "'big' is not of type 'integer'"),
        ({"source": "cloud"}, "'cloud' is not one of"),
    ],
)
def test_config_errors_are_clear(tmp_path, snakemake, config, message):
    proc = snakemake(tmp_path, config, "-n", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_slides_failed_in_an_earlier_run_are_left_out_of_cohort_rules(tmp_path, snakemake):
    """After a --keep-going run lost a slide, the next run trains on the rest but still retries that slide."""
    from pipeline import status

    status.record(tmp_path / "results" / "status", "extract", "demo_solid_01", False, "cannot decode pixels")
    proc = snakemake(tmp_path, SMALL_DEMO, "-n", "-p")
    dataset_cmd = next(line for line in proc.stdout.splitlines() if "pipeline dataset" in line)
    assert "demo_solid_00" in dataset_cmd and "demo_solid_01" not in dataset_cmd
    extract_cmds = [line for line in proc.stdout.splitlines() if "pipeline extract" in line]
    assert any("demo_solid_01" in line for line in extract_cmds)


def test_chunked_extraction_decodes_once_for_every_backbone_and_stays_up_to_date(demo_run, snakemake):
    """shared_decode with two backbones: one chunk job per slide makes both backbones' files, linked into place by
    take_features; they equal a single-slide run's, and a second run finds nothing to do (the linked files are
    newer than their chunk)."""
    import numpy as np

    from pipeline.features.extract import extract_slide
    from pipeline.formats import read_features

    config = {**SMALL_DEMO, "features": {"shared_decode": True, "backbones": [
        {"name": "tiny", "weights": "random"}, {"name": "plip", "weights": "random"}]}}
    slides = ("CMU-1-Small-Region", "demo_solid_01")
    targets = [f"results/features/{bb}/{bb}_{mag}/{slide}.h5" for bb in ("tiny", "plip") for mag in ("5x", "20x")
               for slide in slides]
    proc = snakemake(demo_run, config, *targets)
    assert _job_count(proc.stderr, "extract_chunk") == 2 and _job_count(proc.stderr, "take_features") == 4
    results = demo_run / "results"
    extract_slide(results / "demo" / "slides" / "demo_solid_01.tiff", results / "patches" / "demo_solid_01.h5",
                  demo_run / "one_5x.h5", demo_run / "one_20x.h5", "tiny", weights="random", device="cpu",
                  progress=False)
    for mag in ("5x", "20x"):
        np.testing.assert_array_equal(read_features(results / "features" / "tiny" / f"tiny_{mag}" / "demo_solid_01.h5")[0],
                                      read_features(demo_run / f"one_{mag}.h5")[0])
    again = snakemake(demo_run, config, *targets, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
