"""Task types: what an endpoint means for training. Each owns its targets, loss, stopping error, metrics and plots.

`classification` is slide-level labels with class texts from the prompt file (HiVE-MIL's setting); `hierarchical`
is a coarse-to-fine label tree (HMIL's setting), predicted at both levels. Further types (survival) register here
the same way (survival: pipeline.training.survival) and reuse the loop, checkpoints and reports. Torch is imported inside the functions that need it, so
the registry stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.formats import PathLike
from pipeline.labels import LabelTree
from pipeline.training.registry import register_task_type

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class TaskType:
    """One endpoint on the cohort: its slides' targets and the class texts the methods read."""

    type_name: ClassVar[str] = ""
    #: metric columns of the result tables, with their table headers.
    metrics: ClassVar[dict[str, str]] = {}
    #: what a target is, and the id column of its prediction tables (survival: one case, all its slides)
    id_column: ClassVar[str] = "slide_id"
    #: evaluated by k-fold cross-validation of all targets (no shots; result tables show `shots` = "cv")
    cross_validated: ClassVar[bool] = False

    name: str
    classes: list[str]
    targets: dict[str, int]  # slide_id -> target
    texts: list[str]  # the prompt file's texts, per class in file order
    tree: LabelTree | None = field(default=None)

    @property
    def n_outputs(self) -> int:
        """Logits a flat method returns (one per class)."""
        return len(self.classes)

    def bags(self, store: Any) -> Any:
        """Where a target's bag comes from: the slide itself (survival: all slides of a patient)."""
        return store

    def epochs(self, cfg: Any) -> int:
        return cfg.epochs

    def batch_size(self, cfg: Any) -> int:
        return 1

    def learning_rate(self, cfg: Any) -> float:
        return cfg.lr

    def checkpoint_state(self) -> dict[str, Any]:
        """What prediction needs of the task beyond its classes and texts (stored in each checkpoint)."""
        return {}

    def target(self, slide_id: str, where: str) -> Any:
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
    #: appended to plot titles of the class level (the fine level of a tree)
    level_note: ClassVar[str] = ""

    @classmethod
    def load(cls, name: str, dataset_csv: PathLike, prompts_json: PathLike, tree: LabelTree | None = None,
             config: Any = None, labels: Sequence[str] = ()) -> "TaskType":
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
        task = cls(name, classes, targets, texts, tree)
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

    def plots(self, predictions: pd.DataFrame, title: str, out_dir: Path, method: str) -> None:
        from pipeline.training.reports import plot_confusion, plot_roc

        if len(predictions) and predictions["label_index"].nunique() > 1:
            plot_roc(predictions, self.classes, f"{title}{self.level_note}", out_dir / "plots" / f"roc_{method}.png")
        if len(predictions):
            plot_confusion(predictions["label"], predictions["pred"], self.classes, f"{title}{self.level_note}",
                           out_dir / "plots" / f"confusion_{method}.png")


