"""Predict slides with the fold checkpoints of one trained method (an ensemble; no backbone is built).

Writes exactly what it is given: --predictions (slide, predicted class and class probabilities, or a survival task's
risk), --unscored (slides that could not be scored, with the reason) and, for every method, per slide what drove the
prediction (pipeline.explain.slide_outputs): {slide}.csv in --top-patches; with --patches, {slide}.geojson in
--overlays for QuPath (File > Import objects); with --slides and --patches (same order), {slide}_{5x,20x}.png in
--heatmaps over the slide's overview, and small copies of the first slides' in --gallery. Every folder is created,
even when it stays empty. Checkpoints from another backbone, or with differing classes or methods, are refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import PipelineError

NAME = "predict"
HELP = "trained checkpoints + features of slides -> predictions, top patches, QuPath overlays, heatmaps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint files (e.g. every fold's)")
    parser.add_argument("--features-5x", nargs="+", required=True, help="5x feature files of the slides to predict")
    parser.add_argument("--hierarchical", nargs="+", required=True, help="their hierarchical 5x-20x feature files")
    parser.add_argument("--backbone", required=True, help="backbone that made the features and the checkpoints")
    parser.add_argument("--slides", nargs="*", default=[], help="slide files, for heatmaps (id = file name stem)")
    parser.add_argument("--patches", nargs="*", default=[], help="patch files of --slides, same order (recorded mpp)")
    parser.add_argument("--top-n", type=int, default=10, help="patches per map and scale in each top-patch table")
    parser.add_argument("--heatmap-px", type=int, default=1500, help="long side of each heatmap PNG (px)")
    parser.add_argument("--heatmap-grid", action="store_true", help="also a PNG per scale with every map side by side")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--predictions", required=True, help="predictions table to write")
    parser.add_argument("--unscored", required=True, help="table of the slides that could not be scored, to write")
    parser.add_argument("--top-patches", required=True, help="folder for each slide's top-patch table")
    parser.add_argument("--overlays", required=True, help="folder for each slide's QuPath GeoJSON")
    parser.add_argument("--heatmaps", required=True, help="folder for each slide's heatmaps")
    parser.add_argument("--gallery", required=True, help="folder for the first slides' small heatmaps (the report's)")


def run(args: argparse.Namespace) -> int:
    import torch

    from pipeline.explain.slide_outputs import ExplanationFolders
    from pipeline.training.data import pair_feature_files
    from pipeline.training.predict import PredictOutputs, SlideFiles, predict_slides

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if len(args.slides) != len(args.patches):
        raise PipelineError(f"predict: {len(args.slides)} --slides but {len(args.patches)} --patches (same order)")
    slide_files = {Path(p).stem: SlideFiles(Path(s), Path(p)) for s, p in zip(args.slides, args.patches)}
    folders = ExplanationFolders(Path(args.top_patches), Path(args.overlays), Path(args.heatmaps), Path(args.gallery))
    outputs = PredictOutputs(Path(args.predictions), Path(args.unscored), folders)
    predict_slides(
        checkpoints=args.checkpoints, features=pair_feature_files(args.features_5x, args.hierarchical),
        backbone_name=args.backbone, outputs=outputs, slide_files=slide_files, top_n=args.top_n,
        device=args.device, heatmap_px=args.heatmap_px, heatmap_grid=args.heatmap_grid,
    )
    return 0
