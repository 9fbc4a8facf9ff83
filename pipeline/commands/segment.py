"""Tissue segmentation of one slide.

Reads the slide at about --seg-mpp um/px, thresholds HSV saturation (Otsu, with the fixed threshold as a floor),
median-blurs, closes, drops small tissue pieces and fills small holes. Writes the mask PNG, the contours as a
QuPath-readable GeoJSON (level-0 pixels), a JSON of statistics and a QC picture with the contours drawn.
"""

from __future__ import annotations

import argparse

from pipeline.commands._common import (
    StatusTarget,
    add_slide_arguments,
    overrides,
    recover_status_target,
    run_recorded,
    slide_id,
)
from pipeline.tissue import TissueParams, segment_slide

NAME = "segment"
HELP = "tissue mask, GeoJSON contours and QC picture for one slide"


def status_target(argv: list[str]) -> StatusTarget | None:
    """Where a command line that does not parse records its failure."""
    return recover_status_target(argv, "segment")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_slide_arguments(parser)
    parser.add_argument("--mask", required=True, help="output mask PNG")
    parser.add_argument("--geojson", required=True, help="output contours (GeoJSON FeatureCollection)")
    parser.add_argument("--stats", required=True, help="output statistics JSON")
    parser.add_argument("--qc", required=True, help="output QC PNG")
    d = TissueParams()
    parser.add_argument("--seg-mpp", type=float, default=d.seg_mpp, help="segmentation resolution, um/px")
    parser.add_argument("--saturation-threshold", type=int, default=d.saturation_threshold)
    parser.add_argument("--no-otsu", action="store_true", help="use the fixed saturation threshold only")
    parser.add_argument("--median-blur", type=int, default=d.median_blur)
    parser.add_argument("--close-px", type=int, default=d.close_px)
    parser.add_argument("--min-tissue-area-um2", type=float, default=d.min_tissue_area_um2)
    parser.add_argument("--min-hole-area-um2", type=float, default=d.min_hole_area_um2)
    parser.add_argument("--max-holes", type=int, default=d.max_holes)


def run(args: argparse.Namespace) -> int:
    params = TissueParams(
        seg_mpp=args.seg_mpp,
        saturation_threshold=args.saturation_threshold,
        use_otsu=not args.no_otsu,
        median_blur=args.median_blur,
        close_px=args.close_px,
        min_tissue_area_um2=args.min_tissue_area_um2,
        min_hole_area_um2=args.min_hole_area_um2,
        max_holes=args.max_holes,
    )
    run_recorded(
        "segment",
        args,
        lambda: segment_slide(
            args.slide, slide_id(args), args.mask, args.geojson, args.stats, args.qc, params, overrides(args),
            args.reader,
        ),
    )
    return 0
