"""One place that knows every training method and every task type (endpoint) by name, as timm knows its models.

A method registers with `@register_method(name, task_types=..., inputs=...)`; a task type with
`@register_task_type(name)`. Both registries are torch-free to import (method modules import torch inside their
functions), so the CLI's choices and the config schema's enum come from here without loading a model. Importing
`pipeline.training.methods` / `pipeline.training.tasks` registers the shipped ones; `list_*` does that for you.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from pipeline.errors import PipelineError

#: what a method may read: 5x features, the hierarchical 20x children, the prompt texts' frozen embeddings
#: (text_{task}.h5), the backbone's text tower itself (prompt learning: the backbone is built at training), and the
#: patients' fine-grained report descriptions with the task's question set (FiVE: descriptions/{task}.csv).
INPUTS = frozenset({"5x", "20x", "text_embeddings", "text_tower", "descriptions"})

T = TypeVar("T", bound=type)

_METHODS: dict[str, type] = {}
_TASK_TYPES: dict[str, type] = {}


def register_method(name: str, *, task_types: tuple[str, ...], inputs: tuple[str, ...], summary: str) -> Callable[[T], T]:
    """Class decorator: register a `pipeline.training.methods.base.Method` subclass under `name`."""
    unknown = sorted(set(inputs) - INPUTS)
    if unknown:
        raise ValueError(f"method '{name}': unknown input(s) {unknown}; known: {sorted(INPUTS)}")

    def add(cls: T) -> T:
        if name in _METHODS:
            raise ValueError(f"method '{name}' is registered twice ({_METHODS[name].__module__}, {cls.__module__})")
        cls.name, cls.task_types, cls.inputs, cls.summary = name, tuple(task_types), frozenset(inputs), summary
        _METHODS[name] = cls
        return cls

    return add


def register_task_type(name: str) -> Callable[[T], T]:
    """Class decorator: register a `pipeline.training.tasks.TaskType` subclass under `name`."""

    def add(cls: T) -> T:
        if name in _TASK_TYPES:
            raise ValueError(f"task type '{name}' is registered twice")
        cls.type_name = name
        _TASK_TYPES[name] = cls
        return cls

    return add


def _load() -> None:
    import pipeline.training.methods  # noqa: F401  (registers the shipped methods)
    import pipeline.training.survival  # noqa: F401
    import pipeline.training.tasks  # noqa: F401  (registers the shipped task types)


def list_methods(task_type: str | None = None) -> list[str]:
    """Registered method names (for one task type if given), in registration order."""
    _load()
    return [n for n, cls in _METHODS.items() if task_type is None or task_type in cls.task_types]


def list_task_types() -> list[str]:
    _load()
    return list(_TASK_TYPES)


def get_method(name: str) -> type:
    _load()
    if name not in _METHODS:
        raise PipelineError(f"unknown method {name!r}; registered: {list(_METHODS)}")
    return _METHODS[name]


def get_task_type(name: str) -> type:
    _load()
    if name not in _TASK_TYPES:
        raise PipelineError(f"unknown task type {name!r}; registered: {list(_TASK_TYPES)}")
    return _TASK_TYPES[name]
