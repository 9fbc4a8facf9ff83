"""The reports stage: every case of the cohort sheet gets its pathology report as plain text.

--source gdc finds each case's open "Pathology Report" PDFs on the GDC, downloads them with the verified downloader
(kept in --pdf-dir, not fetched again when right) and reads their text layer; csv and demo read a table
`case_id,text` (--table). Writes {case}.txt in --texts and the --index table (case_id,status,source,chars,reason,
text_file): status ok, none (no report in the source) or failed with the reason (e.g. a PDF without a text layer);
one case's failure never stops the others.
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
    parser.add_argument("--texts", required=True, help="folder receiving each case's {case}.txt")
    parser.add_argument("--index", required=True, help="the index table to write")
    parser.add_argument("--pdf-dir", default="", help="(gdc) folder keeping the downloaded report PDFs")
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.reports.collect import cohort_cases, collect_reports

    client = client_from_args(args) if args.source == "gdc" else None
    collect_reports(cases=cohort_cases(args.sheet), source=args.source, texts_dir=args.texts, index=args.index,
                    pdf_dir=args.pdf_dir or None, table=args.table or None, client=client)
    return 0
