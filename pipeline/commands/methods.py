"""List the registered training methods with the task types they support, what they read, and one line on each;
`--settings NAME` prints a method's (or a task type's) own settings with their defaults and help.

Names listed here are the valid values of --method and of the config key tasks[].methods; settings are set in
config.yaml under `train.method_settings.<method>` (a task type's under the task's `settings:`).
"""

from __future__ import annotations

import argparse

NAME = "methods"
HELP = "list the registered training methods and task types"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--names", action="store_true", help="print only the method names, one per line")
    parser.add_argument("--settings", metavar="NAME", default="",
                        help="print the settings of method (or task type) NAME: key, default, help")


def run(args: argparse.Namespace) -> int:
    from pipeline.training.methods import get_method, list_methods
    from pipeline.training.tasks import list_task_types

    if args.settings:
        print(settings_table(args.settings))
        return 0
    for name in list_methods():
        cls = get_method(name)
        if args.names:
            print(name)
            continue
        print(f"{name}\n  {cls.summary}\n  task types: {', '.join(cls.task_types)}\n"
              f"  reads: {', '.join(sorted(cls.inputs))}")
    if not args.names:
        print(f"task types: {', '.join(list_task_types())}")
    return 0


def settings_table(name: str) -> str:
    """A markdown table of a method's or a task type's settings (the docs' tables are checked against it)."""
    from pipeline.settings import describe
    from pipeline.training.methods import METHODS, get_method
    from pipeline.training.tasks import get_task_type

    cls = get_method(name) if name in METHODS else get_task_type(name)
    where = f"train.method_settings.{name}" if name in METHODS else f"tasks[].settings of a {name} task"
    rows = [f"| `{s['name']}` | `{s['default']}` | {s['help']}"
            + (f" (one of {', '.join(map(str, s['choices']))})" if s["choices"] else "") + " |"
            for s in describe(cls.Settings)]
    head = [f"Settings of {name} (config.yaml: {where})", "", "| key | default | what it sets |", "|---|---|---|"]
    return "\n".join(head + (rows or ["| (none) | | |"]))
