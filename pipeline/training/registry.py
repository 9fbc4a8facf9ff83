"""Where training methods and task types (endpoints) register by name, as timm's models do.

A method registers with `@register_method(name, task_types=..., inputs=..., summary=..., settings=...)`; a task
type with `@register_task_type(name)`. This module only holds the two tables: the shipped ones are registered by
the explicit imports in `pipeline.training.methods` and `pipeline.training.tasks`, which are where to look them up
(`get_method`, `list_methods`, `get_task_type`, `list_task_types`). Torch-free (method modules import torch inside
their functions), so the CLI's choices and the workflow's checks need no model.
"""

from __future__ import annotations

from dataclasses import is_dataclass
from typing import Callable, TypeVar

from pipeline.errors import PipelineError
from pipeline.settings import NoSettings

#: what a method may read: 5x features, the hierarchical 20x children, the prompt texts' frozen embeddings
#: (text_{task}.h5), the backbone's text tower itself (prompt learning: the backbone is built at training), and the
#: patients' fine-grained report descriptions with the task's question set (FiVE: descriptions/{task}.csv).
INPUTS = frozenset({"5x", "20x", "text_embeddings", "text_tower", "descriptions"})

T = TypeVar("T", bound=type)

METHODS: dict[str, type] = {}
TASK_TYPES: dict[str, type] = {}


def register_method(name: str, *, task_types: tuple[str, ...], inputs: tuple[str, ...], summary: str,
                    settings: type = NoSettings) -> Callable[[T], T]:
    """Class decorator: register a `pipeline.training.methods.base.Method` subclass under `name`, with its settings
    dataclass (the home of its hyperparameters' defaults; config.yaml `train.method_settings.<name>`)."""
    unknown = sorted(set(inputs) - INPUTS)
    if unknown:
        raise ValueError(f"method '{name}': unknown input(s) {unknown}; known: {sorted(INPUTS)}")
    if not is_dataclass(settings):
        raise ValueError(f"method '{name}': settings must be a dataclass, got {settings!r}")

    def add(cls: T) -> T:
        if name in METHODS:
            raise ValueError(f"method '{name}' is registered twice ({METHODS[name].__module__}, {cls.__module__})")
        cls.name, cls.task_types, cls.inputs, cls.summary = name, tuple(task_types), frozenset(inputs), summary
        cls.Settings = settings
        METHODS[name] = cls
        return cls

    return add


def register_task_type(name: str) -> Callable[[T], T]:
    """Class decorator: register a `pipeline.training.tasks.base.TaskType` subclass under `name`."""

    def add(cls: T) -> T:
        if name in TASK_TYPES:
            raise ValueError(f"task type '{name}' is registered twice")
        cls.type_name = name
        TASK_TYPES[name] = cls
        return cls

    return add


def lookup(table: dict[str, type], name: str, what: str) -> type:
    if name not in table:
        raise PipelineError(f"unknown {what} {name!r}; registered: {list(table)}")
    return table[name]
