"""Attention-based MIL (Ilse et al. 2018, gated) on the 5x or the 20x features: the supervised reference rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.settings import option
from pipeline.training.methods.base import Method, Resources
from pipeline.training.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.explain.scores import PatchScores
    from pipeline.training.data import SlideBag


@dataclass(frozen=True)
class ABMILSettings:
    hidden: int = option(256, "ABMIL hidden size")
    dropout: float = option(0.25, "ABMIL dropout")


class _ABMIL(Method):
    scale: str = ""
    settings: ABMILSettings

    def build(self, resources: Resources) -> "nn.Module":
        from pipeline.model.baselines import ABMIL

        model = ABMIL(resources.embed_dim, self.n_classes, scale=self.scale, hidden=self.settings.hidden,
                      dropout=self.settings.dropout)
        return model.to(resources.device)

    def explain(
        self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None, target: int | None = None
    ) -> "PatchScores":
        """The attention pooling's weights over the bag's instances (one map, the same for every class): at 5x
        `[N]`, or at 20x `[N, 16]` with padding children NaN. They sum to 1 over the bag."""
        import torch

        from pipeline.explain.scores import PatchScores, scatter_children

        x5, x20, mask = bag.on(device)
        with torch.no_grad():
            attention = model(x5, x20, mask).attention.float().cpu().numpy()
        if self.scale == "5x":
            return PatchScores({"attention": attention}, {}, "attention")
        parent, slot = mask.bool().nonzero(as_tuple=True)  # the order of ABMIL's 20x bag (x20[mask])
        children = scatter_children(attention, parent.cpu().numpy(), slot.cpu().numpy(), len(x5))
        return PatchScores({}, {"attention": children}, "attention")


@register_method("abmil_5x", task_types=("classification", "hierarchical", "survival"), inputs=("5x",),
                 summary="gated attention MIL on the 5x patch features", settings=ABMILSettings)
class ABMIL5x(_ABMIL):
    scale = "5x"


@register_method("abmil_20x", task_types=("classification", "hierarchical", "survival"), inputs=("20x",),
                 summary="gated attention MIL on the 20x patch features", settings=ABMILSettings)
class ABMIL20x(_ABMIL):
    scale = "20x"
