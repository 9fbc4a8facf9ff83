"""`{vlm}_hlss` for every registered VLM: the VLM plus the adapter the pretrain stage trains on it.

`register_variants` runs once every VLM is registered (pipeline/features/backbones/__init__.py). Its weights are the pretrain stage's checkpoint
(results/pretrain/{vlm}_hlss/hlss.pt), or "random" for the untrained variant (identical to its random VLM).
"""

from __future__ import annotations

import dataclasses

from pipeline.features.hlss_names import (  # noqa: F401  (HLSS_SUFFIX, vlm_of: re-exported, read by the workflow)
    HLSS_SUFFIX,
    OWN_FIELDS,
    hlss_name,
    vlm_of,
)
from pipeline.features.registry import (
    BackboneCfg,
    BuildContext,
    get_backbone_cfg,
    get_builder,
    register_backbone,
)


def _register(vlm: str) -> None:
    base = get_backbone_cfg(vlm)
    cfg = dataclasses.replace(
        base,
        name=hlss_name(vlm),
        architecture=f"{base.architecture} + HLSS residual adapter",
        hub_id=None,
        hub_filename=None,
        paper="HLSS: Watawana et al., MICCAI 2024 (arXiv 2403.14616), on " + (base.paper or vlm),
    )

    @register_backbone(cfg)
    def build(cfg: BackboneCfg, ctx: BuildContext):
        from pipeline.features.architectures.hlss import HlssBackbone

        fields = {f: getattr(base, f) for f in OWN_FIELDS}
        vlm_backbone = get_builder(vlm)(dataclasses.replace(cfg, **fields), ctx)
        return HlssBackbone(cfg, vlm_backbone, ctx)


def register_variants(vlms: list[str]) -> None:
    """Register `{vlm}_hlss` for each VLM (called once every VLM is registered)."""
    for vlm in vlms:
        if not vlm_of(vlm):
            _register(vlm)
