"""Per-slide segmentation and patching stages: slide in, files out (what the `segment` and `patch` commands run)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from pipeline import qc
from pipeline.formats import PathLike, write_json_atomic, write_patches
from pipeline.patching import PatchParams, build_grid, describe_empty
from pipeline.slide import MppOverride, open_slide
from pipeline.tissue import TissueParams, polygons_from_geojson, segment_tissue, to_geojson

log = logging.getLogger(__name__)

#: resolution of QC pictures (um/px); coarse enough to stay small, fine enough to see 20x patches.
QC_MPP = 4.0


def segment_slide(
    slide_path: PathLike,
    slide_id: str,
    mask_png: PathLike,
    geojson_path: PathLike,
    stats_json: PathLike,
    qc_png: PathLike,
    params: TissueParams,
    overrides: dict[str, MppOverride] | None = None,
) -> dict:
    """Segment one slide and write its mask, contours, statistics and QC picture."""
    with open_slide(slide_path, slide_id, overrides) as slide:
        log.info("%r", slide)
        result = segment_tissue(slide, params)
        overview, ds = slide.read_overview(params.seg_mpp)
    if result.stats["empty_reason"]:
        log.warning("slide '%s': %s", slide_id, result.stats["empty_reason"])
    qc.write_png(mask_png, result.mask)
    write_json_atomic(geojson_path, to_geojson(result.polygons, slide_id))
    qc.write_png(qc_png, qc.draw_tissue(overview, result.polygons, ds))
    write_json_atomic(stats_json, result.stats)
    log.info("slide '%s': %d tissue pieces, %.2f mm^2", slide_id, len(result.polygons), result.stats["tissue_area_mm2"])
    return result.stats


def patch_slide(
    slide_path: PathLike,
    slide_id: str,
    geojson_path: PathLike,
    patches_h5: PathLike,
    qc_png: PathLike,
    params: PatchParams,
    overrides: dict[str, MppOverride] | None = None,
    tissue_attrs: dict | None = None,
) -> dict:
    """Build the aligned 5x/20x grid from the tissue polygons and write `patches/{slide}.h5` and its QC picture."""
    polygons = polygons_from_geojson(json.loads(Path(geojson_path).read_text()))
    with open_slide(slide_path, slide_id, overrides) as slide:
        grid, _ = build_grid(polygons, slide.dimensions, slide.level0_magnification, params, slide_id)
        overview, ds = slide.read_overview(QC_MPP)
        grid.attrs.update(
            {
                "slide_id": slide_id,
                "mpp": slide.mpp,
                "mpp_source": slide.mpp_source,
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
