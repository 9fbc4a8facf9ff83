"""The `classification` task type: slide-level labels with class texts from the prompt file (HiVE-MIL's setting).

Few-shot runs per shot count; with a label tree, a slide's class is the coarse parent of its sheet label.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.formats import PathLike
from pipeline.labels import LabelTree
from pipeline.training.registry import register_task_type
from pipeline.training.tasks.base import TaskType

if TYPE_CHECKING:
    from torch import Tensor


@register_task_type("classification")
class Classification(TaskType):
    """Slide-level classes; class order (and texts) from the prompt file, cross-entropy, ACC / AUC / macro-F1."""

    metrics: ClassVar[dict[str, str]] = {"acc": "ACC", "auc": "AUC", "f1": "macro-F1"}
    default_methods: ClassVar[tuple[str, ...]] = ("hivemil", "abmil_5x", "abmil_20x", "zeroshot")
    #: appended to plot titles of the class level (the fine level of a tree)
    level_note: ClassVar[str] = ""

    @classmethod
    def split_arguments(cls, task: dict[str, Any], cohort: dict[str, Any], count: int) -> list[Any]:
        """Few-shot splits (pipeline.splits): `count` training slides per class drawn from each fold's training
        partition; slides of labels of other tasks are left out."""
        flags: list[Any] = [
            "--task", task["name"], "--shots", count, "--folds", cohort["folds"], "--val-frac", cohort["val_frac"],
            "--test-frac", cohort["test_frac"], "--seed", cohort["seed"], "--labels", *task["labels"],
            "--label-tree", *cls.split_tree_args(task), "--ignore-other-labels", "--import-from",
            cohort["import_splits"],
        ]  # fmt: skip
        return flags + (["--allow-case-overlap"] if cohort["allow_case_overlap"] else [])

    @staticmethod
    def split_tree_args(task: dict[str, Any]) -> list[str]:
        """A classification task with a tree stratifies by coarse class (the sheet's fine labels mapped up)."""
        return list(task.get("tree_args") or [])

    @classmethod
    def load(cls, name: str, dataset_csv: PathLike, prompts_json: PathLike, tree: LabelTree | None = None,
             settings: Any = None, labels: Sequence[str] = ()) -> "TaskType":
        """dataset.csv labels mapped onto the prompt file's classes; slides of other labels belong to other tasks.

        With a label tree, a slide's class is the coarse parent of its (fine) sheet label.
        """
        from pipeline.dataset import read_dataset
        from pipeline.prompt_files import load_prompts

        dataset = read_dataset(dataset_csv)
        prompts = load_prompts(prompts_json)
        classes = prompts.labels
        labels = dataset["label"].map(cls._class_of(tree))
        mine = dataset.assign(label=labels)[labels.isin(classes)]
        if mine.empty:
            raise PipelineError(
                f"task '{name}': no slide of {dataset_csv} has one of the classes {classes} of {prompts_json}"
            )
        targets = {row.slide_id: classes.index(row.label) for row in mine.itertuples()}
        texts = [t for c in prompts.classes for t in c.texts()]
        task = cls(name, classes, targets, texts, tree, settings)
        task.check()
        return task

    @staticmethod
    def _class_of(tree: LabelTree | None) -> Any:
        """Sheet label -> this type's class name (the coarse parent for a classification task with a tree)."""
        if tree is None:
            return lambda label: label
        return lambda label: tree.coarse_of(label) if label in tree.fine else label

    def check(self) -> None:
        """Refuse a task whose classes do not fit its tree (called once loaded)."""
        if self.tree is not None and list(self.classes) != list(self.tree.coarse):
            raise PipelineError(
                f"task '{self.name}': the prompt file's classes {self.classes} are not its tree's coarse classes "
                f"{list(self.tree.coarse)}"
            )

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

    def plots(self, predictions: pd.DataFrame, title: str, plots_dir: Path, method: str) -> None:
        from pipeline.training.reports import plot_confusion, plot_roc

        if len(predictions) and predictions["label_index"].nunique() > 1:
            plot_roc(predictions, self.classes, f"{title}{self.level_note}", plots_dir / f"roc_{method}.png")
        if len(predictions):
            plot_confusion(predictions["label"], predictions["pred"], self.classes, f"{title}{self.level_note}",
                           plots_dir / f"confusion_{method}.png")


