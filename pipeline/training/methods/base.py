"""The interface of a registered method, and the resources a method may ask for.

A method turns a task (classes, texts) and a training config into a fresh model, says how one slide becomes
logits (plus any auxiliary loss), and how a trained model is rebuilt from its checkpoint for prediction without
the backbone's towers. The shared loop (pipeline.training.loop) knows nothing else about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from pipeline.errors import PipelineError
from pipeline.settings import NoSettings, build

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from pipeline.descriptions.table import FineGrainedLabels
    from pipeline.explain.scores import PatchScores
    from pipeline.training.config import TrainConfig
    from pipeline.training.data import SlideBag
    from pipeline.training.tasks import TaskType


@dataclass
class Resources:
    """What a run offers the methods: feature size, logit scale, the class texts' embeddings, the text tower.

    `text_features` are the frozen prompt embeddings `[16C, D]` in the task's text order; `backbone` builds the
    backbone on first use (only prompt-learning methods ask for it, so a run without them never loads it);
    `descriptions` are the task's question set and each slide's fine-grained report description (FiVE), of which a
    method may use only its training slides' (see `Method.prepare`).
    """

    embed_dim: int
    device: "torch.device"
    logit_scale: float | None = None
    text_features: "Tensor | None" = None
    backbone_factory: Callable[[], Any] | None = None
    descriptions: "FineGrainedLabels | None" = None
    _backbone: Any = field(default=None, repr=False)

    def backbone(self, method: str) -> Any:
        if self._backbone is None:
            if self.backbone_factory is None:
                raise PipelineError(f"method '{method}' needs the backbone's text tower, and none was given")
            self._backbone = self.backbone_factory()
            if self.logit_scale is None:
                self.logit_scale = float(self._backbone.logit_scale)
        return self._backbone

    def require_logit_scale(self, method: str) -> float:
        if self.logit_scale is None:
            self.backbone(method)
        assert self.logit_scale is not None
        return self.logit_scale

    def require_descriptions(self, method: str) -> "FineGrainedLabels":
        if self.descriptions is None:
            raise PipelineError(
                f"method '{method}' needs the task's question set and report descriptions (--questions, "
                "--descriptions: the descriptions stage's outputs)"
            )
        return self.descriptions

    def require_text_features(self, method: str) -> "Tensor":
        if self.text_features is None:
            raise PipelineError(f"method '{method}' needs the prompt texts' embeddings (the text_{{task}}.h5 file)")
        return self.text_features


def explained_class(logits: "Tensor", target: int | None) -> int:
    """The class to explain: the one asked for, else the model's top class."""
    return int(logits.argmax()) if target is None else int(target)


