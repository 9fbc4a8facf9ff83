"""Mean ± std over folds for every method of one task / backbone / run: the results and comparison tables.

Reads the methods' summary.csv files (one row per fold) and writes exactly the files it is given: --results (mean
and population std of the task type's metrics per method), --comparison and --comparison-csv (methods side by
side, markdown and CSV) and --summary (every method's per-fold rows in one table).
"""

from __future__ import annotations

import argparse

NAME = "summarize"
HELP = "per-method summary.csv files of one run -> results, comparison (.md and .csv) and joined summary tables"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.training.tasks import list_task_types

    parser.add_argument("--summaries", nargs="+", required=True, help="summary.csv files, one per method")
    parser.add_argument("--task-type", default="classification", choices=list_task_types(), help="the task's type")
    parser.add_argument("--title", default="", help="title of the markdown comparison")
    parser.add_argument("--results", required=True, help="results table to write (mean and std per method)")
    parser.add_argument("--comparison", required=True, help="markdown comparison to write")
    parser.add_argument("--comparison-csv", required=True, help="the comparison as CSV, to write")
    parser.add_argument("--summary", required=True, help="every method's per-fold rows, to write")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.training.reports import SummaryOutputs, write_summary
    from pipeline.training.tasks import get_task_type

    outputs = SummaryOutputs(Path(args.results), Path(args.comparison), Path(args.comparison_csv), Path(args.summary))
    write_summary(args.summaries, get_task_type(args.task_type).metrics, outputs,
                  args.title or str(outputs.results.parent))
    return 0
