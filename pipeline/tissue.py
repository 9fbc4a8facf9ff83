"""Tissue segmentation on a low-resolution overview: saturation threshold, blur, closing, area filters.

The mask is rebuilt from the filtered contours, so the mask PNG, the GeoJSON and the QC picture always agree.
Areas are given in um^2 so the same config works at any scan resolution.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from pipeline import qc
from pipeline.formats import PathLike, write_json_atomic
from pipeline.geometry import Polygon
from pipeline.readers import DEFAULT_READER
from pipeline.slide import MppOverride, Slide, open_slide

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueParams:
    seg_mpp: float = 8.0
    saturation_threshold: int = 8
    use_otsu: bool = True
    median_blur: int = 7
    close_px: int = 4
    min_tissue_area_um2: float = 50_000.0
    min_hole_area_um2: float = 10_000.0
    max_holes: int = 8


@dataclass
class TissueResult:
    mask: np.ndarray  # uint8 0/255 at the overview resolution
    downsample: float  # level-0 pixels per mask pixel
    polygons: list[Polygon]
    threshold: float
    stats: dict[str, Any]


def saturation_mask(rgb: np.ndarray, params: TissueParams) -> tuple[np.ndarray, float]:
    """Binary mask of stained pixels and the threshold used.

    With Otsu, the fixed threshold is a floor: on a blank slide Otsu would otherwise split sensor noise.
    """
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    k = params.median_blur | 1
    if k > 1:
        sat = cv2.medianBlur(sat, k)
    threshold = float(params.saturation_threshold)
    if params.use_otsu and sat.max() > sat.min():
        otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        threshold = max(threshold, float(otsu))
    mask = (sat > threshold).astype(np.uint8) * 255
    if params.close_px > 0:
        kernel = np.ones((params.close_px, params.close_px), np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return mask, threshold


def filter_contours(
    mask: np.ndarray, min_area_px: float, min_hole_px: float, max_holes: int
) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Outer contours above `min_area_px` (net of holes), each with its largest holes above `min_hole_px`."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    pieces = []
    for i, (_, _, first_child, parent) in enumerate(hierarchy):
        if parent != -1:
            continue
        holes = []
        child = first_child
        while child != -1:
            holes.append(contours[child])
            child = hierarchy[child][0]
        hole_areas = [cv2.contourArea(h) for h in holes]
        area = cv2.contourArea(contours[i]) - sum(hole_areas)
        if area < max(min_area_px, 1.0):
            continue
        kept = [h for h, a in sorted(zip(holes, hole_areas), key=lambda t: -t[1]) if a >= min_hole_px]
        pieces.append((contours[i], kept[:max_holes]))
    return pieces


def rasterise(pieces: list[tuple[np.ndarray, list[np.ndarray]]], shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for outer, holes in pieces:
        cv2.drawContours(mask, [outer], -1, 255, thickness=cv2.FILLED)
        if holes:
            cv2.drawContours(mask, holes, -1, 0, thickness=cv2.FILLED)
    return mask


def _to_level0(contour: np.ndarray, downsample: float) -> np.ndarray:
    """Contour pixel indices to level-0 coordinates of pixel corners (closed ring)."""
    pts = contour.reshape(-1, 2).astype(np.float64) * downsample
    return np.vstack([pts, pts[:1]])


def segment_tissue(slide: Slide, params: TissueParams) -> TissueResult:
    overview, downsample = slide.read_overview(params.seg_mpp)
    mask, threshold = saturation_mask(overview, params)
    px_area_um2 = (slide.mpp * downsample) ** 2
    pieces = filter_contours(
        mask, params.min_tissue_area_um2 / px_area_um2, params.min_hole_area_um2 / px_area_um2, params.max_holes
    )
    clean = rasterise(pieces, mask.shape)
    polygons = [Polygon(_to_level0(o, downsample), [_to_level0(h, downsample) for h in hs]) for o, hs in pieces]
    tissue_px = int((clean > 0).sum())
    stats = {
        "slide_id": slide.slide_id,
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "reader": slide.reader,
        "level0_magnification": slide.level0_magnification,
        "level0_size": list(slide.dimensions),
        "mask_downsample": downsample,
        "mask_size": [int(mask.shape[1]), int(mask.shape[0])],
        "saturation_threshold_used": threshold,
        "n_tissue_pieces": len(polygons),
        "n_holes": sum(len(p.holes) for p in polygons),
        "tissue_area_mm2": tissue_px * px_area_um2 / 1e6,
        "tissue_fraction": tissue_px / clean.size,
        "params": asdict(params),
        "empty_reason": "" if polygons else "no tissue above the saturation threshold and minimum area",
    }
    return TissueResult(clean, downsample, polygons, threshold, stats)


def to_geojson(polygons: list[Polygon], slide_id: str) -> dict[str, Any]:
    """A FeatureCollection of Polygons (outer ring first, then holes), level-0 pixels, as QuPath reads them."""
    features = []
    for i, poly in enumerate(polygons):
        rings = [poly.outer.round(2).tolist()] + [h.round(2).tolist() for h in poly.holes]
        features.append(
            {
                "type": "Feature",
                "id": f"{slide_id}-tissue-{i}",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {"objectType": "annotation", "classification": {"name": "Tissue"}},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def polygons_from_geojson(geojson: dict[str, Any]) -> list[Polygon]:
    polygons = []
    for feature in geojson.get("features", []):
        geom = feature["geometry"]
        rings = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        for poly in rings:
            arrays = [np.asarray(r, dtype=np.float64) for r in poly]
            polygons.append(Polygon(arrays[0], arrays[1:]))
    return polygons


def segment_slide(
    slide_path: PathLike,
    slide_id: str,
    mask_png: PathLike,
    geojson_path: PathLike,
    stats_json: PathLike,
    qc_png: PathLike,
    params: TissueParams,
    overrides: dict[str, MppOverride] | None = None,
    reader: str = DEFAULT_READER,
) -> dict:
    """Segment one slide and write its mask, contours, statistics and QC picture."""
    with open_slide(slide_path, slide_id, overrides, reader=reader) as slide:
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
