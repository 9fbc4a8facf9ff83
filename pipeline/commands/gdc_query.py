"""Query the GDC for a TCGA task and write manifest.tsv (gdc-client format) and a labelled cohort sheet.

Asks POST /files for the diagnostic SVS slides of the task's projects (all pages, sorted by file id), labels
each file (NSCLC and RCC by project, BRCA by primary diagnosis: IDC/ILC, other diagnoses left out and counted),
keeps at most --max-slides-per-class per class (first by slide id), and writes:
  manifest.tsv  id filename md5 size state   (feed it to gdc-client or to gdc-download)
  cohort.csv    file_id,slide_id,case_id,project,primary_diagnosis,label
With --manifest, a gdc-client manifest you made (e.g. on the GDC portal) replaces the search; its files are
looked up by id only to read their case, project and diagnosis.
"""

from __future__ import annotations

import argparse

from pipeline.commands._gdc_args import add_client_arguments, client_from_args
from pipeline.gdc.presets import PRESETS, get_preset
from pipeline.gdc.query import run_query

NAME = "gdc-query"
HELP = "query the GDC for a TCGA task: manifest.tsv + labelled cohort sheet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=sorted(PRESETS), help="TCGA task preset")
    parser.add_argument("--projects", nargs="*", default=[], help="narrow the preset to some of its projects")
    parser.add_argument("--max-slides-per-class", type=int, default=0, help="keep at most N slides per class (0 = all)")
    parser.add_argument("--manifest", default="", help="your own gdc-client manifest instead of a query")
    parser.add_argument("--page-size", type=int, default=500, help="hits per /files page (default: %(default)s)")
    parser.add_argument("--out-manifest", required=True, help="manifest.tsv to write")
    parser.add_argument("--out-cohort", required=True, help="cohort sheet (CSV) to write")
    parser.add_argument("--out-summary", default="", help="JSON summary: counts per class and left-out reasons")
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    run_query(
        client_from_args(args),
        get_preset(args.task, args.projects),
        out_manifest=args.out_manifest,
        out_cohort=args.out_cohort,
        out_summary=args.out_summary or None,
        max_per_class=args.max_slides_per_class,
        user_manifest=args.manifest or None,
        page_size=args.page_size,
    )
    return 0
