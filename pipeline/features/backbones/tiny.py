"""`tiny`: a small CLIP-style architecture (D=512) for tests and the offline demo; it has no published weights.

Small ViT (112 px, 16 px patches, 2 layers of width 128) and a small text transformer (2 layers of width 128)
over CLIP's real 49408-token vocabulary, so tokenisation, prompt learning and every output format behave as with
the large backbones, in milliseconds per patch on a CPU.
"""

from __future__ import annotations

from pipeline.features.registry import BackboneCfg, BuildContext, register_backbone


@register_backbone(
    BackboneCfg(
        name="tiny",
        architecture="CLIP-style ViT (112 px, patch 16, 2x128) + text transformer (2x128)",
        input_size=112,
        licence="n/a (no pretrained weights; random or your own checkpoint)",
        precision="bf16",
    )
)
def tiny(cfg: BackboneCfg, ctx: BuildContext):
    from pipeline.features.architectures.clip import build_clip

    vision = {"image_size": cfg.input_size, "layers": 2, "width": 128, "head_width": 32, "patch_size": 16}
    text = {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2}
    return build_clip(cfg, ctx, vision, text)
