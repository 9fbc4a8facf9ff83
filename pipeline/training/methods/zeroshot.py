"""Zero-shot classification from the class texts alone: the frozen prompt embeddings score the frozen patches."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.training.methods.base import Method, Resources
from pipeline.training.registry import register_method

if TYPE_CHECKING:
    from torch import nn


@register_method("zeroshot", task_types=("classification", "hierarchical"), inputs=("5x", "20x", "text_embeddings"),
                 summary="top-k patch-text similarity with the frozen prompt embeddings, no training")
class ZeroShot(Method):
    def build(self, resources: Resources) -> "nn.Module":
        from pipeline.model.baselines import ZeroShotClassifier
        from pipeline.model.hivemil import score_scale

        scale = score_scale(resources.require_logit_scale(self.name), self.config.logit_scale)
        model = ZeroShotClassifier(resources.require_text_features(self.name), self.n_classes, scale,
                                   self.config.top_k_5x, self.config.top_k_20x)
        return model.to(resources.device)

    def restore(self, ckpt, device):
        """The text features live in the state dict (normalised buffers); placeholders of their shape are loaded over."""
        import torch

        from pipeline.prompt_files import TEXTS_PER_CLASS

        placeholder = torch.zeros(self.n_classes * TEXTS_PER_CLASS, int(ckpt["embed_dim"]))
        return super().restore({**ckpt, "text_features": placeholder}, device)
