"""HiVE-MIL (HIVEMIL.md): prompt learning on the frozen text tower, TGDF, the hierarchical graph, HTCL.

Training reads the backbone's text tower (the learnable context reaches it with gradient). A checkpoint stores
the text features of the learned prompts, so prediction rebuilds the graph with those fixed texts and needs no
text tower, and encodes them once rather than per slide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.training.methods.base import Method, Resources, explained_class
from pipeline.training.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from pipeline.explain.scores import PatchScores
    from pipeline.training.data import SlideBag


@register_method("hivemil", task_types=("classification", "hierarchical"), inputs=("5x", "20x", "text_tower"),
                 summary="HiVE-MIL: hierarchical 5x/20x + text graph with prompt learning (few-shot)")
class HiveMILMethod(Method):
    def hivemil_config(self) -> Any:
        from pipeline.errors import PipelineError
        from pipeline.model.hivemil import HiveMILConfig

        c = self.config
        try:
            return HiveMILConfig(num_layers=c.num_layers, heads=c.heads, top_k_5x=c.top_k_5x, top_k_20x=c.top_k_20x,
                                 reference=c.reference, hier_attention=c.hier_attention, hier_block=c.hier_block,
                                 htcl_negatives=c.htcl_negatives, logit_scale=c.logit_scale,
                                 filter_at_eval=c.filter_at_eval, normalize_inputs=c.normalize_inputs,
                                 keep_padded_children=c.keep_padded_children, filter_std=c.filter_std)
        except ValueError as err:
            raise PipelineError(f"train config: {err}") from err

    def _model(self, resources: Resources, text_encoder: "nn.Module") -> "nn.Module":
        from pipeline.model.hivemil import HiveMIL

        model = HiveMIL(resources.embed_dim, self.n_classes, resources.require_logit_scale(self.name),
                        self.hivemil_config(), text_encoder)
        return model.to(resources.device)

    def build(self, resources: Resources) -> "nn.Module":
        from pipeline.model.prompt_learner import PromptLearner

        learner = PromptLearner(resources.backbone(self.name), self.task.texts, n_ctx=self.config.n_ctx)
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
