"""`{vlm}_hlss` for every registered VLM: the VLM plus the adapter the pretrain stage trains on it.

`register_variants` runs once every VLM is registered (pipeline/features/backbones/__init__.py). Its weights are the pretrain stage's checkpoint
(results/pretrain/{vlm}_hlss/hlss.pt), or "random" for the untrained variant (identical to its random VLM).
"""

from __future__ import annotations

import dataclasses

from pipeline.features.registry import (
    BackboneCfg,
    BuildContext,
    get_backbone_cfg,
    get_builder,
    register_backbone,
)

#: the suffix that names a VLM's HLSS variant
HLSS_SUFFIX = "_hlss"
#: cfg fields that describe the variant itself; every other field (and override) is the VLM's
OWN_FIELDS = ("name", "architecture", "hub_id", "hub_filename", "licence", "paper")


def hlss_name(vlm: str) -> str:
    return vlm + HLSS_SUFFIX


def vlm_of(name: str) -> str | None:
    """The VLM under `{vlm}_hlss`, or None for a backbone that is not an HLSS variant."""
    return name[: -len(HLSS_SUFFIX)] if name.endswith(HLSS_SUFFIX) else None


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
