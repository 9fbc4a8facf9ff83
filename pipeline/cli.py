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

import pipeline.commands
from pipeline import __version__
from pipeline.errors import PipelineError


def command_modules() -> list[ModuleType]:
    """Every stage command, sorted by name."""
    modules = [
        importlib.import_module(f"pipeline.commands.{info.name}")
        for info in pkgutil.iter_modules(pipeline.commands.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except PipelineError as err:
        logging.getLogger("pipeline").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 1
