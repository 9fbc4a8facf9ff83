"""Command line: one subcommand per stage, argument parsing only.

Each module in `pipeline/commands/` defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`;
the parser is assembled from them so a new stage needs no edit here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType
from typing import NoReturn, Sequence

import pipeline.commands
from pipeline import __version__, status
from pipeline.errors import PipelineError


class UsageError(Exception):
    """A command line that does not parse; carries the parser so its usage can be printed."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised (UsageError), so main can record the failure before exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def command_modules() -> list[ModuleType]:
    """Every stage command, sorted by name."""
    modules = [
        importlib.import_module(f"pipeline.commands.{info.name}")
        for info in pkgutil.iter_modules(pipeline.commands.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m pipeline",
        description="hive-wsi stages. Each subcommand runs one stage on one slide (or one cohort) "
        "and is what the Snakemake rules call.",
    )
    parser.add_argument("--version", action="version", version=f"hive-wsi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for module in command_modules():
        doc = (module.__doc__ or module.HELP).strip()
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def record_usage_error(argv: Sequence[str], message: str) -> None:
    """Write a failed status record for a per-slide command whose arguments did not parse, when its command
    module can recover the slide id and status folder from the command line (`status_target(argv)`)."""
    names = {m.NAME: m for m in command_modules()}
    for i, word in enumerate(argv):
        if word in names:
            target_of = getattr(names[word], "status_target", None)
            target = target_of(list(argv[i + 1 :])) if target_of else None
            if target is not None:
                status.record(target.status_dir, target.stage, target.slide, False, f"invalid arguments: {message}")
            return


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the stage; an expected error is printed once, to stderr, without traceback."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # pandas loads it (via scikit-survival): no thread notes
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        record_usage_error(argv, err.message)
        err.parser.print_usage(sys.stderr)
        print(f"{err.parser.prog}: error: {err.message}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        return int(args._run(args) or 0)
    except PipelineError as err:
        # printed, not logged: under the stderr log handler both would show the message twice in a job's log
        print(f"error: {err}", file=sys.stderr)
        return 1
