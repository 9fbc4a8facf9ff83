"""FiVE (pipeline.model.five) on a classification task, in two protocols beside the other methods.

`five` (few-shot): each training slide is trained against its class description (the question set's `classes`,
FiVE's fine-tuning labels) and against its patient's report description among the step's descriptions of every
training patient (FiVE's fine-grained labels), `description_weight` weighing the second; validation picks the
epoch as for every method. `five_zeroshot` (FiVE's zero-shot protocol): trained on the report descriptions alone,
no label used and no epoch chosen by validation (`epochs` run, the last kept). Both predict a class by the cosine
of the slide embedding with each class description.

Each step drops a random k in [0, Q-1] of the Q fields (and their question prompts), leaves out fields answered
"Unknown", shuffles each description's fields and merges equal descriptions, then encodes the step's descriptions
with the text tower (at most `grad_descriptions` with gradient, as the reference's 96). The descriptions come
only from the fold's training slides (`prepare`); a validation or test patient's description never reaches a step.
Training draws `sample_ratio` of a slide's instances by segment sampling (the zero-shot protocol:
its own `sample_ratio`), capped at `max_instances`; evaluation reads all instances, or evenly spaced ones
(`eval_instances: spaced`, the reference's choice). Instances are a slide's valid 20x children (its 5x patches
when it has none). A checkpoint stores the query prompts' and the class descriptions' text features, so prediction
needs no text tower.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Sequence

from pipeline.errors import PipelineError
from pipeline.settings import option
from pipeline.training.methods.base import Method, Resources, load_trained_weights
from pipeline.training.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from pipeline.descriptions.table import FineGrainedLabels
    from pipeline.explain.scores import PatchScores
    from pipeline.training.data import SlideBag

log = logging.getLogger(__name__)


class StepTargets(NamedTuple):
    """What one training step trains against: the kept fields, the unique augmented descriptions of the fold's
    training slides, and each batch slide's index among them (None: nothing of its description is left)."""

    kept: list[int]
    texts: list[str]
    targets: list[int | None]


def instances(bag: "SlideBag", device: "torch.device") -> tuple["Tensor", "Tensor", "Tensor"]:
    """A slide's instances `[M, D]`: its valid 20x children in row order (5x row, then slot), with each one's 5x row
    and slot; its 5x patches (slot -1) when it has no child."""
    import torch

    x5, x20, mask = bag.on(device)
    parent, slot = mask.bool().nonzero(as_tuple=True)
    if len(parent):
        return x20[parent, slot], parent, slot
    rows = torch.arange(len(x5), device=x5.device)
    return x5, rows, torch.full_like(rows, -1)


@dataclass(frozen=True)
class FiVESettings:
    lr: float = option(3e-4, "Adam learning rate (ours: a few-shot fold has tens of steps; the reference's 3e-6, x10 "
                       "for its fusion, runs for ~10,000)")
    prompts: int = option(16, "learnable query prompts beside the question prompts (reference 16)")
    n_ctx: int = option(8, "learnable context tokens of each query prompt and of the description texts")
    heads: int = option(8, "attention heads of both branches (reference: D / 64 = 8)")
    logit_scale: float = option(300.0, "fixed scale of the cosine logits (reference 300)")
    batch_size: int = option(2, "slides per step, one field-dropout draw each (ours; the reference accumulates 8 "
                             "slides, which would leave a 4-shot fold one step per epoch)")
    sample_ratio: float = option(0.25, "share p of a slide's instances drawn per step by segment sampling (reference "
                                 "fine-tuning 0.25)")
    max_instances: int = option(16384, "at most T instances drawn per step (reference 16384)")
    eval_instances: str = option("all", "at evaluation: all instances (deterministic, every patch scored), or "
                                 "evenly spaced ones as many as training draws (reference)", choices=("all", "spaced"))
    description_weight: float = option(1.0, "few-shot: loss = class-description CE + this x report-description CE")
    grad_descriptions: int = option(96, "descriptions per step encoded with gradient (reference 96); the others "
                                    "without")

    def __post_init__(self) -> None:
        if min(self.prompts, self.n_ctx, self.heads, self.batch_size, self.max_instances, self.grad_descriptions) < 1:
            raise ValueError("prompts, n_ctx, heads, batch_size, max_instances and grad_descriptions must be >= 1")
        if self.lr <= 0 or self.logit_scale <= 0:
            raise ValueError(f"lr and logit_scale must be > 0, got {self.lr}, {self.logit_scale}")
        if not 0.0 < self.sample_ratio <= 1.0:
            raise ValueError(f"sample_ratio must be in (0, 1], got {self.sample_ratio}")


