"""The shipped methods, registered by the explicit import below; where to look a method up by name.

A new method is one module here with a `@register_method(..., settings=...)` class (see `base.Method`), added to
this import.
"""

from __future__ import annotations

from typing import Any

from pipeline.training.methods import abmil, five, hila, hivemil, hmil, prompt_risk, zeroshot  # noqa: F401  (registers them)
from pipeline.training.registry import METHODS, lookup


def get_method(name: str) -> type:
    """The registered method class `name` (a clear error listing the registered ones otherwise)."""
    return lookup(METHODS, name, "method")


def list_methods(task_type: str | None = None) -> list[str]:
    """Registered method names (of those a task type accepts, if given), in registration order."""
    if task_type is None:
        return list(METHODS)
    from pipeline.training.tasks import get_task_type

    accepts = get_task_type(task_type).accepts
    return [n for n, cls in METHODS.items() if accepts(cls)]


def method_settings(name: str, values: Any = None) -> Any:
    """Method `name`'s settings from a mapping of some of its fields, checked (unknown keys refused, naming the
    method and its allowed settings)."""
    from pipeline.settings import build

    return build(get_method(name).Settings, values, f"config: train.method_settings.{name}")
