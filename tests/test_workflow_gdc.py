"""The whole front of the workflow against a loopback GDC server: query -> download -> segment -> patch."""

from __future__ import annotations

import csv

import pytest

from pipeline.demo import make_demo_slide
from pipeline.formats import read_patches

from gdc_server import FakeFile, GdcServer

pytestmark = pytest.mark.workflow


def test_gdc_query_download_segment_patch(tmp_path, snakemake):
    files = []
    for i, (project, label) in enumerate([("TCGA-LUAD", "glandular"), ("TCGA-LUSC", "solid"), ("TCGA-LUAD", "glandular")]):
        slide_id = f"TCGA-AA-{1000 + i}-01Z-00-DX1"
        path = tmp_path / f"{slide_id}.tiff"
        make_demo_slide(path, slide_id, label, seed=1, size=2048, mpp=0.5)
        files.append(FakeFile(f"{slide_id}.svs", path.read_bytes(), project, f"TCGA-AA-{1000 + i}"))
    with GdcServer(files) as server:
        config = {
            "source": "gdc",
            "gdc": {"api_url": server.url, "slides_dir": "slides", "task": "tcga_nsclc"},
        }
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
