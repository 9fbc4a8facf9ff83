"""One slide's features from its chunk folder into the features layout (after extract-chunk); a slide that
failed in its chunk fails here, with its recorded reason, and alone."""

from __future__ import annotations

import argparse

from pipeline.commands._common import (
    StatusTarget,
    add_status_arguments,
    check_slide_id,
    recover_status_target,
    run_recorded,
)

NAME = "take-features"
HELP = "place one slide's features from its extract-chunk folder (links; the slide's chunk failure, if any)"


def status_target(argv: list[str]) -> StatusTarget | None:
    return recover_status_target(argv, "extract", path_flag=None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chunk-dir", required=True, help="the extract-chunk folder holding the slide")
    parser.add_argument("--slide-id", required=True, type=check_slide_id)
    parser.add_argument("--backbone", required=True, help="whose features to take")
    parser.add_argument("--out-5x", required=True)
    parser.add_argument("--out-20x", required=True)
    add_status_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.features.chunks import take_features

    run_recorded("extract", args, lambda: take_features(args.chunk_dir, args.backbone, args.slide_id, args.out_5x,
                                                     args.out_20x),
                 slide=args.slide_id)
    return 0
