"""The whole front of the workflow against a loopback GDC server: query -> download -> segment -> patch."""

from __future__ import annotations

import csv

import pytest

from pipeline.demo import make_demo_slide
from pipeline.formats import read_patches

from gdc_server import FakeFile, GdcServer
from wf_configs import load_config

pytestmark = pytest.mark.workflow


def test_gdc_query_download_segment_patch(tmp_path, snakemake):
    files = []
    for i, (project, label) in enumerate([("TCGA-LUAD", "glandular"), ("TCGA-LUSC", "solid"), ("TCGA-LUAD", "glandular")]):
        slide_id = f"TCGA-AA-{1000 + i}-01Z-00-DX1"
        path = tmp_path / f"{slide_id}.tiff"
        make_demo_slide(path, slide_id, label, seed=1, size=2048, mpp=0.5)
        files.append(FakeFile(f"{slide_id}.svs", path.read_bytes(), project, f"TCGA-AA-{1000 + i}"))
    with GdcServer(files) as server:
        config = load_config("gdc", gdc={"api_url": server.url})
        snakemake(tmp_path, config, "patch_all")
        assert len(server.data_requests()) == 3
        # the default target (train_all, predict_all) builds its DAG once the query has run
        dry = snakemake(tmp_path, config, "-n")
        assert "predict" in dry.stdout and "train" in dry.stdout
    with open(tmp_path / "results" / "cohort" / "sheet.csv") as f:
        sheet = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert {r["label"] for r in sheet.values()} == {"LUAD", "LUSC"}
    assert sheet["TCGA-AA-1000-01Z-00-DX1"]["case_id"] == "TCGA-AA-1000"
    for f in files:
        slide_id = f.file_name.removesuffix(".svs")
        assert (tmp_path / "slides" / f.file_name).read_bytes() == f.data
        grid = read_patches(tmp_path / "results" / "patches" / f"{slide_id}.h5")
        assert len(grid.coords_20x) > 0 and grid.attrs["level0_magnification"] == 20


def test_gdc_default_target_trains_and_predicts_without_a_file_that_fails_its_md5(tmp_path, snakemake):
    """One download fails its md5 for good: it is recorded, and the second --keep-going run trains and predicts on
    the rest through the default target (train_all, predict_all); dropped.csv names the download failure."""
    files = []
    for i, (project, label) in enumerate([("TCGA-LUAD", "glandular")] * 4 + [("TCGA-LUSC", "solid")] * 3):
        slide_id = f"TCGA-AB-{2000 + i}-01Z-00-DX1"
        path = tmp_path / f"{slide_id}.tiff"
        make_demo_slide(path, slide_id, label, seed=i, size=2048, mpp=0.5)
        files.append(FakeFile(f"{slide_id}.svs", path.read_bytes(), project, f"TCGA-AB-{2000 + i}"))
    bad = files[0].file_name.removesuffix(".svs")
    config = load_config("gdc", "gdc_training")
    with GdcServer(files) as server:
        server.always_corrupt.add(files[0].file_id)
        config["gdc"]["api_url"] = server.url
        first = snakemake(tmp_path, config, "--keep-going", check=False)
        assert first.returncode != 0, first.stdout[-3000:]
        assert (tmp_path / "results" / "status").is_dir(), first.stdout[-3000:] + first.stderr[-3000:]
        with open(tmp_path / "results" / "status" / "download" / f"{bad}.json") as f:
            assert "md5" in f.read()
        second = snakemake(tmp_path, config, "--keep-going", check=False)
    assert second.returncode != 0, second.stdout[-3000:]  # the download is retried, and fails again
    results = tmp_path / "results"
    with open(results / "cohort" / "dataset.csv") as f:
        kept = [r["slide_id"] for r in csv.DictReader(f)]
    assert len(kept) == 6 and bad not in kept
    with open(results / "cohort" / "dropped.csv") as f:
        dropped = {r["slide_id"]: r["reason"] for r in csv.DictReader(f)}
    assert dropped[bad].startswith("download failed:") and "md5" in dropped[bad], dropped
    assert list((results / "models" / "tcga_nsclc").rglob("results.csv")), "train_all did not finish"
    predictions = list(results.rglob("predictions/**/*.csv")) + list(results.rglob("predictions.csv"))
    assert predictions, sorted(str(p.relative_to(results)) for p in results.rglob("*.csv"))
