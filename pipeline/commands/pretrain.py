"""HLSS pretraining of a residual adapter (and heads) on a VLM's image tower, over the cohort's tile pool.

The batches are patients x slides x patches x augmented views; the loss is a supervised contrastive term per level
(positives: views of the same patient, slide, patch) plus the level-wise alignment to the VLM's text embeddings of
the attribute descriptions (--attributes). Writes the checkpoint that is the weights of backbone `{vlm}_hlss`, the
loss per step (csv) and its curve (png). A state file (--state) is saved every --checkpoint-every steps; rerun the
same command after a kill and it resumes from there. Every flag below the first group defaults to
pipeline.pretrain.config.
"""

from __future__ import annotations

import argparse

NAME = "pretrain"
HELP = "HLSS: pretrain an adapter on a VLM over the tile pool -> {vlm}_hlss checkpoint, losses, curve"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.commands.extract import add_backbone_arguments

    parser.add_argument("--tiles", required=True, help="tile pool h5 (pretrain-tiles)")
    parser.add_argument("--attributes", required=True, help="attribute descriptions JSON (pipeline/data/hlss/)")
    add_backbone_arguments(parser)  # the VLM: --backbone, --weights, --tokenizer, --device, --seed (its random init)
    parser.add_argument("--out", required=True, help="output checkpoint (hlss.pt), the weights of {vlm}_hlss")
    parser.add_argument("--state", required=True, help="resumable state file (kept between runs)")
    parser.add_argument("--losses", required=True, help="output loss per step (csv)")
    parser.add_argument("--curve", required=True, help="output loss curve (png)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    from pipeline.pretrain.config import FLAG_NAMES, PretrainConfig
    from pipeline.settings import add_arguments as add_settings_arguments

    add_settings_arguments(parser, PretrainConfig, "pretraining (defaults: pipeline.pretrain.config)", FLAG_NAMES)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.commands.extract import set_threads
    from pipeline.errors import PipelineError
    from pipeline.features.backbones.hlss import vlm_of
    from pipeline.features.registry import create_backbone
    from pipeline.pretrain.config import PretrainConfig
    from pipeline.pretrain.train import PretrainOutputs, pretrain
    from pipeline.settings import from_args

    if vlm_of(args.backbone):
        raise PipelineError(f"--backbone {args.backbone}: pretrain the VLM itself ({vlm_of(args.backbone)}); "
                            f"the result is the weights of {args.backbone}")
    set_threads(args.threads)
    config = from_args(PretrainConfig, args)
    vlm = create_backbone(args.backbone, args.weights, tokenizer=args.tokenizer, seed=args.seed)
    outputs = PretrainOutputs(Path(args.out), Path(args.state), Path(args.losses), Path(args.curve))
    pretrain(args.tiles, args.attributes, vlm, outputs, config, device=args.device, vlm_weights_arg=args.weights)
    return 0
