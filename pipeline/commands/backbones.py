"""List the registered backbones with their architecture, input size, embedding size, weights source and licence.

Names listed here are the valid values of --backbone and of the config key features.backbone.
"""

from __future__ import annotations

import argparse

NAME = "backbones"
HELP = "list the registered feature backbones"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--names", action="store_true", help="print only the names, one per line")


def run(args: argparse.Namespace) -> int:
    from pipeline.features.registry import get_backbone_cfg, list_backbones

    for name in list_backbones():
        cfg = get_backbone_cfg(name)
        if args.names:
            print(name)
            continue
        hub = f"hf-hub:{cfg.hub_id}/{cfg.hub_filename}" if cfg.hub_id else "none (random or your own file)"
        print(f"{name}\n  architecture: {cfg.architecture}\n  input: {cfg.input_size} px, {cfg.interpolation}, "
              f"mean {cfg.mean}, std {cfg.std}\n  embedding: D={cfg.embed_dim}"
              f"{', L2-normalised' if cfg.normalize_image else ''}\n  published weights: {hub}\n"
              f"  licence: {cfg.licence}")
    return 0