@dataclass(frozen=True)
class FiVEZeroShotSettings(FiVESettings):
    """FiVE's settings; its zero-shot protocol draws every instance by default (reference 1.0)."""

    sample_ratio: float = option(1.0, "share p of a slide's instances drawn per step (reference zero-shot 1.0)")


class _FiVE(Method):
    zero_shot: ClassVar[bool] = False
    settings: FiVESettings

    def five_config(self) -> Any:
        from pipeline.model.five import FiVEConfig

        try:
            return FiVEConfig(heads=self.settings.heads, logit_scale=self.settings.logit_scale)
        except ValueError as err:
            raise PipelineError(f"method '{self.name}' settings: {err}") from err

    @property
    def sample_ratio(self) -> float:
        return self.settings.sample_ratio

    def _check(self, labels: "FineGrainedLabels") -> None:
        if labels.questions.labels != list(self.task.classes):
            raise PipelineError(
                f"method '{self.name}': the question set {labels.questions.source} describes the classes "
                f"{labels.questions.labels}, but task '{self.task.name}' has {list(self.task.classes)}"
            )

    def build(self, resources: Resources) -> "nn.Module":
        import torch

        from pipeline.model.five import FiVE, TFSQueries
        from pipeline.model.prompt_learner import ContextTextEncoder, PromptLearner

        labels = resources.require_descriptions(self.name)
        self._check(labels)
        questions, cfg = labels.questions, self.settings
        backbone = resources.backbone(self.name)
        with torch.no_grad():  # the question prompts are fixed texts through the frozen tower: encoded once
            asked = backbone.encode_text(backbone.tokenize(questions.prompts)).float()
        learnable = PromptLearner(backbone, [""] * cfg.prompts, n_ctx=cfg.n_ctx, shared=False)
        model = FiVE(resources.embed_dim, self.five_config(), TFSQueries(asked, learnable),
                     ContextTextEncoder(backbone, cfg.n_ctx))
        self._labels = labels
        names = self.query_names(questions.questions, cfg.prompts)
        return self._annotate(model, questions.class_texts, names, resources.device)

    def _annotate(self, model: "nn.Module", class_texts: list[str], names: list[str], device: Any = None) -> "nn.Module":
        """Texts the model scores and names its queries, kept on the module (not tensors: no state-dict entries)."""
        model.class_texts = list(class_texts)
        model.query_names = list(names)
        return model if device is None else model.to(device)

    @staticmethod
    def query_names(questions: Sequence[Any], n_prompts: int) -> list[str]:
        return [f"query: {q.name}" for q in questions] + [f"learnable prompt {i + 1}" for i in range(n_prompts)]

    # --- training ---------------------------------------------------------------------------------------------

    def prepare(self, model: "nn.Module", train: "Sequence[tuple[SlideBag, Any]]") -> None:
        """Keep the descriptions of this fold's training slides only, and seed the step draws."""
        import torch

        labels = getattr(self, "_labels", None)
        if labels is None:
            raise PipelineError(f"method '{self.name}': prepare() before build()")
        self._fold: dict[str, dict[str, str] | None] = {bag.slide_id: labels.of(bag.slide_id) for bag, _ in train}
        self._rng = torch.Generator().manual_seed(self.config.seed)
        described = sum(a is not None for a in self._fold.values())
        log.info("%s: %d of %d training slides have a report description", self.name, described, len(self._fold))
        if self.zero_shot and not described:
            raise PipelineError(
                f"method '{self.name}': no training slide's patient has a report description (see the descriptions "
                "stage's descriptions.csv and failed.csv), so the zero-shot protocol has nothing to train on"
            )

    def step_targets(self, batch_ids: Sequence[str], kept: Sequence[int]) -> StepTargets:
        """The step's descriptions (the fold's training descriptions, augmented with `kept`) and the batch's targets."""
        from pipeline.descriptions.questions import UNKNOWN
        from pipeline.model.five import augment_descriptions

        outside = [s for s in batch_ids if s not in self._fold]
        if outside:
            raise RuntimeError(f"{self.name}: slides {outside} are in a training batch but not among the fold's "
                               "training slides")
        questions = self._labels.questions
        fields = [questions.fields[i] for i in kept]
        train_ids = list(self._fold)
        parts = [[questions.question(f).phrase(a[f]) for f in fields if a[f] != UNKNOWN] if a else []
                 for a in (self._fold[s] for s in train_ids)]
        augmented = augment_descriptions(parts, self._rng)
        position = {s: i for i, s in enumerate(train_ids)}
        return StepTargets(list(kept), augmented.texts, [augmented.targets[position[s]] for s in batch_ids])

    def encode_step_texts(self, model: "nn.Module", texts: list[str]) -> "Tensor":
        """The step's texts through the description encoder, at most `grad_descriptions` with gradient."""
        import torch

        limit = self.settings.grad_descriptions
        if len(texts) <= limit:
            return model.descriptions(texts)
        order = torch.randperm(len(texts), generator=self._rng)
        with_grad, without = sorted(order[:limit].tolist()), sorted(order[limit:].tolist())
        a = model.descriptions([texts[i] for i in with_grad])
        with torch.no_grad():
            b = model.descriptions([texts[i] for i in without])
        out = a.new_empty(len(texts), a.size(1))
        out[with_grad], out[without] = a, b.to(a.dtype)
        return out

    def training_instances(self, bag: "SlideBag", device: "torch.device") -> tuple["Tensor", "Tensor"]:
        """Segment-sampled instances and their index ratios (index / the slide's instance count)."""
        from pipeline.model.five import segment_sample

        x, _, _ = instances(bag, device)
        m = len(x)
        idx = segment_sample(m, self.sample_ratio, self.settings.max_instances, self._rng).to(x.device)
        return x[idx], idx.float() / m

    def training_loss(
        self, model: "nn.Module", batch: "list[tuple[SlideBag, Any]]", device: "torch.device", epoch: int, epochs: int
    ) -> "Tensor":
        """Mean over the batch's slides (one padded forward) of the class-description CE (few-shot) plus the weighted
        report-description CE of the slides with a description left this step."""
        from pipeline.model.five import cross_entropy, drop_fields, pad_instances

        questions = self._labels.questions
        step = self.step_targets([bag.slide_id for bag, _ in batch], drop_fields(len(questions.fields), self._rng))
        classes = [] if self.zero_shot else list(model.class_texts)
        features = self.encode_step_texts(model, step.texts + classes)
        slides = model(*pad_instances([self.training_instances(bag, device) for bag, _ in batch]),
                       model.queries(step.kept)).slide
        loss = 0.0 * slides.sum()  # keeps the graph when no slide of a zero-shot batch has a description left
        if not self.zero_shot:
            loss = loss + cross_entropy(model.logits(slides, features[len(step.texts):]), [int(t) for _, t in batch])
        rows = [i for i, t in enumerate(step.targets) if t is not None]
        if rows:
            weight = 1.0 if self.zero_shot else self.settings.description_weight
            described = cross_entropy(model.logits(slides[rows], features[: len(step.texts)]),
                                      [step.targets[i] for i in rows])
            loss = loss + weight * described * len(rows) / len(batch)
        return loss

    def train_batch_size(self) -> int:
        return self.settings.batch_size

    def learning_rate(self) -> float:
        return self.settings.lr

    def selects_on_validation(self) -> bool:
        return not self.zero_shot

    # --- evaluation, explanation, checkpoints -------------------------------------------------------------------

    def eval_cache(self, model: "nn.Module") -> tuple["Tensor", "Tensor"]:
        """All query prompts and the class descriptions' features, once per evaluation pass."""
        return model.queries(None), model.descriptions(model.class_texts)

    def evaluation_instances(self, bag: "SlideBag", device: "torch.device") -> tuple["Tensor", "Tensor", "Tensor", "Tensor"]:
        import torch

        from pipeline.model.five import evaluation_instances

        x, parent, slot = instances(bag, device)
        m = len(x)
        idx = evaluation_instances(m, self.settings.eval_instances, self.sample_ratio,
                                   self.settings.max_instances).to(x.device)
        valid = torch.ones(len(idx), dtype=torch.bool, device=x.device)
        return x[idx], idx.float() / m, valid, idx

    def _forward(self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any) -> tuple[Any, Any, Any]:
        queries, classes = cache if cache is not None else self.eval_cache(model)
        x, ratio, valid, idx = self.evaluation_instances(bag, device)
        out = model(x, ratio, valid, queries)
        return out, model.logits(out.slide, classes), idx

    def logits(self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None) -> tuple["Tensor", "Tensor"]:
        _, logits, _ = self._forward(model, bag, device, cache)
        return logits, logits.new_zeros(())

    def explain(
        self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None, target: int | None = None
    ) -> "PatchScores":
        """Each query prompt's attention over the instances it read, times their number (1 = a uniform share):
        one map per question prompt and learnable prompt, at 20x (5x for a slide without children); instances
        left out by `eval_instances: spaced` are NaN. The maps are the same whatever class `target` is; each
        map's weight is how far that query moves the slide embedding towards the class's description."""
        import numpy as np
        import torch

        from pipeline.explain.scores import PatchScores, named_maps, scatter_children, unique_names
        from pipeline.training.methods.base import explained_class

        cache = cache if cache is not None else self.eval_cache(model)
        with torch.no_grad():
            out, logits, idx = self._forward(model, bag, device, cache)
            _, parent, slot = instances(bag, device)
            pull = model.query_pull(out.query_outputs, cache[1][explained_class(logits, target)])
        attention = (out.attention.float().cpu().numpy() * len(idx)).T  # [M_read, L]
        rows, slots = parent[idx].cpu().numpy(), slot[idx].cpu().numpy()
        n = len(bag.x5)
        kind = "query attention (1 = a uniform share)"
        weights = dict(zip(unique_names(model.query_names), (float(v) for v in pull.float().cpu())))
        if slots.min(initial=0) < 0:  # no children: the 5x patches were the instances
            values = np.full((n, attention.shape[1]), np.nan)
            values[rows] = attention
            return PatchScores(named_maps(values, model.query_names), {}, kind, weights_5x=weights)
        maps = named_maps(scatter_children(attention, rows, slots, n), model.query_names)
        return PatchScores({}, maps, kind, weights_20x=weights)

    def inference_payload(self, model: "nn.Module") -> dict[str, Any]:
        import torch

        model.eval()
        with torch.no_grad():
            queries, classes = self.eval_cache(model)
        return {"five_queries": queries.detach().cpu(), "five_n_questions": int(model.queries.n_questions),
                "five_query_names": list(model.query_names), "five_class_texts": list(model.class_texts),
                "five_class_features": classes.detach().cpu()}

    def restore(self, ckpt: dict[str, Any], device: "torch.device") -> "nn.Module":
        from pipeline.model.five import FiVE, FixedDescriptions, TFSQueries
        from pipeline.model.prompt_learner import FixedTexts

        queries, q = ckpt["five_queries"], int(ckpt["five_n_questions"])
        model = FiVE(int(ckpt["embed_dim"]), self.five_config(), TFSQueries(queries[:q], FixedTexts(queries[q:])),
                     FixedDescriptions(ckpt["five_class_texts"], ckpt["five_class_features"]))
        load_trained_weights(model, ckpt["state_dict"], ("queries.", "descriptions."), self.name)
        return self._annotate(model, ckpt["five_class_texts"], ckpt["five_query_names"], device).eval()


@register_method("five", task_types=("classification",), inputs=("20x", "text_tower", "descriptions"),
                 summary="FiVE: query prompts over instances, trained on class and report descriptions (few-shot)",
                 settings=FiVESettings)
class FiVEMethod(_FiVE):
    zero_shot = False


@register_method("five_zeroshot", task_types=("classification",), inputs=("20x", "text_tower", "descriptions"),
                 summary="FiVE's zero-shot protocol: trained on report descriptions only, tested on class descriptions",
                 settings=FiVEZeroShotSettings)
class FiVEZeroShot(_FiVE):
    zero_shot = True
