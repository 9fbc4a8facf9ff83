"""Segmentation and aligned patching on the real CMU-1 region and a synthetic 40x-base slide."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import SlideError
from pipeline.formats import read_patches
from pipeline.patching import PatchParams, build_grid, level0_patch_sizes, patch_slide
from pipeline.qc import read_png
from pipeline.tissue import Polygon, TissueParams, segment_slide


def run_slide(slide, tmp_path, slide_id=None, overrides=None, params=PatchParams()):
    sid = slide_id or slide.stem
    paths = {k: tmp_path / f"{sid}.{k}" for k in ("mask.png", "geojson", "json", "qc.png", "h5", "pqc.png")}
    stats = segment_slide(
        slide, sid, paths["mask.png"], paths["geojson"], paths["json"], paths["qc.png"], TissueParams(), overrides
    )
    attrs = patch_slide(slide, sid, paths["geojson"], paths["h5"], paths["pqc.png"], params, overrides)
    return stats, attrs, paths


def assert_grid_geometry(grid, width, height):
    s5, s20 = grid.attrs["patch_size_level0_5x"], grid.attrs["patch_size_level0_20x"]
    assert s5 == 4 * s20
    assert len(grid.coords_5x) > 0 and len(grid.coords_20x) > 0
    parents = grid.coords_5x[grid.parent_of_20x]
    offset = grid.coords_20x - parents
    assert ((offset >= 0) & (offset + s20 <= s5)).all(), "a 20x child leaves its parent's box"
    assert (offset % s20 == 0).all(), "a 20x child is not on its parent's 4x4 grid"
    for coords in (grid.coords_5x, grid.coords_20x):
        assert (coords >= 0).all() and (coords[:, 0] < width).all() and (coords[:, 1] < height).all()
        assert len(np.unique(coords, axis=0)) == len(coords)
    # every parent has at least one child, and at most 16
    counts = np.bincount(grid.parent_of_20x, minlength=len(grid.coords_5x))
    assert counts.min() >= 1 and counts.max() <= 16


def test_cmu1_end_to_end_geometry(cmu1, tmp_path):
    stats, attrs, paths = run_slide(cmu1, tmp_path)
    assert stats["level0_magnification"] == 20 and attrs["mpp"] == pytest.approx(0.499)
    mask = read_png(paths["mask.png"])
    assert mask.ndim == 2 and (mask > 0).mean() > 0.1
    grid = read_patches(paths["h5"])
    assert grid.attrs["patch_size_level0_20x"] == 256 and grid.attrs["patch_size_level0_5x"] == 1024
    assert grid.attrs["mpp_source"] == "openslide.mpp-x"
    assert_grid_geometry(grid, 2220, 2967)
    for png in ("qc.png", "pqc.png"):
        assert read_png(paths[png]).ndim == 3
    geo = json.loads(paths["geojson"].read_text())
    assert geo["type"] == "FeatureCollection" and geo["features"]
    for feature in geo["features"]:
        assert feature["geometry"]["type"] == "Polygon"
        for ring in feature["geometry"]["coordinates"]:
            pts = np.asarray(ring)
            assert (pts >= 0).all() and (pts[:, 0] <= 2220).all() and (pts[:, 1] <= 2967).all()
            assert (pts[0] == pts[-1]).all()


def test_synthetic_40x_geometry(slide_40x, tmp_path):
    _, attrs, paths = run_slide(slide_40x, tmp_path)
    grid = read_patches(paths["h5"])
    assert grid.attrs["level0_magnification"] == 40
    assert grid.attrs["patch_size_level0_20x"] == 512 and grid.attrs["patch_size_level0_5x"] == 2048
    assert_grid_geometry(grid, 6144, 6144)


def test_kept_20x_patches_are_tissue(slide_40x, tmp_path):
    """Pixels of kept 20x patches are mostly stained; of dropped in-slide cells mostly background."""
    import cv2

    from pipeline.slide import open_slide

    _, _, paths = run_slide(slide_40x, tmp_path)
    grid = read_patches(paths["h5"])
    s20 = grid.attrs["patch_size_level0_20x"]
    with open_slide(slide_40x) as slide:
        sat = [
            cv2.cvtColor(slide.read_region_scaled(x, y, s20, 32), cv2.COLOR_RGB2HSV)[..., 1].mean()
            for x, y in grid.coords_20x[:: max(1, len(grid.coords_20x) // 20)]
        ]
        corner = cv2.cvtColor(slide.read_region_scaled(0, 0, s20, 32), cv2.COLOR_RGB2HSV)[..., 1].mean()
    assert min(sat) > 3 * corner


def test_patch_keeps_by_tissue_fraction():
    """A square of tissue covering exactly 20x cells (0,0)-(1,1) plus half of cell (2,0)."""
    poly = Polygon(np.array([[0, 0], [640, 0], [640, 256], [512, 256], [512, 512], [0, 512], [0, 0]], float))
    grid, frac = build_grid([poly], (4096, 4096), 20, PatchParams(256, 0.5), "sq")
    assert frac[0, 0] == pytest.approx(1.0) and frac[0, 2] == pytest.approx(0.5) and frac[0, 3] == 0
    kept = {tuple(c) for c in grid.coords_20x}
    assert kept == {(0, 0), (256, 0), (0, 256), (256, 256), (512, 0)}
    grid, _ = build_grid([poly], (4096, 4096), 20, PatchParams(256, 0.6), "sq")
    assert (512, 0) not in {tuple(c) for c in grid.coords_20x}
    assert grid.coords_5x.tolist() == [[0, 0]]


def test_slot_order_is_row_major_within_parent():
    poly = Polygon(np.array([[0, 0], [1024, 0], [1024, 1024], [0, 1024], [0, 0]], float))
    grid, _ = build_grid([poly], (1024, 1024), 20, PatchParams(), "full")
    assert len(grid.coords_20x) == 16
    expected = [(c * 256, r * 256) for r in range(4) for c in range(4)]
    assert [tuple(c) for c in grid.coords_20x] == expected


def test_no_tissue_gives_valid_empty_result(fixtures, tmp_path):
    """small.svs is a 16x16 crop: no tissue piece reaches the minimum area; the stage still writes its files."""
    stats, attrs, paths = run_slide(fixtures / "small.svs", tmp_path)
    assert stats["n_tissue_pieces"] == 0 and stats["empty_reason"]
    grid = read_patches(paths["h5"])
    assert grid.coords_5x.shape == (0, 2) and grid.coords_20x.shape == (0, 2)
    assert "no tissue" in grid.attrs["empty_reason"]
    assert read_png(paths["pqc.png"]).ndim == 3


def test_below_20x_base_is_rejected():
    with pytest.raises(SlideError, match="base magnification is 10x"):
        level0_patch_sizes(10, 256, "lowmag")


def test_boxes_processed_with_override(fixtures, tmp_path):
    from pipeline.slide import MppOverride

    with pytest.raises(SlideError, match="352"):
        run_slide(fixtures / "boxes.tiff", tmp_path)
    stats, attrs, _ = run_slide(fixtures / "boxes.tiff", tmp_path, overrides={"boxes": MppOverride(0.5)})
    assert attrs["mpp_source"] == "override" and attrs["mpp"] == 0.5


def test_outputs_are_written_atomically(cmu1, tmp_path):
    """No temporary files are left behind, and a failing write leaves no output file."""
    from pipeline.formats import atomic_path

    run_slide(cmu1, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    target = tmp_path / "never.h5"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists() and not list(tmp_path.glob(".never.h5*"))
