"""Settings dataclasses <-> config sections and command-line flags: the one helper every stage's settings go through.

A settings class is a plain dataclass whose fields are declared with `option(default, help, choices=...)`: the field
default is the setting's one home. From it this module builds an instance from a config mapping (unknown keys and
wrong types refused with the allowed keys named), argparse flags (`--epochs`, `--no-htcl-negatives`), the flags
the workflow passes for a config section, and `key=value` assignments (a method's or a task type's settings on the
`train` command line, as timm's `--model-kwargs`). Stdlib only: the workflow imports it while the DAG is built.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass
from typing import Any, Iterable, Mapping, TypeVar

from pipeline.errors import PipelineError

S = TypeVar("S")


def option(default: Any, help: str, **extra: Any) -> Any:
    """A settings field: its default, the help text the CLI and `methods --settings` print, and e.g. `choices`."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class NoSettings:
    """The settings of a method or task type that has none."""


def _kind(f: Field) -> type:
    if f.default is MISSING:
        raise TypeError(f"settings field {f.name} has no default (every setting needs one)")
    return type(f.default)


def _coerce(f: Field, value: Any, where: str) -> Any:
    kind = _kind(f)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise PipelineError(f"{where}: {f.name} must be {kind.__name__}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise PipelineError(f"{where}: {f.name} must be one of {list(choices)}, got {value!r}")
    return value


def build(cls: type[S], values: Mapping[str, Any] | None, where: str) -> S:
    """An instance of settings class `cls` from a mapping: unknown keys, wrong types and choices refused by name."""
    values = dict(values or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise PipelineError(f"{where}: unknown setting(s) {unknown}; allowed: {sorted(known) or 'none'}")
    checked = {name: _coerce(known[name], value, where) for name, value in values.items()}
    try:
        return cls(**checked)
    except (ValueError, TypeError) as err:
        raise PipelineError(f"{where}: {err}") from err


def to_dict(settings: Any) -> dict[str, Any]:
    return asdict(settings) if is_dataclass(settings) else dict(settings or {})


def describe(cls: type) -> list[dict[str, Any]]:
    """Each setting of `cls`: name, default, help and choices (for `methods --settings` and the docs' tables)."""
    return [{"name": f.name, "default": f.default, "help": f.metadata.get("help", ""),
             "choices": list(f.metadata.get("choices") or [])} for f in fields(cls)]


# --- key=value assignments (settings of the method or task type on the train command line) ---


def to_assignments(values: Mapping[str, Any]) -> list[str]:
    """`key=value` items, each value JSON so that parsing gives back its type."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def parse_assignments(items: Iterable[str], where: str) -> dict[str, Any]:
    """`key=value` items -> mapping; a value that is not JSON is kept as a string (`hier_attention=dense`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise PipelineError(f"{where}: expected key=value, got {item!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


# --- argparse flags per field, and the workflow's flags for a config section ---


def flag_name(name: str, renamed: Mapping[str, str] | None = None) -> str:
    """`--field-name`, or the flag `renamed` gives the field (a field whose plain flag the command uses otherwise)."""
    return (renamed or {}).get(name) or "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, title: str,
                  renamed: Mapping[str, str] | None = None) -> None:
    """One flag per field of `cls` (`--epochs`, `--no-x` for booleans), default and help from the field."""
    group = parser.add_argument_group(title)
    for f in fields(cls):
        kind, flag = _kind(f), flag_name(f.name, renamed)
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=f.metadata.get("help"))
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=f.default, choices=f.metadata.get("choices"),
                               help=f"{f.metadata.get('help', '')} (default {f.default})")


def from_args(cls: type[S], args: argparse.Namespace) -> S:
    """The instance of `cls` that `add_arguments`' flags describe."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def section_flags(section: Mapping[str, Any], cls: type, where: str, skip: Iterable[str] = (),
                  renamed: Mapping[str, str] | None = None) -> str:
    """Shell flags for a config section whose keys are fields of `cls` (checked: unknown keys refused), booleans as
    --x / --no-x; keys in `skip` belong to the job, not to `cls`."""
    values = {k: v for k, v in section.items() if k not in set(skip)}
    build(cls, values, where)
    flags: list[str] = []
    for key, value in values.items():
        flag = flag_name(key, renamed)
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag.removeprefix("--"))
        else:
            flags += [flag, str(value)]
    return " ".join(shlex.quote(f) for f in flags)
