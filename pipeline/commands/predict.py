"""Predict unlabeled slides with trained checkpoints (the folds of one results folder form an ensemble).

Writes --out-dir/predictions.csv (slide, predicted class, class probabilities). For HiVE-MIL checkpoints also, per
slide, top_pairs/{slide}.csv: the patch-text pairs with the highest similarity after the graph at 5x and 20x for
the predicted class (coordinates, text, similarity), and with --slides, heatmaps/{slide}_{5x,20x}.png over the
slide's overview. Checkpoints from another backbone, or with differing classes or methods, are refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "predict"
HELP = "trained checkpoints + features of new slides -> predictions.csv, top patch-text pairs, heatmaps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint files (e.g. every fold's)")
    parser.add_argument("--features-dir", required=True,
                        help="features/{backbone}: holds {backbone}_5x/ and hierarchical_{backbone}_5x_20x/")
    parser.add_argument("--backbone", required=True, help="backbone that made the features and the checkpoints")
    parser.add_argument("--weights", default=None, help="backbone weights: a file, a hub id, or 'random'")
    parser.add_argument("--tokenizer", default=None, help="tokenizer file (CONCH)")
    parser.add_argument("--slide-ids", nargs="*", default=None, help="slides to predict (default: all with features)")
    parser.add_argument("--slides", nargs="*", default=[], help="slide files, for heatmaps (id = file name stem)")
    parser.add_argument("--top-n", type=int, default=10, help="patch-text pairs per scale in each table")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--out-dir", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    import torch

    from pipeline.predict import predict_slides

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    predict_slides(
        checkpoints=args.checkpoints, features_dir=args.features_dir, backbone_name=args.backbone,
        out_dir=args.out_dir, slide_ids=args.slide_ids or None,
        slide_files={Path(p).stem: p for p in args.slides}, weights=args.weights, tokenizer=args.tokenizer,
        top_n=args.top_n, device=args.device,
    )
    return 0
