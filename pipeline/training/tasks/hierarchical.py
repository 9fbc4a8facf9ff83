"""The `hierarchical` task type: a coarse-to-fine label tree (HMIL's setting), predicted and scored at both levels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.labels import LabelTree
from pipeline.training.registry import register_task_type
from pipeline.training.tasks.classification import Classification

if TYPE_CHECKING:
    from torch import Tensor


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
    default_methods: ClassVar[tuple[str, ...]] = ("hmil", "hivemil", "abmil_5x", "abmil_20x", "zeroshot")

    @staticmethod
    def split_tree_args(task: dict[str, Any]) -> list[str]:
        """Stratified by the fine labels as they are (shots per fine label)."""
        return []

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

    def plots(self, predictions: pd.DataFrame, title: str, plots_dir: Path, method: str) -> None:
        """ROC over the fine classes, and a confusion matrix per level."""
        from pipeline.training.reports import plot_confusion

        super().plots(predictions, title, plots_dir, method)  # fine ROC + fine confusion matrix
        if len(predictions):
            plot_confusion(predictions["label_coarse"], predictions["pred_coarse"], list(self.label_tree.coarse),
                           f"{title} (coarse level)", plots_dir / f"confusion_{method}_coarse.png")


