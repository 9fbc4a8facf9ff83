"""Task types: what an endpoint means for training. Each owns its targets, loss, stopping error, metrics and plots.

`classification` is slide-level labels with class texts from the prompt file (HiVE-MIL's setting). The next task
types (hierarchical label trees, survival) register here the same way and reuse the loop, checkpoints and reports.
Torch is imported inside the functions that need it, so the registry stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.formats import PathLike
from pipeline.training.registry import register_task_type

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class TaskType:
    """One endpoint on the cohort: its slides' targets and the class texts the methods read."""

    type_name: ClassVar[str] = ""
    #: metric columns of the result tables, with their table headers.
    metrics: ClassVar[dict[str, str]] = {}

    name: str
    classes: list[str]
    targets: dict[str, int]  # slide_id -> target
    texts: list[str]  # the prompt file's texts, per class in file order

    def target(self, slide_id: str, where: str) -> int:
        if slide_id not in self.targets:
            raise PipelineError(f"{where}: slide '{slide_id}' has no target in task '{self.name}'")
        return self.targets[slide_id]

    def loss(self, logits: "Tensor", target: int) -> "Tensor":
        raise NotImplementedError

    def outputs(self, logits: "Tensor") -> np.ndarray:
        """What a slide's logits mean to the tables (probabilities for classification)."""
        raise NotImplementedError

    def stopping_error(self, outputs: np.ndarray, targets: Sequence[int]) -> float:
        """The number early stopping watches (lower is better)."""
        raise NotImplementedError

    def score(self, targets: Sequence[int], outputs: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def prediction_frame(self, slide_ids: Sequence[str], targets: Sequence[int] | None, outputs: np.ndarray) -> pd.DataFrame:
        raise NotImplementedError

    def plots(self, predictions: pd.DataFrame, title: str, out_dir: Path, method: str) -> None:
        """Per-method plots of the pooled test predictions (none by default)."""


@register_task_type("classification")
class Classification(TaskType):
    """Slide-level classes; class order (and texts) from the prompt file, cross-entropy, ACC / AUC / macro-F1."""

    metrics: ClassVar[dict[str, str]] = {"acc": "ACC", "auc": "AUC", "f1": "macro-F1"}

    @classmethod
    def load(cls, name: str, dataset_csv: PathLike, prompts_json: PathLike) -> "Classification":
        """dataset.csv labels mapped onto the prompt file's classes; slides of other labels belong to other tasks."""
        from pipeline.dataset import read_dataset
        from pipeline.prompt_files import load_prompts

        dataset = read_dataset(dataset_csv)
        prompts = load_prompts(prompts_json)
        classes = prompts.labels
        mine = dataset[dataset["label"].isin(classes)]
        if mine.empty:
            raise PipelineError(
                f"task '{name}': no slide of {dataset_csv} has one of the classes {classes} of {prompts_json}"
            )
        targets = {row.slide_id: classes.index(row.label) for row in mine.itertuples()}
        texts = [t for c in prompts.classes for t in c.texts()]
        return cls(name, classes, targets, texts)

    def loss(self, logits: "Tensor", target: int) -> "Tensor":
        import torch
        import torch.nn.functional as F

        return F.cross_entropy(logits.unsqueeze(0), torch.tensor([target], device=logits.device))

    def outputs(self, logits: "Tensor") -> np.ndarray:
        return logits.detach().float().softmax(-1).cpu().numpy()

    def stopping_error(self, outputs: np.ndarray, targets: Sequence[int]) -> float:
        return float(np.mean(outputs.argmax(1) != np.asarray(targets)))

    def score(self, targets: Sequence[int], outputs: np.ndarray) -> dict[str, float]:
        from pipeline.metrics import classification_metrics

        if not len(targets):
            return dict.fromkeys(self.metrics, float("nan"))
        return classification_metrics(np.asarray(targets), outputs)

    def prediction_frame(self, slide_ids: Sequence[str], targets: Sequence[int] | None, outputs: np.ndarray) -> pd.DataFrame:
        frame = pd.DataFrame({"slide_id": list(slide_ids)})
        if targets is not None:
            frame["label"] = [self.classes[y] for y in targets]
            frame["label_index"] = list(targets)
        frame["pred"] = [self.classes[i] for i in outputs.argmax(1)] if len(slide_ids) else []
        for c, cls in enumerate(self.classes):
            frame[f"prob_{cls}"] = outputs[:, c] if len(slide_ids) else []
        return frame

    def plots(self, predictions: pd.DataFrame, title: str, out_dir: Path, method: str) -> None:
        from pipeline.training.reports import plot_roc

        if len(predictions) and predictions["label_index"].nunique() > 1:
            plot_roc(predictions, self.classes, f"{title}: {method}", out_dir / "plots" / f"roc_{method}.png")


def load_task(task_type: str, name: str, dataset_csv: PathLike, prompts_json: PathLike) -> TaskType:
    """A task of a registered type from the cohort's dataset.csv and its prompt file."""
    from pipeline.training.registry import get_task_type

    cls: Any = get_task_type(task_type)
    return cls.load(name, dataset_csv, prompts_json)
