"""A training-free survival baseline: the attribute prompts' transport-weighted similarities, signed by each
attribute's prognostic direction (pipeline.model.hila.PromptRisk)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.model.configs import HiLaConfig
from pipeline.settings import option
from pipeline.training.methods.base import Method, Resources
from pipeline.training.methods.hila import attribute_rows, transport_scores
from pipeline.training.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.explain.scores import PatchScores
    from pipeline.training.data import SlideBag


@dataclass(frozen=True)
class PromptRiskSettings:
    """The optimal-transport settings of HiLa's prompt learning, its defaults (pipeline.model.configs.HiLaConfig)."""

    ot_eps: float = option(HiLaConfig.ot_eps, "Sinkhorn entropic regularisation, kernel exp(-cost / eps)")
    ot_iters: int = option(HiLaConfig.ot_iters, "Sinkhorn iterations at most")
    ot_tol: float = option(HiLaConfig.ot_tol, "Sinkhorn stops once the prompt-side marginal error is below it")

    def hila_config(self) -> HiLaConfig:
        return HiLaConfig(ot_eps=self.ot_eps, ot_iters=self.ot_iters, ot_tol=self.ot_tol)


@register_method("prompt_risk", task_types=("survival",), inputs=("5x", "20x", "text_embeddings"),
                 summary="risk from the frozen attribute prompts alone (signed OPL similarity), no training",
                 settings=PromptRiskSettings)
class PromptRiskMethod(Method):
    settings: PromptRiskSettings

    def build(self, resources: Resources) -> "nn.Module":
        import torch

        from pipeline.model.hila import PromptRisk

        texts = resources.require_text_features(self.name)
        signs = torch.tensor(self.task.signs, dtype=torch.float32)
        model = PromptRisk(texts, signs, self.n_classes, self.settings.hila_config())
        return model.to(resources.device)

    def top_attributes(self, model: "nn.Module", bag: "SlideBag", device: "torch.device") -> list[dict[str, Any]]:
        out = model(*bag.on(device))
        return attribute_rows(self.task.attributes, [out.scores_region, out.scores_patch])

    def explain(
        self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None, target: int | None = None
    ) -> "PatchScores":
        """Each attribute's transport mass per region (5x) and per valid child (20x), with its transport-weighted
        similarity (the number its signed risk sums, as in attributes.csv)."""
        import torch

        with torch.no_grad():
            out = model(*bag.on(device))
        return transport_scores(self.task.attributes, (out.plan_region, out.plan_patch), out.patch_index,
                                (out.scores_region, out.scores_patch))

    def restore(self, ckpt: dict[str, Any], device: "torch.device") -> "nn.Module":
        """The prompt features live in the state dict; placeholders of their shape are loaded over."""
        import torch

        placeholder = torch.zeros(len(self.task.texts), int(ckpt["embed_dim"]))
        return super().restore({**ckpt, "text_features": placeholder}, device)
