"""Mean ± std over folds for every method of one task / backbone / shot count: results.csv and comparison.md.

Reads the methods' summary.csv files (one row per fold) and writes into --out-dir: results.csv (mean and
population std of the task type's metrics per method), comparison.csv and comparison.md (methods side by side).
"""

from __future__ import annotations

import argparse

NAME = "summarize"
HELP = "per-method summary.csv files of one run -> results.csv, comparison.csv/.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.training.tasks import list_task_types

    parser.add_argument("--summaries", nargs="+", required=True, help="summary.csv files, one per method")
    parser.add_argument("--task-type", default="classification", choices=list_task_types(), help="the task's type")
    parser.add_argument("--title", default="", help="title of comparison.md")
    parser.add_argument("--out-dir", required=True, help="models/{task}/{backbone}/{run}")


def run(args: argparse.Namespace) -> int:
    from pipeline.training.reports import summarize

    summarize(args.summaries, args.task_type, args.out_dir, args.title or args.out_dir)
    return 0
