"""Aligned 5x/20x patch coordinates for one slide.

A level-0 grid where each 5x patch (--patch-size px at 5x) covers exactly 4x4 20x patches (--patch-size px at
20x). A 20x patch is kept if at least --min-tissue-fraction of it is tissue (from the segmentation GeoJSON); a 5x
patch is kept if it has a kept child. Writes patches/{slide}.h5 (coords_5x, coords_20x, parent_of_20x, attrs with
mpp and its source) and a QC picture of both grids. A slide without tissue gives a valid empty file with the reason.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline import status
from pipeline.commands._common import (
    StatusTarget,
    add_slide_arguments,
    overrides,
    recover_status_target,
    run_recorded,
    slide_id,
)
from pipeline.patching import PatchParams, patch_slide

NAME = "patch"
HELP = "aligned 5x/20x patch coordinates and QC picture for one slide"


def status_target(argv: list[str]) -> StatusTarget | None:
    """Where a command line that does not parse records its failure."""
    return recover_status_target(argv, "patch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_slide_arguments(parser)
    parser.add_argument("--geojson", required=True, help="tissue contours from the segment stage")
    parser.add_argument("--tissue-stats", default="", help="segment stage statistics JSON, copied into attrs")
    parser.add_argument("--out", required=True, help="output patches h5")
    parser.add_argument("--qc", required=True, help="output QC PNG")
    d = PatchParams()
    parser.add_argument("--patch-size", type=int, default=d.patch_size, help="px at 5x and at 20x")
    parser.add_argument("--min-tissue-fraction", type=float, default=d.min_tissue_fraction)


def run(args: argparse.Namespace) -> int:
    def work() -> dict:
        params = PatchParams(args.patch_size, args.min_tissue_fraction)
        tissue = json.loads(Path(args.tissue_stats).read_text()).get("params", {}) if args.tissue_stats else {}
        return patch_slide(args.slide, slide_id(args), args.geojson, args.out, args.qc, params, overrides(args), tissue,
                           args.reader)

    attrs = run_recorded("patch", args, work)
    if attrs.get("empty_reason"):  # ok (a valid empty file), but status.csv says why the slide will be left out
        status.record(args.status_dir, "patch", slide_id(args), True, f"{status.NO_TISSUE}: {attrs['empty_reason']}")
    return 0