class Method:
    """Base class of registered methods (see `pipeline.training.registry.register_method`)."""

    name: ClassVar[str] = ""
    task_types: ClassVar[tuple[str, ...]] = ()
    inputs: ClassVar[frozenset[str]] = frozenset()
    summary: ClassVar[str] = ""
    #: the method's own hyperparameters (a dataclass, set by `register_method(settings=...)`)
    Settings: ClassVar[type] = NoSettings

    def __init__(self, config: "TrainConfig", task: "TaskType", settings: Any = None):
        """`settings`: an instance of the method's Settings, or a mapping of some of its fields (the rest default)."""
        if not task.accepts(type(self)):
            raise PipelineError(
                f"method '{self.name}' does not support task '{task.name}' of type '{task.type_name}' "
                f"(it supports {list(self.task_types)})"
            )
        self.config = config
        self.task = task
        self.settings = settings if isinstance(settings, self.Settings) else build(
            self.Settings, settings, f"method '{self.name}' settings (train.method_settings.{self.name})")

    @property
    def n_classes(self) -> int:
        """Logits of a flat model: one per class, or one hazard per time bin for survival."""
        return self.task.n_outputs

    def build(self, resources: Resources) -> "nn.Module":
        """A fresh model on `resources.device`, ready to train."""
        raise NotImplementedError

    def logits(self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None) -> tuple["Tensor", "Tensor"]:
        """One slide's logits `[C]` and the method's auxiliary loss (a scalar, 0 if none)."""
        x5, x20, mask = bag.on(device)
        out = model(x5, x20, mask)
        return out.logits, out.logits.new_zeros(())

    def training_loss(
        self, model: "nn.Module", batch: "list[tuple[SlideBag, Any]]", device: "torch.device", epoch: int, epochs: int
    ) -> "Tensor":
        """The loss of one step: the task's loss plus the method's auxiliary loss, averaged over the batch's slides.

        Methods whose losses couple slides of a batch or follow the epoch (HMIL) override it.
        """
        total = None
        cache = self.step_cache(model)
        for bag, target in batch:
            logits, aux = self.logits(model, bag, device, cache)
            loss = self.task.loss(logits, target) + aux
            total = loss if total is None else total + loss
        assert total is not None
        return total / len(batch) if len(batch) > 1 else total

    def prepare(self, model: "nn.Module", train: "Sequence[tuple[SlideBag, Any]]") -> None:
        """Called by the loop before a fold's training with that fold's training targets only: a method that needs
        side information per target (FiVE: the training patients' descriptions) takes it from these, so nothing of
        the validation or test targets can reach training."""

    def selects_on_validation(self) -> bool:
        """Whether the validation targets choose the epoch kept and stop training early (False: a fixed number of
        epochs, the last kept, e.g. a zero-shot protocol that must use no labels)."""
        return True

    def step_cache(self, model: "nn.Module") -> Any:
        """Computed once per training step, with gradient, for all the step's targets (e.g. the learned prompts'
        text features: one text-tower pass per step instead of one per patient)."""
        return None

    def train_batch_size(self) -> int:
        """Targets (slides, or patients) per optimiser step; the task's choice unless the method has its own."""
        return self.task.batch_size(self.config)

    def max_epochs(self) -> int:
        return self.task.epochs(self.config)

    def learning_rate(self) -> float:
        return self.task.learning_rate(self.config)

    def patience(self) -> int:
        return self.config.patience

    def best_epoch(self) -> str:
        """Which epoch's weights are restored (pipeline.model.options.BEST_EPOCH_MODES)."""
        return self.config.best_epoch

    def lr_scheduler(self, optimizer: "torch.optim.Optimizer") -> Any:
        """A scheduler stepped with the validation loss after every epoch, or None."""
        return None

    def top_attributes(self, model: "nn.Module", bag: "SlideBag", device: "torch.device") -> list[dict[str, Any]]:
        """Rows (level, rank, attribute, weight) naming the prompts that drove one target's output; none by default."""
        return []

    def explain(
        self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None, target: int | None = None
    ) -> "PatchScores":
        """Where the model looked for one target: a score per patch of each scale it reads, in named maps
        (pipeline.explain.scores), so prediction draws any method's heatmaps the same way.

        `model` is in eval mode, `cache` its `eval_cache`; `target` is the class explained (the predicted one; a
        hierarchical task's fine class), None for survival or to explain the model's own top class.
        """
        raise NotImplementedError(f"method '{self.name}' has no explain(): it cannot say where it looked")

    def eval_cache(self, model: "nn.Module") -> Any:
        """Computed once per evaluation pass and handed to every `logits` call (e.g. encoded texts)."""
        return None

    def inference_payload(self, model: "nn.Module") -> dict[str, Any]:
        """Tensors the checkpoint needs so prediction can rebuild the model without the backbone."""
        return {}

    def restore(self, ckpt: dict[str, Any], device: "torch.device") -> "nn.Module":
        """The trained model of a checkpoint, in eval mode, without building any backbone."""
        resources = Resources(
            embed_dim=int(ckpt["embed_dim"]), device=device, logit_scale=ckpt.get("logit_scale"),
            text_features=ckpt.get("text_features"),
        )
        model = self.build(resources)
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()


def load_trained_weights(model: "nn.Module", state: dict[str, Any], rebuilt: tuple[str, ...], name: str) -> None:
    """A checkpoint's trained weights into `model`, less those under the `rebuilt` prefixes (text sides rebuilt from
    stored features); any other missing or unexpected key means the checkpoint is not this model's."""
    weights = {k: v for k, v in state.items() if not k.startswith(rebuilt)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    left = [k for k in missing if not k.startswith(rebuilt)]
    if left or unexpected:
        raise RuntimeError(f"{name} checkpoint does not fit the model: missing {left}, unexpected {unexpected}")
