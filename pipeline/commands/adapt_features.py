"""`{vlm}_hlss` features of many slides from the VLM's feature files: the HLSS adapter applied, no slide decoded.

Valid when pretraining kept the tower frozen (`trainable: adapter`); the files must be the VLM's, made with the
weights the checkpoint was trained on (checked). --vlm-files[i] is adapted into --out[i].
"""

from __future__ import annotations

import argparse

NAME = "adapt-features"
HELP = "HLSS: {vlm}_hlss features from the VLM's feature files (adapter only, no slide decoded)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.features.backbones.hlss import HLSS_SUFFIX
    from pipeline.features.registry import list_backbones

    parser.add_argument("--backbone", required=True, choices=[b for b in list_backbones() if b.endswith(HLSS_SUFFIX)],
                        help="the HLSS backbone")
    parser.add_argument("--weights", required=True, help="its HLSS checkpoint (hlss.pt)")
    parser.add_argument("--tokenizer", default=None, help="the VLM's tokenizer file (CONCH)")
    parser.add_argument("--vlm-files", nargs="+", required=True, help="the VLM's feature files (5x and 20x)")
    parser.add_argument("--out", nargs="+", required=True, help="output feature files, one per --vlm-files")


def run(args: argparse.Namespace) -> int:
    from pipeline.features.registry import create_backbone
    from pipeline.pretrain.adapt import adapt_feature_files

    backbone = create_backbone(args.backbone, args.weights, tokenizer=args.tokenizer or None)
    adapt_feature_files(backbone, args.vlm_files, args.out)
    return 0
