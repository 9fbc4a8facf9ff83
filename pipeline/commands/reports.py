"""The reports stage: every case of the cohort sheet gets its pathology report as plain text.

--source gdc finds each case's open "Pathology Report" PDFs on the GDC, downloads them with the verified downloader
(kept under --out-dir/pdf/, not fetched again when right) and reads their text layer; csv and demo read a table
`case_id,text` (--table). Writes --out-dir/{case}.txt and --index (case_id,status,source,chars,reason,text_file):
status ok, none (no report in the source) or failed with the reason (e.g. a PDF without a text layer); one case's
failure never stops the others.
"""

from __future__ import annotations

import argparse

from pipeline.commands._gdc_args import add_client_arguments, client_from_args
from pipeline.reports.collect import SOURCES

NAME = "reports"
HELP = "each case's pathology report as text (GDC PDFs or a case_id,text table), cached per case"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, choices=SOURCES, help="where the reports come from")
    parser.add_argument("--sheet", required=True, help="the cohort sheet (its case_id column lists the cases)")
    parser.add_argument("--table", default="", help="(csv, demo) the reports table case_id,text")
    parser.add_argument("--out-dir", required=True, help="folder of the per-case texts (reports/)")
    parser.add_argument("--index", required=True, help="the index table to write (reports/index.csv)")
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.reports.collect import cohort_cases, collect_reports

    client = client_from_args(args) if args.source == "gdc" else None
    collect_reports(cases=cohort_cases(args.sheet), source=args.source, out_dir=args.out_dir, index=args.index,
                    table=args.table or None, client=client)
    return 0