@register_task_type("hierarchical")
class Hierarchical(Classification):
    """A coarse-to-fine label tree: targets are fine classes, metrics at both levels and their consistency.

    A method either returns fine logits `[C_f]` (a flat method: coarse probabilities are its fine ones summed per
    coarse class, its coarse prediction the parent of its fine one) or coarse and fine logits `[C_c + C_f]` (HMIL:
    each level its own head). `outputs` rows are [coarse probabilities, fine probabilities, 1 if from a coarse head],
    so that an ensemble's mean stays meaningful.
    """

    metrics: ClassVar[dict[str, str]] = {
        "acc_coarse": "coarse ACC", "auc_coarse": "coarse AUC", "f1_coarse": "coarse macro-F1",
        "acc": "fine ACC", "auc": "fine AUC", "f1": "fine macro-F1", "consistency": "consistency",
    }  # fmt: skip
    level_note: ClassVar[str] = " (fine level)"

    @staticmethod
    def _class_of(tree: LabelTree | None) -> Any:
        return lambda label: label

    def check(self) -> None:
        if self.tree is None:
            raise PipelineError(f"task '{self.name}' is hierarchical and needs a label tree (--label-tree)")
        if list(self.classes) != list(self.tree.fine):
            raise PipelineError(
                f"task '{self.name}': the prompt file's classes {self.classes} are not its tree's fine labels "
                f"{list(self.tree.fine)} in tree order"
            )

    @property
    def label_tree(self) -> LabelTree:
        if self.tree is None:
            raise PipelineError(f"task '{self.name}' is hierarchical and has no label tree")
        return self.tree

    @property
    def n_coarse(self) -> int:
        return len(self.label_tree.coarse)

    def coarse_target(self, fine: int) -> int:
        return self.label_tree.parent[fine]

    def split_logits(self, logits: "Tensor") -> "tuple[Tensor | None, Tensor]":
        """(coarse logits, or None for a flat method; fine logits)."""
        n_fine = len(self.classes)
        if logits.shape[-1] == n_fine:
            return None, logits
        if logits.shape[-1] == self.n_coarse + n_fine:
            return logits[..., : self.n_coarse], logits[..., self.n_coarse :]
        raise PipelineError(
            f"task '{self.name}': a method returned {logits.shape[-1]} logits; expected {n_fine} (fine) or "
            f"{self.n_coarse + n_fine} (coarse + fine)"
        )

    def loss(self, logits: "Tensor", target: int) -> "Tensor":
        """Fine cross-entropy, plus the coarse one for a method with a coarse head."""
        coarse, fine = self.split_logits(logits)
        loss = super().loss(fine, target)
        if coarse is not None:
            loss = loss + super().loss(coarse, self.coarse_target(target))
        return loss

    def coarse_probabilities(self, fine_probs: np.ndarray) -> np.ndarray:
        """Fine probabilities summed per coarse class `[..., C_c]` (flat methods' coarse scores)."""
        parent = np.asarray(self.label_tree.parent)
        return np.stack([fine_probs[..., parent == k].sum(-1) for k in range(self.n_coarse)], -1)

    def outputs(self, logits: "Tensor") -> np.ndarray:
        coarse, fine = self.split_logits(logits.detach().float())
        fine_p = fine.softmax(-1).cpu().numpy()
        if coarse is None:
            return np.concatenate([self.coarse_probabilities(fine_p), fine_p, [0.0]])
        return np.concatenate([coarse.softmax(-1).cpu().numpy(), fine_p, [1.0]])

    def _parts(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(coarse probabilities, fine probabilities, coarse predictions) of an outputs array `[N, C_c + C_f + 1]`:
        a coarse head's own call, else the parent of the fine call."""
        outputs = np.asarray(outputs)
        c = self.n_coarse
        coarse_p, fine_p, from_head = outputs[:, :c], outputs[:, c:-1], outputs[:, -1] >= 0.5
        parent = np.asarray(self.label_tree.parent)
        coarse_pred = np.where(from_head, coarse_p.argmax(1), parent[fine_p.argmax(1)]) if len(outputs) else parent[:0]
        return coarse_p, fine_p, coarse_pred

    def stopping_error(self, outputs: np.ndarray, targets: Sequence[int]) -> float:
        return super().stopping_error(self._parts(outputs)[1], targets)

    def score(self, targets: Sequence[int], outputs: np.ndarray) -> dict[str, float]:
        from pipeline.metrics import hierarchical_metrics

        if not len(targets):
            return dict.fromkeys(self.metrics, float("nan"))
        coarse_p, fine_p, coarse_pred = self._parts(outputs)
        return hierarchical_metrics(np.asarray(targets), fine_p, coarse_p, coarse_pred, np.asarray(self.label_tree.parent))

    def prediction_frame(self, slide_ids: Sequence[str], targets: Sequence[int] | None, outputs: np.ndarray) -> pd.DataFrame:
        """Classification's columns for the fine level, then label_coarse, pred_coarse, consistent, prob_{coarse}."""
        tree = self.label_tree
        n = len(slide_ids)
        coarse_p, fine_p, coarse_pred = self._parts(outputs) if n else (np.zeros((0, self.n_coarse)), np.zeros((0, len(self.classes))), [])
        frame = super().prediction_frame(slide_ids, targets, fine_p)
        if targets is not None:
            frame.insert(frame.columns.get_loc("label"), "label_coarse", [tree.coarse[tree.parent[y]] for y in targets])
        frame["pred_coarse"] = [tree.coarse[k] for k in coarse_pred]
        frame["consistent"] = [tree.coarse_of(p) == c for p, c in zip(frame["pred"], frame["pred_coarse"])]
        for k, name in enumerate(tree.coarse):
            frame[f"prob_{name}"] = coarse_p[:, k]
        return frame

    def plots(self, predictions: pd.DataFrame, title: str, out_dir: Path, method: str) -> None:
        """ROC over the fine classes, and a confusion matrix per level."""
        from pipeline.training.reports import plot_confusion

        super().plots(predictions, title, out_dir, method)  # fine ROC + fine confusion matrix
        if len(predictions):
            plot_confusion(predictions["label_coarse"], predictions["pred_coarse"], list(self.label_tree.coarse),
                           f"{title} (coarse level)", out_dir / "plots" / f"confusion_{method}_coarse.png")


def load_task(
    task_type: str, name: str, dataset_csv: PathLike, prompts_json: PathLike, tree: LabelTree | None = None,
    config: Any = None, labels: Sequence[str] = (),
) -> TaskType:
    """A task of a registered type from the cohort's dataset.csv, its prompt file and its label tree (if any).

    `config` (the TrainConfig) and `labels` (slides of these labels only) are read by the survival type."""
    from pipeline.training.registry import get_task_type

    cls: Any = get_task_type(task_type)
    return cls.load(name, dataset_csv, prompts_json, tree, config=config, labels=labels)
