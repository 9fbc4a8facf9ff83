"""CONCH (MahmoodLab): a CoCa ViT-B/16 at 448 px trained on 1.17M pathology image-caption pairs.

Image embeddings are the contrastive projection, L2-normalised, as CONCH's `encode_image` returns them. The
published checkpoint (`MahmoodLab/CONCH`, gated: accept the terms on the hub, then download it) loads by key name;
the tokenizer is CONCH's byte-level BPE file (32007 tokens), given as `tokenizer` or found beside the weights.
"""

from __future__ import annotations

from pipeline.features.registry import BackboneCfg, BuildContext, register_backbone


@register_backbone(
    BackboneCfg(
        name="conch",
        architecture="CoCa ViT-B/16 (448 px) contrastive towers, CONCH",
        input_size=448,
        hub_id="MahmoodLab/CONCH",
        hub_filename="pytorch_model.bin",
        licence="CC-BY-NC-ND-4.0 (gated; MahmoodLab/CONCH model card)",
        normalize_image=True,
        paper="doi:10.1038/s41591-024-02856-4",
    )
)
def conch(cfg: BackboneCfg, ctx: BuildContext):
    from pipeline.features.architectures.coca import build_coca

    vision = {"patch_size": 16, "width": 768, "layers": 12, "heads": 12, "pooler_heads": 8}
    text = {"context_length": 128, "vocab_size": 32007, "width": 768, "heads": 12, "layers": 12}
    return build_coca(cfg, vision, text, ctx.tokenizer, ctx.random_weights)
