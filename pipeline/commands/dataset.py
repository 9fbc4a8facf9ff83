"""Build dataset.csv (case_id,slide_id,label,level0_mag: HiVE-MIL's columns; then event,time_days) from the sheet.

A slide is kept only if it is labelled (with one of --labels, when given), has a case id, no failed stage in
--status-dir, a patches file whose `level0_magnification` attribute is usable and with at least --min-patches 5x
patches (a slide without tissue has none), a 5x feature file and a hierarchical 5x-20x feature file. Every other
sheet row is written to --dropped with its real reason (the failed stage and its error, no tissue, too few patches). Per-slide files are matched to sheet rows by file name
(slide id = name without the extension). Fails if no slide is left.

The sheet's survival labels (event, time_days) are carried into dataset.csv, blank when unknown. With --survival
(the workflow passes it when a task has `type: survival`), kept slides without a usable label, or whose case's
slides disagree on it, also get a dropped row starting "survival tasks only:" and stay in dataset.csv.
"""

from __future__ import annotations

import argparse

from pipeline.dataset import write_dataset

NAME = "dataset"
HELP = "cohort sheet + per-slide files -> dataset.csv and dropped.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="cohort sheet CSV with columns slide_id,case_id,label")
    parser.add_argument("--patches", nargs="*", default=[], help="patches/{slide}.h5 files (level-0 magnification)")
    parser.add_argument("--features-5x", nargs="*", default=[], help="5x feature files, one per slide")
    parser.add_argument("--hierarchical", nargs="*", default=[], help="hierarchical 5x-20x feature files")
    parser.add_argument("--labels", nargs="*", default=[], help="allowed labels in label order (empty: any)")
    parser.add_argument("--status-dir", default="",
                        help="status records: a slide with a failed stage is dropped with that stage and reason")
    parser.add_argument("--min-patches", type=int, default=1,
                        help="5x patches a slide needs; a slide without tissue or with fewer is dropped (default: 1)")
    parser.add_argument("--survival", action="store_true",
                        help="a survival task is configured: list kept slides without a usable survival label too")
    parser.add_argument("--out", required=True, help="dataset.csv to write")
    parser.add_argument("--dropped", required=True, help="dropped.csv to write (slide_id,case_id,label,reason)")


def run(args: argparse.Namespace) -> int:
    write_dataset(
        args.sheet,
        args.patches,
        {"5x features": args.features_5x, "hierarchical features": args.hierarchical},
        args.out,
        args.dropped,
        labels=args.labels or None,
        status_dir=args.status_dir or None,
        min_patches=args.min_patches,
        survival=args.survival,
    )
    return 0
