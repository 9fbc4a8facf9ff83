"""QuiltNet-B-32: an open_clip CLIP ViT-B/32 trained on Quilt-1M histopathology image-text pairs.

Published as an open_clip checkpoint (`hf-hub:wisdomik/QuiltNet-B-32`), so its keys load into open_clip's CLIP
as they are. The activation follows open_clip's `ViT-B-32` config (GELU); set `quick_gelu=True` as a cfg
override if your checkpoint's open_clip_config.json asks for QuickGELU (the keys are the same either way).
"""

from __future__ import annotations

from pipeline.features.registry import BackboneCfg, BuildContext, register_backbone


@register_backbone(
    BackboneCfg(
        name="quiltnet",
        architecture="CLIP ViT-B/32 (open_clip), Quilt-1M",
        input_size=224,
        hub_id="wisdomik/QuiltNet-B-32",
        hub_filename="open_clip_pytorch_model.bin",
        licence="MIT (wisdomik/QuiltNet-B-32 model card); research use",
        paper="arXiv:2306.11207",
    )
)
def quiltnet(cfg: BackboneCfg, ctx: BuildContext):
    from pipeline.features.architectures.clip import CLIP_TEXT_B, VIT_B_32_VISION, build_clip

    return build_clip(cfg, ctx, dict(VIT_B_32_VISION, image_size=cfg.input_size), dict(CLIP_TEXT_B))
