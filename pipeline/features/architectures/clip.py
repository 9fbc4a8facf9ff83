"""CLIP-family backbones on open_clip's `CLIP` model: PLIP, QuiltNet and the tiny test architecture.

The text tower is run by hand in `encode_text_embeddings` (positions, causal mask, transformer, final norm,
end-of-text pooling, projection) so a prompt learner can hand in its own input embeddings; a test checks it gives
exactly `encode_text` for plain token embeddings.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.features.architectures import import_open_clip
from pipeline.features.architectures.base import Backbone, check_vocab
from pipeline.features.registry import BackboneCfg, BuildContext

log = logging.getLogger(__name__)


class OpenClipBackbone(Backbone):
    """An open_clip `CLIP` with the OpenAI BPE tokenizer (shipped inside open_clip, so it works offline)."""

    def __init__(self, cfg: BackboneCfg, model: Any):
        import_open_clip()
        from open_clip.tokenizer import SimpleTokenizer

        self._tokenizer = SimpleTokenizer(context_length=model.context_length)
        check_vocab(cfg.name, len(self._tokenizer.encoder), model.vocab_size, "open_clip SimpleTokenizer")
        super().__init__(
            cfg,
            model,
            text_width=model.token_embedding.embedding_dim,
            context_length=model.context_length,
            tokenizer_name="open_clip SimpleTokenizer (OpenAI CLIP BPE)",
        )

    def encode_image(self, x: Tensor) -> Tensor:
        out = self.model.encode_image(x)
        return F.normalize(out, dim=-1) if self.cfg.normalize_image else out

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return self._tokenizer(list(texts)).long()

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.model.encode_text(tokens.to(self.device))

    def token_embedding(self, tokens: Tensor) -> Tensor:
        return self.model.token_embedding(tokens.to(self.device))

    def encode_text_embeddings(self, embeds: Tensor, tokens: Tensor) -> Tensor:
        m = self.model
        length = embeds.shape[1]
        x = embeds + m.positional_embedding[:length].to(embeds.dtype)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        # CLIP's end-of-text token has the largest id, so argmax finds it (padding is 0)
        eot = tokens.to(x.device).argmax(dim=-1)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return x @ m.text_projection


def build_clip(
    cfg: BackboneCfg,
    ctx: BuildContext,
    vision_cfg: dict[str, Any],
    text_cfg: dict[str, Any],
    cls: type[OpenClipBackbone] = OpenClipBackbone,
) -> OpenClipBackbone:
    """A random-initialised open_clip CLIP of the given tower configs, wrapped as a backbone of class `cls`."""
    import_open_clip()
    from open_clip.model import CLIP

    if ctx.tokenizer:
        log.info("backbone '%s' uses open_clip's CLIP tokenizer; tokenizer file %s is not needed",
                 cfg.name, ctx.tokenizer)
    model = CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=cfg.quick_gelu)
    if vision_cfg.get("image_size") != cfg.input_size:
        raise ValueError(
            f"backbone '{cfg.name}': cfg input_size {cfg.input_size} != vision tower {vision_cfg.get('image_size')}"
        )
    return cls(cfg, model)


#: open_clip's ViT-B/32 towers (the architecture of OpenAI CLIP, PLIP and QuiltNet-B-32).
VIT_B_32_VISION = {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32}
CLIP_TEXT_B = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
