"""Zero-shot classification from the class texts alone: the frozen prompt embeddings score the frozen patches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.model.configs import HiveMILConfig
from pipeline.model.options import LOGIT_SCALE_MODES
from pipeline.settings import option
from pipeline.training.methods.base import Method, Resources, explained_class
from pipeline.training.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.explain.scores import PatchScores
    from pipeline.training.data import SlideBag


@dataclass(frozen=True)
class ZeroShotSettings:
    """HiVE-MIL's slide-logit scoring, its defaults (pipeline.model.configs.HiveMILConfig)."""

    top_k_5x: int = option(HiveMILConfig.top_k_5x, "5x patches averaged per coarse text (all if fewer)")
    top_k_20x: int = option(HiveMILConfig.top_k_20x, "20x patches averaged per fine text")
    logit_scale: str = option(HiveMILConfig.logit_scale, "exp: scores x exp(theta) of the backbone; raw: x theta",
                              choices=LOGIT_SCALE_MODES)

    def __post_init__(self) -> None:
        if self.top_k_5x < 1 or self.top_k_20x < 1:
            raise ValueError(f"top-k must be >= 1, got 5x={self.top_k_5x}, 20x={self.top_k_20x}")


@register_method("zeroshot", task_types=("classification", "hierarchical"), inputs=("5x", "20x", "text_embeddings"),
                 summary="top-k patch-text similarity with the frozen prompt embeddings, no training",
                 settings=ZeroShotSettings)
class ZeroShot(Method):
    settings: ZeroShotSettings

    def build(self, resources: Resources) -> "nn.Module":
        from pipeline.model.baselines import ZeroShotClassifier
        from pipeline.model.hivemil import score_scale

        s = self.settings
        scale = score_scale(resources.require_logit_scale(self.name), s.logit_scale)
        model = ZeroShotClassifier(resources.require_text_features(self.name), self.n_classes, scale,
                                   s.top_k_5x, s.top_k_20x)
        return model.to(resources.device)

    def explain(
        self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None, target: int | None = None
    ) -> "PatchScores":
        """Cosine similarity of the frozen patch features to class `target`'s frozen texts (coarse at 5x, fine at
        20x): the numbers its top-k scores are made of."""
        import torch
        import torch.nn.functional as F

        from pipeline.explain.scores import text_similarity_scores
        from pipeline.prompt_files import COARSE_PER_CLASS, FINE_PER_CLASS

        x5, x20, mask = bag.on(device)
        with torch.no_grad():
            cls = explained_class(model(x5, x20, mask).logits, target)
            t5 = model.t5[cls * COARSE_PER_CLASS:(cls + 1) * COARSE_PER_CLASS]
            t20 = model.t20[cls * FINE_PER_CLASS:(cls + 1) * FINE_PER_CLASS]
            sim5 = F.normalize(x5, dim=-1) @ t5.T
            sim20 = (F.normalize(x20, dim=-1) @ t20.T).masked_fill(~mask.bool()[..., None], float("nan"))
        return text_similarity_scores(self.task.texts, cls, sim5.float().cpu().numpy(), sim20.float().cpu().numpy())

    def restore(self, ckpt, device):
        """The text features live in the state dict (normalised buffers); placeholders of their shape are loaded over."""
        import torch

        from pipeline.prompt_files import TEXTS_PER_CLASS

        placeholder = torch.zeros(self.n_classes * TEXTS_PER_CLASS, int(ckpt["embed_dim"]))
        return super().restore({**ckpt, "text_features": placeholder}, device)
