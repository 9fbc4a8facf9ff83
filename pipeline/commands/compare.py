"""One table per task: every method x backbone x shot count side by side, mean ± std over folds.

Reads the results.csv files of a task's runs and writes --out-csv and --out-md (models/{task}/comparison.*), in
the layout of HiVE-MIL's Table 1 (backbones x shot counts).
"""

from __future__ import annotations

import argparse

NAME = "compare"
HELP = "results.csv of every backbone and shot count of a task -> models/{task}/comparison.csv/.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.training.tasks import list_task_types

    parser.add_argument("--results", nargs="+", required=True, help="results.csv files of the task's runs")
    parser.add_argument("--task-type", default="classification", choices=list_task_types(), help="the task's type")
    parser.add_argument("--title", default="", help="title of the markdown table")
    parser.add_argument("--out-csv", required=True, help="comparison.csv")
    parser.add_argument("--out-md", required=True, help="comparison.md")


def run(args: argparse.Namespace) -> int:
    from pipeline.training.reports import compare
    from pipeline.training.tasks import get_task_type

    compare(args.results, get_task_type(args.task_type).metrics, args.out_csv, args.out_md, args.title or "comparison")
    return 0
