"""Text embeddings of a prompt file with a backbone's text tower.

Reads a prompt JSON in HiVE-MIL's format ({class: {term: explanation}}, 16 entries per class: 4 coarse 5x
descriptions, then 12 fine 20x ones), encodes each "term: explanation" with the backbone's tokenizer and text
encoder, and writes embeddings [C, 16, D] float32 (unnormalised, file order) with the class names and texts.
Used for zero-shot checks and by the model.
"""

from __future__ import annotations

import argparse

from pipeline.commands.extract import add_backbone_arguments

NAME = "text-embed"
HELP = "encode a prompt file with a backbone's text tower"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, help="prompt JSON in HiVE-MIL's format")
    add_backbone_arguments(parser)
    parser.add_argument("--labels", nargs="*", default=None, help="class names in label order (checked if given)")
    parser.add_argument("--out", required=True, help="output h5")


def run(args: argparse.Namespace) -> int:
    from pipeline.features.text import embed_prompts

    embed_prompts(args.prompts, args.out, args.backbone, weights=args.weights, tokenizer=args.tokenizer,
                  labels=args.labels or None, device=args.device, seed=args.seed)
    return 0
