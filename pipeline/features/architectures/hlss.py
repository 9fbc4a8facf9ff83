"""`{vlm}_hlss`: a VLM whose image embeddings pass through the residual adapter HLSS pretraining trained on it.

The text tower, tokenizer and logit scale are the VLM's own, untouched, so prompts, zero-shot and prompt learning
work as with the plain VLM. The weights of such a backbone are an HLSS checkpoint (`pipeline.pretrain.checkpoint`),
which names the VLM and the weights it was trained on; loading rebuilds exactly that VLM (checked by sha256),
applies the tower blocks it tuned, then the adapter, and refuses a checkpoint made for another VLM. With
`weights="random"` the adapter is the identity: the backbone embeds exactly as its random VLM does.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.features.architectures.base import Backbone
from pipeline.features.hlss_names import OWN_FIELDS, hlss_name
from pipeline.features.registry import BackboneCfg, BuildContext, get_backbone_cfg
from pipeline.pretrain.model import ResidualAdapter

if TYPE_CHECKING:
    from pipeline.features.weights import WeightsSource

#: the adapter bottleneck of a fresh (random) variant; a checkpoint brings its own.
DEFAULT_ADAPTER_HIDDEN = 256


def vlm_overrides(cfg: BackboneCfg, vlm: str) -> dict[str, Any]:
    """The fields of the variant's cfg that differ from its VLM's registered cfg (CLI overrides), to pass on."""
    base = get_backbone_cfg(vlm)
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(BackboneCfg)
        if f.name not in OWN_FIELDS and getattr(cfg, f.name) != getattr(base, f.name)
    }


class HlssBackbone(Backbone):
    """The VLM backbone `vlm` followed by a ResidualAdapter on its image embeddings."""

    def __init__(self, cfg: BackboneCfg, vlm: Backbone, ctx: BuildContext, adapter_hidden: int = DEFAULT_ADAPTER_HIDDEN):
        super().__init__(cfg, vlm.model, vlm.text_width, vlm.context_length, vlm.tokenizer_name)
        self.vlm = vlm
        self.vlm_name = vlm.cfg.name
        self.ctx = ctx
        self.adapter = ResidualAdapter(vlm.embed_dim, adapter_hidden)
        self.checkpoint_info: dict[str, Any] = {}

    # --- weights ----------------------------------------------------------------------------------------

    def load_weights(self, source: "WeightsSource") -> None:
        """Rebuild the VLM the checkpoint was trained on, apply its tuned tower blocks, then its adapter."""
        from pipeline.features.registry import create_backbone
        from pipeline.pretrain.checkpoint import HlssCheckpointError, load_hlss_checkpoint

        assert source.path is not None
        ckpt = load_hlss_checkpoint(source.path)
        if ckpt["vlm"] != self.vlm_name:
            raise HlssCheckpointError(
                f"HLSS checkpoint {source.path} was trained on backbone '{ckpt['vlm']}', not '{self.vlm_name}': "
                f"use it as '{hlss_name(ckpt['vlm'])}', or pretrain '{self.cfg.name}' on {self.vlm_name}"
            )
        if int(ckpt["embed_dim"]) != self.vlm.embed_dim:
            raise HlssCheckpointError(
                f"HLSS checkpoint {source.path}: embedding size {ckpt['embed_dim']} is not {self.vlm_name}'s "
                f"{self.vlm.embed_dim}"
            )
        vlm = create_backbone(self.vlm_name, ckpt["vlm_weights"], tokenizer=self.ctx.tokenizer,
                              seed=int(ckpt["vlm_weights_seed"] or 0), **vlm_overrides(self.cfg, self.vlm_name))
        assert vlm.weights is not None
        if vlm.weights.sha256 != ckpt["vlm_weights_sha256"]:
            raise HlssCheckpointError(
                f"HLSS checkpoint {source.path} was trained on {self.vlm_name} weights {ckpt['vlm_weights']} with "
                f"sha256 {ckpt['vlm_weights_sha256'][:16]}..., but that file now has {vlm.weights.sha256[:16]}...: "
                "the adapter does not fit other weights; pretrain again"
            )
        tower = ckpt["tower"]
        own = vlm.model.state_dict()
        foreign = [k for k in tower if k not in own or own[k].shape != tower[k].shape]
        if foreign:
            raise HlssCheckpointError(f"HLSS checkpoint {source.path}: tuned tower tensors {foreign[:8]} do not fit "
                                      f"{self.vlm_name}")
        vlm.model.load_state_dict(tower, strict=False)
        adapter = ResidualAdapter(vlm.embed_dim, int(ckpt["adapter_hidden"]))
        adapter.load_state_dict(ckpt["adapter"])
        self.vlm, self.model, self.adapter = vlm, vlm.model, adapter
        self.checkpoint_info = {
            "hlss_vlm": self.vlm_name,
            "hlss_vlm_weights": vlm.weights.label,
            "hlss_vlm_weights_sha256": vlm.weights.sha256,
            "hlss_steps": int(ckpt["step"]),
            "hlss_trainable": str(ckpt["trainable"]),
            "hlss_attributes_sha256": str(ckpt["attributes"].get("sha256", "")),
        }

    def attrs(self) -> dict[str, Any]:
        return {**super().attrs(), "hlss_vlm": self.vlm_name, **self.checkpoint_info}

    # --- device and state -------------------------------------------------------------------------------

    def freeze(self) -> "HlssBackbone":
        self.vlm.freeze()
        self.adapter.eval()
        self.adapter.requires_grad_(False)
        return self

    def to(self, device: torch.device | str) -> "HlssBackbone":
        self.vlm.to(device)
        self.adapter.to(device)
        return self

    # --- images: tower, then adapter ---------------------------------------------------------------------

    def encode_image(self, x: Tensor) -> Tensor:
        return self.adapt(self.vlm.encode_image(x))

    def adapt(self, vlm_embeddings: Tensor) -> Tensor:
        """The VLM's image embeddings [B, D] -> this backbone's: what extraction does after the tower, and all the
        variant changes when the tower was not tuned (so cached VLM features can be adapted without the slides)."""
        out = self.adapter(vlm_embeddings)
        return F.normalize(out, dim=-1) if self.cfg.normalize_image else out

    @property
    def tunes_tower(self) -> bool:
        """Whether pretraining changed tower weights (`trainable: last_blocks`): then only extraction gives its
        features."""
        return self.checkpoint_info.get("hlss_trainable", "adapter") != "adapter"

    # --- text: the VLM's ---------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return self.vlm.tokenize(texts)

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.vlm.encode_text(tokens)

    def token_embedding(self, tokens: Tensor) -> Tensor:
        return self.vlm.token_embedding(tokens)

    def encode_text_embeddings(self, embeds: Tensor, tokens: Tensor) -> Tensor:
        return self.vlm.encode_text_embeddings(embeds, tokens)
