"""Aligned 5x/20x patch grids on level-0 coordinates.

One level-0 grid with origin (0, 0): a 5x patch is S5 = 4 * S20 level-0 pixels, so it covers exactly a 4x4 block
of 20x positions. A 20x patch is kept when its tissue fraction reaches the threshold; a 5x patch is kept when at
least one of its 16 children is. Tissue fractions come from rasterising the tissue polygons with `SUB x SUB`
samples per 20x patch, all patches at once (no per-patch geometry tests).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline import qc
from pipeline.errors import SlideError
from pipeline.formats import CHILDREN_PER_SIDE, PatchGrid, PathLike, write_patches
from pipeline.geometry import Polygon
from pipeline.readers import DEFAULT_READER
from pipeline.slide import MppOverride, open_slide
from pipeline.tissue import polygons_from_geojson

log = logging.getLogger(__name__)

#: resolution of QC pictures (um/px); coarse enough to stay small, fine enough to see 20x patches.
QC_MPP = 4.0

#: raster samples per 20x patch side used to measure tissue fractions.
SUB = 8
#: cv2 puts pixel centres at integer coordinates and fills pixels on an edge; moving vertices by just over half a
#: pixel makes a raster pixel count as tissue exactly when its centre lies inside the polygon.
CENTRE = 0.5 + 1 / 16  # one fixed-point step (shift=4) past the half pixel


@dataclass(frozen=True)
class PatchParams:
    patch_size: int = 256
    min_tissue_fraction: float = 0.25


def level0_patch_sizes(level0_magnification: int, patch_size: int, slide_id: str) -> tuple[int, int]:
    """Level-0 sizes of a 20x and a 5x patch: 256 px at 20x is 256 level-0 px on a 20x scan, 512 on a 40x one."""
    if level0_magnification < 20:
        raise SlideError(
            slide_id,
            f"base magnification is {level0_magnification}x; 20x patches would need upsampling. "
            "Check the slide's mpp or give an override.",
        )
    s20 = patch_size * level0_magnification // 20
    if s20 * 20 != patch_size * level0_magnification:
        raise SlideError(slide_id, f"patch size {patch_size} at {level0_magnification}x is not a whole level-0 size")
    return s20, CHILDREN_PER_SIDE * s20


def tissue_fractions(polygons: list[Polygon], s20: int, grid_w: int, grid_h: int, slide_size: tuple[int, int]) -> np.ndarray:
    """[grid_h, grid_w] fraction of each 20x cell covered by tissue and lying inside the slide."""
    scale = s20 / SUB  # level-0 px per raster px
    raster = np.zeros((grid_h * SUB, grid_w * SUB), np.uint8)
    shift = 4  # cv2 fixed-point bits, for sub-pixel vertex positions
    for poly in polygons:
        outer = np.round((poly.outer / scale - CENTRE) * (1 << shift)).astype(np.int32)
        cv2.fillPoly(raster, [outer], 1, lineType=cv2.LINE_8, shift=shift)
        if poly.holes:
            holes = [np.round((h / scale - CENTRE) * (1 << shift)).astype(np.int32) for h in poly.holes]
            cv2.fillPoly(raster, holes, 0, lineType=cv2.LINE_8, shift=shift)
    # samples beyond the slide's edge are never tissue
    raster[int(math.ceil(slide_size[1] / scale)) :, :] = 0
    raster[:, int(math.ceil(slide_size[0] / scale)) :] = 0
    return raster.reshape(grid_h, SUB, grid_w, SUB).mean(axis=(1, 3))


def build_grid(
    polygons: list[Polygon],
    slide_size: tuple[int, int],
    level0_magnification: int,
    params: PatchParams,
    slide_id: str,
) -> tuple[PatchGrid, np.ndarray]:
    """The aligned grid and the 20x tissue-fraction map. Rows: 5x in (y, x) order; 20x grouped by parent, slot order."""
    s20, s5 = level0_patch_sizes(level0_magnification, params.patch_size, slide_id)
    n5_w = math.ceil(slide_size[0] / s5)
    n5_h = math.ceil(slide_size[1] / s5)
    grid_w, grid_h = n5_w * CHILDREN_PER_SIDE, n5_h * CHILDREN_PER_SIDE
    frac = tissue_fractions(polygons, s20, grid_w, grid_h, slide_size)
    keep20 = frac >= max(params.min_tissue_fraction, 1e-9)
    # [n5_h, 4, n5_w, 4] -> per-parent child map
    blocks = keep20.reshape(n5_h, CHILDREN_PER_SIDE, n5_w, CHILDREN_PER_SIDE).transpose(0, 2, 1, 3)
    keep5 = blocks.reshape(n5_h, n5_w, -1).any(axis=2)
    py, px = np.nonzero(keep5)  # row-major (y, x)
    coords_5x = np.stack([px * s5, py * s5], axis=1).astype(np.int64)
    child_maps = blocks[py, px].reshape(len(py), CHILDREN_PER_SIDE**2)  # [N, 16] row-major slots
    parent_idx, slot = np.nonzero(child_maps)
    cx = coords_5x[parent_idx, 0] + (slot % CHILDREN_PER_SIDE) * s20
    cy = coords_5x[parent_idx, 1] + (slot // CHILDREN_PER_SIDE) * s20
    coords_20x = np.stack([cx, cy], axis=1).astype(np.int64)
    attrs: dict[str, Any] = {
        "patch_size": params.patch_size,
        "patch_size_level0_20x": s20,
        "patch_size_level0_5x": s5,
        "level0_magnification": level0_magnification,
        "min_tissue_fraction": params.min_tissue_fraction,
        "n_5x": len(coords_5x),
        "n_20x": len(coords_20x),
    }
    return PatchGrid(coords_5x, coords_20x, parent_idx.astype(np.int64), attrs), frac


def describe_empty(polygons: list[Polygon], grid: PatchGrid, params: PatchParams) -> str:
    if not polygons:
        return "no tissue found by segmentation"
    if len(grid.coords_20x) == 0:
        return f"no 20x patch has a tissue fraction >= {params.min_tissue_fraction}"
    return ""


def patch_params_attrs(params: PatchParams) -> dict[str, Any]:
    return {f"patching.{k}": v for k, v in asdict(params).items()}


def patch_slide(
    slide_path: PathLike,
    slide_id: str,
    geojson_path: PathLike,
    patches_h5: PathLike,
    qc_png: PathLike,
    params: PatchParams,
    overrides: dict[str, MppOverride] | None = None,
    tissue_attrs: dict | None = None,
    reader: str = DEFAULT_READER,
) -> dict:
    """Build the aligned 5x/20x grid from the tissue polygons and write `patches/{slide}.h5` and its QC picture."""
    polygons = polygons_from_geojson(json.loads(Path(geojson_path).read_text()))
    with open_slide(slide_path, slide_id, overrides, reader=reader) as slide:
        grid, _ = build_grid(polygons, slide.dimensions, slide.level0_magnification, params, slide_id)
        overview, ds = slide.read_overview(QC_MPP)
        grid.attrs.update(
            {
                "slide_id": slide_id,
                "mpp": slide.mpp,
                "mpp_source": slide.mpp_source,
                "reader": slide.reader,
                "level0_width": slide.dimensions[0],
                "level0_height": slide.dimensions[1],
                "effective_mpp_20x": slide.mpp * grid.attrs["patch_size_level0_20x"] / params.patch_size,
                "empty_reason": describe_empty(polygons, grid, params),
                "patching": asdict(params),
                "tissue": tissue_attrs or {},
            }
        )
    if grid.attrs["empty_reason"]:
        log.warning("slide '%s': %s; writing an empty patch file", slide_id, grid.attrs["empty_reason"])
    write_patches(patches_h5, grid)
    title = f"{slide_id}: {len(grid.coords_5x)} x 5x, {len(grid.coords_20x)} x 20x"
    qc.write_png(
        qc_png,
        qc.draw_grids(
            overview, grid.coords_5x, grid.coords_20x, grid.attrs["patch_size_level0_5x"],
            grid.attrs["patch_size_level0_20x"], ds, title,
        ),
    )
    log.info("%s", title)
    return grid.attrs
