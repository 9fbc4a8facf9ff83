"""HiVE-MIL (HIVEMIL.md): prompt learning on the frozen text tower, TGDF, the hierarchical graph, HTCL.

Training reads the backbone's text tower (the learnable context reaches it with gradient). A checkpoint stores
the text features of the learned prompts, so prediction rebuilds the graph with those fixed texts and needs no
text tower, and encodes them once rather than per slide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from pipeline.model.configs import HiveMILConfig
from pipeline.settings import option
from pipeline.training.methods.base import Method, Resources, explained_class
from pipeline.training.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from pipeline.explain.scores import PatchScores
    from pipeline.training.data import SlideBag


@dataclass
class HiveMILSettings(HiveMILConfig):
    """The model's hyperparameters and reference switches (pipeline.model.configs.HiveMILConfig) and the prompt
    learner's context length."""

    n_ctx: int = option(16, "learnable prompt context vectors shared by all texts")

    def hivemil_config(self) -> HiveMILConfig:
        names = {f.name for f in fields(HiveMILConfig)}
        return HiveMILConfig(**{k: v for k, v in asdict(self).items() if k in names})


@register_method("hivemil", task_types=("classification", "hierarchical"), inputs=("5x", "20x", "text_tower"),
                 summary="HiVE-MIL: hierarchical 5x/20x + text graph with prompt learning (few-shot)",
                 settings=HiveMILSettings)
class HiveMILMethod(Method):
    settings: HiveMILSettings

    def hivemil_config(self) -> HiveMILConfig:
        return self.settings.hivemil_config()

    def best_epoch(self) -> str:
        """The reference preset restores the reference code's epoch too (REFERENCE_SWITCHES' best_epoch)."""
        from pipeline.model.options import REFERENCE_SWITCHES

        return REFERENCE_SWITCHES["best_epoch"] if self.settings.reference else self.config.best_epoch

    def _model(self, resources: Resources, text_encoder: "nn.Module") -> "nn.Module":
        from pipeline.model.hivemil import HiveMIL

        model = HiveMIL(resources.embed_dim, self.n_classes, resources.require_logit_scale(self.name),
                        self.hivemil_config(), text_encoder)
        return model.to(resources.device)

    def build(self, resources: Resources) -> "nn.Module":
        from pipeline.model.prompt_learner import PromptLearner

        learner = PromptLearner(resources.backbone(self.name), self.task.texts, n_ctx=self.settings.n_ctx)
        return self._model(resources, learner.to(resources.device))

    def logits(self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None) -> tuple["Tensor", "Tensor"]:
        x5, x20, mask = bag.on(device)
        out = model(x5, x20, mask, cache)
        return out.logits, model.config.htcl_weight * out.htcl

    def eval_cache(self, model: "nn.Module") -> "Tensor":
        return model.encode_texts()

    def explain(
        self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None, target: int | None = None
    ) -> "PatchScores":
        """Cosine similarity of the graph's output nodes to class `target`'s texts: one map per coarse text at 5x,
        per fine text at 20x (children outside the graph, e.g. filtered out, are NaN, and so are the zero-padded
        slots that `keep_padded_children` makes nodes: there is no patch to show)."""
        import torch

        from pipeline.explain.scores import scatter_children, text_similarity_scores
        from pipeline.prompt_files import COARSE_PER_CLASS, FINE_PER_CLASS

        with torch.no_grad():
            out = model(*bag.on(device), cache)
        cls = explained_class(out.logits, target)
        t5 = out.nodes["txt5"][cls * COARSE_PER_CLASS:(cls + 1) * COARSE_PER_CLASS]
        t20 = out.nodes["txt20"][cls * FINE_PER_CLASS:(cls + 1) * FINE_PER_CLASS]
        sim5 = (out.nodes["img5"] @ t5.T).float().cpu().numpy()
        nodes20 = (out.nodes["img20"] @ t20.T).float().cpu().numpy()
        graph = out.graph
        sim20 = scatter_children(nodes20, graph.child_parent.cpu().numpy(), graph.child_slot.cpu().numpy(), len(sim5))
        sim20[~bag.mask.cpu().numpy().astype(bool)] = float("nan")
        return text_similarity_scores(self.task.texts, cls, sim5, sim20)

    def inference_payload(self, model: "nn.Module") -> dict[str, Any]:
        import torch

        model.eval()
        with torch.no_grad():
            texts = model.encode_texts().detach().cpu()
        return {"text_features": texts, "prompt_context": model.text_encoder.ctx.detach().cpu()}

    def restore(self, ckpt: dict[str, Any], device: "torch.device") -> "nn.Module":
        from pipeline.model.prompt_learner import FixedTexts

        resources = Resources(embed_dim=int(ckpt["embed_dim"]), device=device, logit_scale=ckpt["logit_scale"])
        model = self._model(resources, FixedTexts(ckpt["text_features"]).to(device))
        graph = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("text_encoder.")}
        model.gnn.load_state_dict({k.removeprefix("gnn."): v for k, v in graph.items()})
        return model.eval()
