"""Task types (endpoints), registered by the explicit import below; where to look one up and load a task.

A new task type is one module here with a `@register_task_type(name)` subclass of `base.TaskType`, added to this
import (plus its split command if it needs a new split scheme).
"""

from __future__ import annotations

from typing import Any, Sequence

from pipeline.formats import PathLike
from pipeline.labels import LabelTree
from pipeline.training.registry import TASK_TYPES, lookup
from pipeline.training.tasks import classification, hierarchical, survival  # noqa: F401  (registers them)
from pipeline.training.tasks.base import RunScheme, TaskType
from pipeline.training.tasks.classification import Classification
from pipeline.training.tasks.hierarchical import Hierarchical
from pipeline.training.tasks.survival import Survival

__all__ = ["Classification", "Hierarchical", "RunScheme", "Survival", "TaskType", "get_task_type", "list_task_types",
           "load_task", "run_regex", "split_regex"]


def get_task_type(name: str) -> type:
    """The registered task type `name` (a clear error listing the registered ones otherwise)."""
    return lookup(TASK_TYPES, name, "task type")


def list_task_types() -> list[str]:
    return list(TASK_TYPES)


def _schemes() -> list[RunScheme]:
    return list(dict.fromkeys(cls.runs for cls in TASK_TYPES.values()))


def run_regex() -> str:
    """The run-folder wildcard's constraint: every registered type's run names (`\\d+shot|cv\\d+`)."""
    return "|".join(RunScheme.regex(s.run_format).replace("(", "").replace(")", "") for s in _schemes())


def split_regex() -> str:
    """The split-folder wildcard's constraint (`\\d+|cv\\d+`)."""
    return "|".join(RunScheme.regex(s.split_format).replace("(", "").replace(")", "") for s in _schemes())


def load_task(
    task_type: str, name: str, dataset_csv: PathLike, prompts_json: PathLike, tree: LabelTree | None = None,
    settings: Any = None, labels: Sequence[str] = (),
) -> TaskType:
    """A task of a registered type from the cohort's dataset.csv, its prompt file and its label tree (if any).

    `settings` (the type's Settings, or a mapping of some of its fields) and `labels` (slides of these labels only)
    are read by the survival type."""
    cls: Any = get_task_type(task_type)
    return cls.load(name, dataset_csv, prompts_json, tree, settings=settings, labels=labels)
