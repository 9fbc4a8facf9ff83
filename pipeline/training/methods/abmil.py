"""Attention-based MIL (Ilse et al. 2018, gated) on the 5x or the 20x features: the supervised reference rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.training.methods.base import Method, Resources
from pipeline.training.registry import register_method

if TYPE_CHECKING:
    from torch import nn


class _ABMIL(Method):
    scale: str = ""

    def build(self, resources: Resources) -> "nn.Module":
        from pipeline.model.baselines import ABMIL

        cfg = self.config
        model = ABMIL(resources.embed_dim, self.n_classes, scale=self.scale, hidden=cfg.abmil_hidden,
                      dropout=cfg.abmil_dropout)
        return model.to(resources.device)


@register_method("abmil_5x", task_types=("classification", "hierarchical", "survival"), inputs=("5x",),
                 summary="gated attention MIL on the 5x patch features")
class ABMIL5x(_ABMIL):
    scale = "5x"


@register_method("abmil_20x", task_types=("classification", "hierarchical", "survival"), inputs=("20x",),
                 summary="gated attention MIL on the 20x patch features")
class ABMIL20x(_ABMIL):
    scale = "20x"
