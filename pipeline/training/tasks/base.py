"""The base of every task type (endpoint): targets, loss, stopping error, metrics, plots, runs and splits.

A task type is one module in this package with a `@register_task_type(name)` subclass of `TaskType` (added to the
package's import list). It owns what an endpoint means for training (its targets, loss, metrics and plots), the
methods a task of its type trains by default, how its runs are drawn and named (`RunScheme`: the run folders'
one home), the command that draws its splits, and its own settings. Torch is imported inside the functions that
need it, so the workflow reads all of this while the DAG is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.labels import LabelTree
from pipeline.settings import NoSettings, build

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class RunScheme:
    """How a task type's runs are drawn and named: one run per shot count (few-shot draws; run `{n}shot`, splits
    `{task}_{n}`, HiVE-MIL's folders) or one k-fold cross-validation (run and splits `cv{k}`)."""

    cross_validated: bool
    run_format: str
    split_format: str

    def counts(self, task: Mapping[str, Any], folds: int) -> list[int]:
        """The shot counts of a task's runs, or the fold count of its one cross-validation."""
        return [int(folds)] if self.cross_validated else [int(n) for n in task["shots"]]

    def run_names(self, task: Mapping[str, Any], folds: int) -> list[str]:
        """The run folders under models/{task}/{backbone}/."""
        return [self.run_format.format(n=n) for n in self.counts(task, folds)]

    def run_name(self, shots: int | None, folds: int) -> str:
        """The run folder of one training job: its shot count's, or its cross-validation's."""
        return self.run_format.format(n=folds if self.cross_validated else shots)

    def count_of(self, run: str) -> int:
        match = re.fullmatch(self.regex(self.run_format), run)
        if not match:
            raise PipelineError(f"run '{run}' is not of the form {self.run_format}")
        return int(match.group(1))

    def split_of_run(self, run: str) -> str:
        """The split folder suffix of a run: `4shot` -> `4`, `cv5` -> `cv5`."""
        return self.split_format.format(n=self.count_of(run))

    def shots_of_run(self, run: str) -> int | None:
        """The shot count a run records in its tables (None for cross-validation)."""
        return None if self.cross_validated else self.count_of(run)

    @staticmethod
    def regex(fmt: str) -> str:
        """A regex matching the names of format `fmt`, the count captured."""
        head, _, tail = fmt.partition("{n}")
        return re.escape(head) + r"(\d+)" + re.escape(tail)


FEW_SHOT = RunScheme(cross_validated=False, run_format="{n}shot", split_format="{n}")
CROSS_VALIDATION = RunScheme(cross_validated=True, run_format="cv{n}", split_format="cv{n}")


def task_settings(cls: type, values: Any, task: str = "") -> Any:
    """A task type's settings from a mapping of some of its fields (unknown keys refused, naming the allowed)."""
    where = f"config: task '{task}' settings" if task else f"task type '{cls.type_name}' settings"
    return build(cls.Settings, values, where)


@dataclass
class TaskType:
    """One endpoint on the cohort: its slides' targets and the class texts the methods read."""

    type_name: ClassVar[str] = ""
    #: metric columns of the result tables, with their table headers.
    metrics: ClassVar[dict[str, str]] = {}
    #: what a target is, and the id column of its prediction tables (survival: one case, all its slides)
    id_column: ClassVar[str] = "slide_id"
    #: how its runs are drawn and named (few-shot draws per shot count, or k-fold cross-validation)
    runs: ClassVar[RunScheme] = FEW_SHOT
    #: the command that writes its split files (the workflow's `splits` rule runs it; see `split_arguments`)
    split_command: ClassVar[str] = "splits"
    #: the methods a task of this type trains when its config lists none
    default_methods: ClassVar[tuple[str, ...]] = ()
    #: its own settings (a dataclass; config.yaml: the task's `settings:`)
    Settings: ClassVar[type] = NoSettings
    #: a type whose methods this one also takes ("" = none): a new endpoint shaped like an existing one (its
    #: targets, logits and outputs) trains the existing methods without a change to them
    methods_of: ClassVar[str] = ""

    @classmethod
    def accepts(cls, method: type) -> bool:
        """Whether registered method class `method` trains on tasks of this type."""
        return cls.type_name in method.task_types or bool(cls.methods_of and cls.methods_of in method.task_types)

    name: str
    classes: list[str]
    targets: dict[str, int]  # slide_id -> target
    texts: list[str]  # the prompt file's texts, per class in file order
    tree: LabelTree | None = field(default=None)
    settings: Any = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.settings, self.Settings):
            self.settings = task_settings(type(self), self.settings, self.name)

    @property
    def cross_validated(self) -> bool:
        return self.runs.cross_validated

    @classmethod
    def split_arguments(cls, task: dict[str, Any], cohort: dict[str, Any], count: int) -> list[Any]:
        """The split command's flags beyond --dataset and its outputs, for one task (config.yaml's, defaults filled
        in), the config's `cohort:` section and the run's count (its shots, or its folds)."""
        raise NotImplementedError

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

    def plots(self, predictions: pd.DataFrame, title: str, plots_dir: Path, method: str) -> None:
        """Per-method plots of the pooled test predictions (none by default)."""


