"""Validate a local cohort sheet against its folder of slides and write the normalized cohort sheet.

The sheet is a CSV with columns slide_id, case_id, label and optionally file (relative to the slides folder;
default: the one file named <slide_id>.svs/.tif/...), event and time_days (survival: 0/1 and days >= 0, both or
neither) and follow_up (a note). Every row is checked against workflow/schemas/sheet.schema.yaml, then the table:
duplicate slides, a file used twice, labels outside --labels, missing files. All problems are listed in one
message. The output has the columns slide_id,case_id,label,file,event,time_days,follow_up, sorted by slide id.
"""

from __future__ import annotations

import argparse

from pipeline.sheet import normalize_local_sheet

NAME = "local-sheet"
HELP = "validate a local slide sheet and write the normalized cohort sheet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True,
                        help="your CSV: slide_id,case_id,label[,file][,event,time_days][,follow_up]")
    parser.add_argument("--slides-dir", required=True, help="folder holding the slide files")
    parser.add_argument("--labels", nargs="*", default=None, help="allowed class labels (default: any)")
    parser.add_argument("--out", required=True, help="normalized cohort sheet to write (CSV)")
    parser.add_argument("--allow-missing-files", action="store_true",
                        help="keep rows whose slide file is not there (GDC: each download records its own status)")


def run(args: argparse.Namespace) -> int:
    normalize_local_sheet(
        args.sheet, args.slides_dir, args.out, labels=args.labels or None, allow_missing=args.allow_missing_files
    )
    return 0
