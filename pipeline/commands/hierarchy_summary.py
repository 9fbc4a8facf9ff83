"""Sum per-slide hierarchy reports into one cohort table.

One CSV row per report (slide, status, failed check, counts of parents, children, linked children, orphans,
empty parents, misaligned and dropped children) and a final TOTAL row with the sums.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.hierarchy import summarise_reports

NAME = "hierarchy-summary"
HELP = "cohort table (CSV) summing the per-slide hierarchy reports"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports", type=Path, nargs="+", required=True, help="per-slide JSON reports")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")


def run(args: argparse.Namespace) -> int:
    table = summarise_reports(args.reports, args.out)
    print(f"{len(table) - 1} slide report(s) -> {args.out}: {table.iloc[-1]['status']}")
    return 0
