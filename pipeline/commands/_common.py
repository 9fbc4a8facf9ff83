"""Argument helpers shared by the per-slide stage commands: slide ids, status records, mpp overrides."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from pipeline import status
from pipeline.errors import PipelineError
from pipeline.readers import DEFAULT_READER, READER_CHOICES
from pipeline.slide import MppOverride, read_mpp_overrides

T = TypeVar("T")


def check_slide_id(value: str) -> str:
    """`value` if it can name a slide's files (status/{stage}/{slide}.json, patches/{slide}.h5, ...), else an
    ArgumentTypeError saying why: no path separators, not empty, not '.'/'..', no leading dot."""
    problem = status.name_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(
            f"invalid slide id {value!r}: {problem}; a slide id names files inside the output folders"
        )
    return value


def add_slide_arguments(parser: argparse.ArgumentParser, mpp_overrides: bool = True) -> None:
    """--slide, --slide-id, --status-dir and, for the stages that resolve mpp (segment, patch), the overrides;
    later stages read the mpp recorded at patching instead (mpp_overrides=False)."""
    parser.add_argument("--slide", required=True, help="path of the slide file")
    parser.add_argument("--slide-id", type=check_slide_id, help="slide id (default: file name without extension)")
    add_reader_argument(parser)
    if mpp_overrides:
        parser.add_argument("--mpp-overrides", default="",
                            help="CSV slide_id,mpp[,force] for slides without usable mpp")
        parser.add_argument("--mpp-override", type=float, help="this slide's mpp where its metadata has none usable")
        parser.add_argument("--mpp-override-force", action="store_true",
                            help="use --mpp-override even over metadata")
    add_status_arguments(parser)


def add_reader_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reader", choices=READER_CHOICES, default=DEFAULT_READER,
                        help="slide reader; auto = the fastest that gives OpenSlide's pixels for the format")


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status-dir", default="", help="folder for ok/failed records (status/{stage}/{slide}.json)")


def slide_id(args: argparse.Namespace) -> str:
    """--slide-id, or the slide file's name without its extension (checked like --slide-id)."""
    if args.slide_id:
        return args.slide_id
    try:
        return check_slide_id(Path(args.slide).stem)
    except argparse.ArgumentTypeError as err:
        raise PipelineError(f"{err} (the name of {args.slide}); give --slide-id") from None


def overrides(args: argparse.Namespace) -> dict[str, MppOverride]:
    """Overrides from the CSV, with a single-slide --mpp-override taking precedence for this slide."""
    try:
        table = read_mpp_overrides(args.mpp_overrides)
    except (FileNotFoundError, ValueError) as err:
        raise PipelineError(str(err)) from err
    if args.mpp_override is not None:
        table[slide_id(args)] = MppOverride(args.mpp_override, args.mpp_override_force)
    return table


def run_recorded(stage: str, args: argparse.Namespace, work: Callable[[], T], slide: str | None = None) -> T:
    """Run a slide's stage, recording ok or the failure reason before the error propagates."""
    sid = slide or slide_id(args)
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


class _LenientParser(argparse.ArgumentParser):
    """A parser that raises ValueError instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise ValueError(message)


@dataclass(frozen=True)
class StatusTarget:
    """Where a command's status record goes: status_dir/stage/slide.json."""

    status_dir: str
    stage: str
    slide: str


def recover_status_target(
    argv: Sequence[str],
    stage: str,
    id_flag: str = "--slide-id",
    path_flag: str | None = "--slide",
    stage_flag: str | None = None,
) -> StatusTarget | None:
    """The status record a command line names, read leniently from a command line that failed to parse.

    The slide id is `id_flag`'s value, else the stem of `path_flag`'s value; None when no status folder or no
    valid slide id can be recovered (a record is never written under an id that is not a plain name).
    """
    lenient = _LenientParser(add_help=False, allow_abbrev=False)
    lenient.add_argument("--status-dir", default="")
    lenient.add_argument(id_flag, dest="slide_id", default="")
    if path_flag:
        lenient.add_argument(path_flag, dest="slide_path", default="")
    if stage_flag:
        lenient.add_argument(stage_flag, dest="stage", default=stage)
    try:
        known, _ = lenient.parse_known_args(list(argv))
    except ValueError:
        return None
    sid = known.slide_id or (Path(known.slide_path).stem if path_flag and known.slide_path else "")
    try:
        check_slide_id(sid)
        check_slide_id(getattr(known, "stage", stage))
    except argparse.ArgumentTypeError:
        return None
    if not known.status_dir:
        return None
    return StatusTarget(known.status_dir, getattr(known, "stage", stage), sid)
