"""Argument helpers shared by the per-slide stage commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, TypeVar

from pipeline import status
from pipeline.errors import PipelineError
from pipeline.slide import MppOverride, read_mpp_overrides

T = TypeVar("T")


def add_slide_arguments(parser: argparse.ArgumentParser, mpp_overrides: bool = True) -> None:
    """--slide, --slide-id, --status-dir and, for the stages that resolve mpp (segment, patch), the overrides;
    later stages read the mpp recorded at patching instead (mpp_overrides=False)."""
    parser.add_argument("--slide", required=True, help="path of the slide file")
    parser.add_argument("--slide-id", help="slide id (default: file name without extension)")
    if mpp_overrides:
        parser.add_argument("--mpp-overrides", default="",
                            help="CSV slide_id,mpp[,force] for slides without usable mpp")
        parser.add_argument("--mpp-override", type=float, help="this slide's mpp where its metadata has none usable")
        parser.add_argument("--mpp-override-force", action="store_true",
                            help="use --mpp-override even over metadata")
    parser.add_argument("--status-dir", default="", help="folder for ok/failed records (status/{stage}/{slide}.json)")


def slide_id(args: argparse.Namespace) -> str:
    return args.slide_id or Path(args.slide).stem


def overrides(args: argparse.Namespace) -> dict[str, MppOverride]:
    """Overrides from the CSV, with a single-slide --mpp-override taking precedence for this slide."""
    try:
        table = read_mpp_overrides(args.mpp_overrides)
    except (FileNotFoundError, ValueError) as err:
        raise PipelineError(str(err)) from err
    if args.mpp_override is not None:
        table[slide_id(args)] = MppOverride(args.mpp_override, args.mpp_override_force)
    return table


def run_recorded(stage: str, args: argparse.Namespace, work: Callable[[], T]) -> T:
    """Run a slide's stage, recording ok or the failure reason before the error propagates."""
    sid = slide_id(args)
    try:
        result = work()
    except PipelineError as err:
        status.record(args.status_dir, stage, sid, False, getattr(err, "reason", str(err)))
        raise
    except Exception as err:
        status.record(args.status_dir, stage, sid, False, f"{type(err).__name__}: {err}")
        raise
    status.record(args.status_dir, stage, sid, True)
    return result
