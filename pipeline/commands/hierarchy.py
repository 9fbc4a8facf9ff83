"""Link one slide's 20x features to its 5x parents by level-0 coordinates.

Writes HiVE-MIL's hierarchical layout plus a mask: `features` [N,16,D], `coords` [N,16,2], `mask` [N,16], row i
= row i of the 5x file, children in row-major slot order of the parent's 4x4 block. Features made elsewhere
(HiVE-MIL downloads, TRIDENT, CLAM) work too: files without size attrs need --level0-mag (40 -> 5x patches of
2048 px at level 0, 20 -> 1024 px).

A JSON report lists every consistency check (child inside parent, <= 16 children and one per slot, one parent
per child, no duplicate coordinates, feature rows = coords rows, row order) and counts orphans and childless
parents. A failed check writes the report, no hierarchical file, and exits 1 naming the check and the report.
The inputs are only read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands._common import StatusTarget, check_slide_id, recover_status_target, run_recorded
from pipeline.errors import PipelineError
from pipeline.hierarchy import MISALIGNED_MODES, build_hierarchical

NAME = "hierarchy"
HELP = "coordinate-linked 5x->20x hierarchical features of one slide, with a consistency report"


def status_target(argv: list[str]) -> StatusTarget | None:
    """Where a command line that does not parse records its failure."""
    return recover_status_target(argv, "hierarchy", path_flag="--features-5x", stage_flag="--status-stage")


def slide_id_of(features_5x: Path) -> str:
    """The default slide id: the 5x feature file's name without extension, checked like --slide-id."""
    try:
        return check_slide_id(features_5x.stem)
    except argparse.ArgumentTypeError as err:
        raise PipelineError(f"{err} (the name of {features_5x}); give --slide-id") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features-5x", type=Path, required=True, help="5x features h5 (features, coords)")
    parser.add_argument("--features-20x", type=Path, required=True, help="20x features h5 (features, coords)")
    parser.add_argument("--out", type=Path, required=True, help="hierarchical h5 to write")
    parser.add_argument("--report", type=Path, required=True, help="JSON consistency report to write")
    parser.add_argument(
        "--level0-mag",
        type=float,
        default=None,
        help="slide's level-0 magnification (e.g. 40 or 20); needed only when the files carry no size attrs, "
        "and checked against them when they do",
    )
    parser.add_argument(
        "--misaligned",
        choices=MISALIGNED_MODES,
        default="fail",
        help="20x patches not at an exact slot offset: fail, or keep the nearest child per slot (default: fail)",
    )
    parser.add_argument("--seed", type=int, default=0, help="tie-break seed for --misaligned nearest (default: 0)")
    parser.add_argument("--slide-id", type=check_slide_id, default=None,
                        help="slide id for messages and the status record (default: the 5x file's stem)")
    parser.add_argument("--status-dir", default="", help="folder for ok/failed records (status/{stage}/{slide}.json)")
    parser.add_argument(
        "--status-stage", type=check_slide_id, default="hierarchy", help="stage name of the status record, e.g. hierarchy_plip per backbone"
    )


def run(args: argparse.Namespace) -> int:
    slide = args.slide_id or slide_id_of(args.features_5x)
    report = run_recorded(
        args.status_stage,
        args,
        lambda: build_hierarchical(
            args.features_5x,
            args.features_20x,
            args.out,
            args.report,
            level0_mag=args.level0_mag,
            misaligned=args.misaligned,
            seed=args.seed,
            slide=slide,
        ),
        slide=slide,
    )
    counts = report["counts"]
    print(
        f"{report['slide']}: {counts['linked']}/{counts['children']} children linked to {counts['parents']} parents, "
        f"{counts['orphans']} orphans, {counts['empty_parents']} empty parents -> {args.out}"
    )
    return 0
