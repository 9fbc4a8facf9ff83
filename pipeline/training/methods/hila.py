"""HiLa (pipeline.model.hila): survival from region (5x) and patch (20x) levels with survival-attribute prompts.

Training reads the backbone's text tower: each level's attribute prompts get their own learnable context
(PromptLearner), and the gradient reaches it through the transport-weighted prompt similarities. A checkpoint stores
the learned prompts' text features, so prediction needs no text tower and encodes them once per model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from pipeline.model.configs import HiLaConfig
from pipeline.settings import option
from pipeline.training.methods.base import Method, Resources, load_trained_weights
from pipeline.training.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from pipeline.explain.scores import PatchScores
    from pipeline.training.data import SlideBag

#: attributes per level listed in attributes.csv for each patient
TOP_ATTRIBUTES = 3


def attribute_rows(names: list[str], weights: "list[Tensor]", top: int = TOP_ATTRIBUTES) -> list[dict[str, Any]]:
    """(level, rank, attribute, weight) of the `top` heaviest attributes per level; names are region's then patch's."""
    from pipeline.attribute_prompts import LEVELS

    k = len(names) // len(LEVELS)
    rows = []
    for li, (level, w) in enumerate(zip(LEVELS, weights)):
        order = w.detach().float().cpu().argsort(descending=True)[:top].tolist()
        rows += [{"level": level, "rank": r + 1, "attribute": names[li * k + i], "weight": float(w[i])}
                 for r, i in enumerate(order)]
    return rows


def transport_scores(
    names: list[str], plans: "tuple[Tensor, Tensor]", patch_index: "Tensor", weights: "tuple[Tensor, Tensor]"
) -> "PatchScores":
    """Per-patch transport mass of each attribute: the region plan `[N, K]` at 5x, the patch plan `[M, K]` over
    the valid children at 20x (slot `patch_index` = n * 16 + j; padding NaN); names are region's then patch's.

    A plan's column k times K is where attribute k takes its score from (weights over the instances summing to
    1); times the level's instance count, 1.0 is a uniform share and 3.0 three times one, whatever the bag size.
    """
    from pipeline.explain.scores import CHILDREN, PatchScores, named_maps, scatter_children, unique_names

    plan_region, plan_patch = (p.detach().float().cpu().numpy() for p in plans)
    (n, k), m = plan_region.shape, plan_patch.shape[0]
    index = patch_index.cpu().numpy()
    region = named_maps(plan_region * n * k, names[:k])
    patch = named_maps(scatter_children(plan_patch * m * k, index // CHILDREN, index % CHILDREN, n), names[k:])
    w_region, w_patch = ([float(v) for v in w.detach().float().cpu()] for w in weights)
    return PatchScores(region, patch, "transport mass (1 = a uniform share)",
                       dict(zip(unique_names(names[:k]), w_region)), dict(zip(unique_names(names[k:]), w_patch)))


@dataclass
class HiLaSettings(HiLaConfig):
    """The model's hyperparameters (pipeline.model.configs.HiLaConfig) and the prompts' learnable context."""

    n_ctx: int = option(16, "learnable prompt context vectors of each level's attribute prompts")

    def hila_config(self) -> HiLaConfig:
        names = {f.name for f in fields(HiLaConfig)}
        return HiLaConfig(**{k: v for k, v in asdict(self).items() if k in names})


@register_method("hila", task_types=("survival",), inputs=("5x", "20x", "text_tower"),
                 summary="HiLa: optimal prompt learning per level, cross-level propagation, mutual contrast",
                 settings=HiLaSettings)
class HiLaMethod(Method):
    settings: HiLaSettings

    def hila_config(self) -> HiLaConfig:
        return self.settings.hila_config()

    def _model(self, resources: Resources, region: "nn.Module", patch: "nn.Module") -> "nn.Module":
        from pipeline.model.hila import HiLa

        model = HiLa(resources.embed_dim, self.n_classes, self.hila_config(), region, patch)
        return model.to(resources.device)

    def build(self, resources: Resources) -> "nn.Module":
        from pipeline.model.prompt_learner import PromptLearner

        backbone, k, texts = resources.backbone(self.name), self.task.n_attributes, self.task.texts
        region = PromptLearner(backbone, texts[:k], n_ctx=self.settings.n_ctx)
        patch = PromptLearner(backbone, texts[k:], n_ctx=self.settings.n_ctx)
        return self._model(resources, region, patch)

    def logits(self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None) -> tuple["Tensor", "Tensor"]:
        x5, x20, mask = bag.on(device)
        out = model(x5, x20, mask, cache)
        return out.logits, out.aux

    def eval_cache(self, model: "nn.Module") -> Any:
        return model.encode_texts()

    def step_cache(self, model: "nn.Module") -> Any:
        return model.encode_texts()

    def top_attributes(self, model: "nn.Module", bag: "SlideBag", device: "torch.device") -> list[dict[str, Any]]:
        out = model(*bag.on(device))
        return attribute_rows(self.task.attributes, [out.attr_weights_region, out.attr_weights_patch])

    def explain(
        self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None, target: int | None = None
    ) -> "PatchScores":
        """Each attribute's transport mass per region (5x) and per valid child (20x), with its softmax weight in
        the level embedding (`target` is unused: survival has no class)."""
        import torch

        with torch.no_grad():
            out = model(*bag.on(device), cache)
        return transport_scores(self.task.attributes, (out.plan_region, out.plan_patch), out.patch_index,
                                (out.attr_weights_region, out.attr_weights_patch))

    def inference_payload(self, model: "nn.Module") -> dict[str, Any]:
        import torch

        model.eval()
        with torch.no_grad():
            region, patch = model.encode_texts()
        return {"text_features": torch.cat([region, patch]).detach().cpu()}

    def restore(self, ckpt: dict[str, Any], device: "torch.device") -> "nn.Module":
        from pipeline.model.prompt_learner import FixedTexts

        texts, k = ckpt["text_features"], self.task.n_attributes
        resources = Resources(embed_dim=int(ckpt["embed_dim"]), device=device)
        model = self._model(resources, FixedTexts(texts[:k]).to(device), FixedTexts(texts[k:]).to(device))
        load_trained_weights(model, ckpt["state_dict"], ("region_text_encoder.", "patch_text_encoder."), "hila")
        return model.eval()
