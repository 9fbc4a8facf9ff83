"""List the registered training methods with the task types they support, what they read, and one line on each.

Names listed here are the valid values of --method and of the config key tasks[].methods.
"""

from __future__ import annotations

import argparse

NAME = "methods"
HELP = "list the registered training methods and task types"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--names", action="store_true", help="print only the method names, one per line")


def run(args: argparse.Namespace) -> int:
    from pipeline.training.registry import get_method, list_methods, list_task_types

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
