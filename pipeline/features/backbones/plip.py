"""PLIP: OpenAI's CLIP ViT-B/32 fine-tuned on OpenPath (Twitter pathology image-text pairs).

Published in Hugging Face `CLIPModel` format (`vinid/plip`). We run it as open_clip's CLIP with QuickGELU (the
activation of OpenAI's CLIP, which PLIP keeps), mapping the Hugging Face keys onto open_clip's when loading: the
q/k/v projections are concatenated into one in-projection and the two projection matrices transposed. A
checkpoint already in open_clip layout loads as it is. The tokenizer is CLIP's BPE, which open_clip ships.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pipeline.features.registry import BackboneCfg, BuildContext, register_backbone

if TYPE_CHECKING:
    from torch import Tensor

#: Hugging Face CLIP encoder-layer names -> open_clip residual-block names.
_LAYER_NAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_TOWER_NAMES = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_LAYER = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def hf_clip_to_open_clip(state: dict[str, "Tensor"]) -> dict[str, "Tensor"]:
    """Rename a Hugging Face `CLIPModel` state dict to open_clip's `CLIP` layout; unknown keys pass through."""
    import torch

    if not any(k.startswith(("text_model.", "vision_model.")) for k in state):
        return state  # already open_clip layout
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue  # a buffer of 0..L-1 that older transformers versions saved
        if key in _TOWER_NAMES:
            out[_TOWER_NAMES[key]] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key == "vision_model.embeddings.position_embedding.weight":
            out["visual.positional_embedding"] = value
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.t().contiguous()
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif m := _LAYER.match(key):
            tower, layer, name, kind = m.groups()
            prefix = f"{'visual.' if tower == 'vision' else ''}transformer.resblocks.{layer}."
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((prefix, kind), {})[name[-6]] = value
            elif name in _LAYER_NAMES:
                out[f"{prefix}{_LAYER_NAMES[name]}.{kind}"] = value
            else:
                out[key] = value  # left for the strict check to report
        else:
            out[key] = value
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            out.update({f"{prefix}self_attn.{p}_proj.{kind}": v for p, v in parts.items()})
            continue
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"{prefix}attn.{name}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


@register_backbone(
    BackboneCfg(
        name="plip",
        architecture="CLIP ViT-B/32 (QuickGELU), OpenPath",
        input_size=224,
        hub_id="vinid/plip",
        hub_filename="pytorch_model.bin",
        licence="research use (see the vinid/plip model card and the OpenPath terms)",
        quick_gelu=True,
        paper="doi:10.1038/s41591-023-02504-3",
    )
)
def plip(cfg: BackboneCfg, ctx: BuildContext):
    from pipeline.features.architectures.clip import CLIP_TEXT_B, VIT_B_32_VISION, OpenClipBackbone, build_clip

    class PlipBackbone(OpenClipBackbone):
        def convert_state_dict(self, state):
            return hf_clip_to_open_clip(state)

    return build_clip(cfg, ctx, dict(VIT_B_32_VISION, image_size=cfg.input_size), dict(CLIP_TEXT_B), PlipBackbone)
