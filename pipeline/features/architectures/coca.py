"""CONCH's contrastive half, built from timm and open_clip parts with the key names of its published checkpoint.

CONCH (MahmoodLab) is a CoCa model: a timm ViT-B/16 trunk, an attentional pooler with one query and a projection
for the contrastive embedding, and a text transformer that appends a CLS embedding and pools there. Its caption
pooler and multimodal decoder only serve captioning, so they are not built; their checkpoint keys are skipped by
name. The text tower keeps CONCH's padding mask, which shifts key validity by one position (open_clip reproduces it
as `correct_cls_mask=False`), because the weights were trained with it.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.features.architectures import import_open_clip
from pipeline.features.architectures.base import Backbone, check_vocab
from pipeline.features.registry import BackboneCfg

log = logging.getLogger(__name__)


class CocaVisual(nn.Module):
    """timm ViT trunk -> attentional pooling (1 query) -> LayerNorm -> projection: the contrastive image embedding.

    Shapes: images (B, 3, S, S) -> (B, embed_dim).
    """

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, embed_dim: int,
                 pooler_heads: int = 8):
        super().__init__()
        import_open_clip()
        from open_clip.transformer import AttentionalPooler
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(
            img_size=image_size, patch_size=patch_size, embed_dim=width, depth=layers, num_heads=heads,
            mlp_ratio=4.0, num_classes=0, dynamic_img_size=True,
        )
        self.attn_pool_contrast = AttentionalPooler(
            d_model=embed_dim, context_dim=width, n_head=pooler_heads, n_queries=1
        )
        self.ln_contrast = nn.LayerNorm(embed_dim)
        self.proj_contrast = nn.Parameter(width**-0.5 * torch.randn(embed_dim, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.trunk.forward_features(x)
        pooled = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        return pooled @ self.proj_contrast


class CocaContrastive(nn.Module):
    """`visual` + `text` + `logit_scale`, named as in CONCH's checkpoint."""

    def __init__(self, visual: CocaVisual, text: nn.Module):
        super().__init__()
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))


class CocaBackbone(Backbone):
    """CONCH-style backbone. Tokens are [T, L] with L = text context + 1: the last slot is a placeholder that the
    text tower drops to make room for its CLS embedding (CONCH's own convention)."""

    ignored_checkpoint_prefixes = ("text_decoder.", "visual.attn_pool_caption.", "visual.ln_caption.")

    def __init__(self, cfg: BackboneCfg, model: CocaContrastive, tokenizer: Any, tokenizer_name: str, pad_id: int):
        self._tokenizer = tokenizer
        self.pad_id = pad_id
        super().__init__(
            cfg, model, text_width=model.text.width, context_length=model.text.num_pos, tokenizer_name=tokenizer_name
        )

    def encode_image(self, x: Tensor) -> Tensor:
        out = self.model.visual(x)
        return F.normalize(out, dim=-1) if self.cfg.normalize_image else out

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        from open_clip.tokenizer import SimpleTokenizer

        body = self.context_length - 1
        if not isinstance(self._tokenizer, SimpleTokenizer):  # a Hugging Face tokenizer (CONCH's own)
            ids = self._tokenizer(
                list(texts), max_length=body, add_special_tokens=True, truncation=True, padding="max_length",
                return_tensors="pt", return_token_type_ids=False,
            )["input_ids"]
        else:  # open_clip's SimpleTokenizer (random-weight fallback)
            ids = self._tokenizer(list(texts), context_length=body)
        return F.pad(ids.long(), (0, 1), value=self.pad_id)

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.model.text(tokens[:, :-1].to(self.device))

    def token_embedding(self, tokens: Tensor) -> Tensor:
        return self.model.text.token_embedding(tokens.to(self.device))

    def encode_text_embeddings(self, embeds: Tensor, tokens: Tensor) -> Tensor:
        text = self.model.text
        x = embeds[:, :-1]
        ids = tokens[:, :-1].to(x.device)
        batch, length = ids.shape
        x = torch.cat([x, text.cls_emb.to(x.dtype).view(1, 1, -1).expand(batch, 1, -1)], dim=1)
        seq = length + 1
        # causal mask + CONCH's padding mask: key 0 always visible, key j visible iff token j-1 is not padding
        valid = torch.cat([ids.new_ones(batch, 1, dtype=torch.bool), ids != self.pad_id], dim=1)
        pad = torch.zeros(batch, seq, seq, dtype=x.dtype, device=x.device)
        pad.masked_fill_(~valid[:, None, :], float("-inf"))
        mask = (text.attn_mask[:seq, :seq].to(x.dtype)[None] + pad).repeat_interleave(text.heads, 0)
        x = x + text.positional_embedding[:seq].to(x.dtype)
        x = text.transformer(x, attn_mask=mask)
        pooled = text.ln_final(x[:, -1])
        return pooled @ text.text_projection


def build_coca(
    cfg: BackboneCfg,
    vision: dict[str, int],
    text: dict[str, int],
    tokenizer_file: str | None,
    random_weights: bool,
) -> CocaBackbone:
    """Build the towers; the tokenizer decides nothing but is checked against the text tower's vocabulary.

    Without a tokenizer file CONCH's vocabulary is unavailable offline; only for random weights do we fall back to
    CLIP's BPE (and size the embedding to it), saying so in the log and the output attrs.
    """
    import_open_clip()
    from open_clip.transformer import TextTransformer

    vocab = text["vocab_size"]
    if tokenizer_file:
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=tokenizer_file, bos_token="<start_of_text>", eos_token="<end_of_text>", pad_token="<pad>"
        )
        check_vocab(cfg.name, len(tokenizer), vocab, tokenizer_file)
        pad_id, name = int(tokenizer.pad_token_id), f"{tokenizer_file}"
    elif random_weights:
        from open_clip.tokenizer import SimpleTokenizer

        tokenizer = SimpleTokenizer()
        vocab = len(tokenizer.encoder)
        pad_id, name = 0, "open_clip SimpleTokenizer (fallback: no CONCH tokenizer file, random weights)"
        log.warning("backbone '%s': no tokenizer file given; random weights use CLIP's BPE (%d tokens) instead "
                    "of the model's own vocabulary", cfg.name, vocab)
    else:
        raise ValueError(
            f"backbone '{cfg.name}' needs its tokenizer file (CONCH: conch_byte_level_bpe_uncased.json from the "
            "CONCH repository): put it beside the weights file as tokenizer.json, or pass it as the tokenizer "
            "(config features.tokenizer)"
        )
    visual = CocaVisual(embed_dim=cfg.embed_dim, image_size=cfg.input_size, **vision)
    tower = TextTransformer(
        context_length=text["context_length"] - 1,  # one slot goes to the appended CLS embedding
        vocab_size=vocab,
        width=text["width"],
        heads=text["heads"],
        layers=text["layers"],
        output_dim=cfg.embed_dim,
        embed_cls=True,
        pad_id=pad_id,
        act_layer=nn.GELU,
    )
    return CocaBackbone(cfg, CocaContrastive(visual, tower), tokenizer, name, pad_id)
