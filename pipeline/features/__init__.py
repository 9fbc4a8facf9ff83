"""Patch and text features: backbone registry, loader that decodes only the encoded patches, per-slide extraction, prompts."""

from pipeline.features import backbones  # noqa: F401,E402  (registers every backbone)
from pipeline.features.registry import (  # noqa: F401
    RANDOM,
    BackboneCfg,
    create_backbone,
    get_backbone_cfg,
    list_backbones,
    register_backbone,
)
