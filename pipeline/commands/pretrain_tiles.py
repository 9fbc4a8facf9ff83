"""The HLSS tile pool: a seeded sample of 20x tiles from each pretraining slide, read once into one h5.

Tiles are read by the coordinates in patches/{slide}.h5, as extraction reads a 20x patch; the cohort sheet gives
each slide's patient (no labels are read). A slide that cannot be read is left out with its reason; the pool
records which (attrs `failed`) and pretraining goes on with the rest.
"""

from __future__ import annotations

import argparse

from pipeline.errors import PipelineError

NAME = "pretrain-tiles"
HELP = "HLSS: sample 20x tiles of the pretraining slides into one tile pool (h5)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.readers import DEFAULT_READER, READER_CHOICES

    parser.add_argument("--sheet", required=True, help="cohort/sheet.csv (slide_id -> case_id)")
    parser.add_argument("--slides", nargs="+", required=True, help="slide files, in the order of --patches")
    parser.add_argument("--patches", nargs="+", required=True, help="patches/{slide}.h5 of each slide")
    parser.add_argument("--tiles-per-slide", type=int, default=32, help="20x tiles sampled per slide")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-slide sample")
    parser.add_argument("--reader", default=DEFAULT_READER, choices=READER_CHOICES, help="slide reader")
    parser.add_argument("--out", required=True, help="output tile pool h5")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.dataset import read_sheet, slide_id_of
    from pipeline.pretrain.tiles import PoolSlide, build_tile_pool

    if len(args.slides) != len(args.patches):
        raise PipelineError(f"--slides ({len(args.slides)}) and --patches ({len(args.patches)}) differ in length")
    sheet = read_sheet(args.sheet)
    case_of = dict(zip(sheet["slide_id"], sheet["case_id"]))
    slides = []
    for slide_path, patches in zip(args.slides, args.patches):
        slide_id = slide_id_of(patches)
        if not case_of.get(slide_id):
            raise PipelineError(f"slide '{slide_id}' has no case_id in {args.sheet}: its patient is needed to pretrain")
        slides.append(PoolSlide(slide_id, case_of[slide_id], Path(slide_path), Path(patches)))
    build_tile_pool(slides, args.out, tiles_per_slide=args.tiles_per_slide, seed=args.seed, reader=args.reader)
    return 0
