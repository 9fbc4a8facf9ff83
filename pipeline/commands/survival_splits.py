"""Write k-fold patient-level survival cross-validation splits: --out (fold k = the k-th file) and --meta.

The survival labels are dataset.csv's `event` (1 = death observed, 0 = censored) and `time_days` columns, one row
per patient as pipeline.dataset.survival_table makes them (the survival task reads the same table; dataset.csv's
dropped.csv names the slides left out). Cases are stratified by
(time bin, event) with --bins bins at the quartiles of the uncensored times; fold k tests its cases and trains on
the rest, there is no validation set. The split files list CASE ids (columns train,val,test; val empty), not slide
ids as the classification splits do (the meta says "unit": "case"). --labels keeps only the slides of those labels.
By hand, --out-dir writes {out-dir}/splits_{k}.csv and splits_meta.json instead of --out and --meta.
"""

from __future__ import annotations

import argparse
import logging

from pipeline.commands.splits import add_output_arguments, explicit_outputs
from pipeline.dataset import CohortError, read_dataset, survival_table
from pipeline.splits import SplitOutputs
from pipeline.survival.splits import write_cv_splits

NAME = "survival-splits"
HELP = "dataset.csv with event,time_days -> k-fold patient-level survival splits (case ids) and their meta"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset.csv (case_id,slide_id,label,...,event,time_days)")
    add_output_arguments(parser, "splits_{k}.csv and splits_meta.json")
    parser.add_argument("--folds", type=int, default=5, help="number of folds k (default 5; with --out, its count)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fold draw (recorded in the JSON)")
    parser.add_argument("--bins", type=int, default=4, help="time bins for stratification (default 4)")
    parser.add_argument("--labels", nargs="*", default=[], help="keep only slides of these labels (empty: all)")


def run(args: argparse.Namespace) -> int:
    outputs = explicit_outputs(args) or SplitOutputs.in_folder(args.out_dir, args.folds)
    labels = [lab for lab in args.labels if lab.strip()]  # a rule's empty label list may arrive as ''
    dataset = read_dataset(args.dataset)
    if labels:
        dataset = dataset[dataset["label"].isin(labels)].reset_index(drop=True)
    survival = survival_table(dataset)
    if survival.empty:
        raise CohortError(f"dataset {args.dataset}: no case with event and time_days"
                          + (f" among labels {labels}" if labels else ""))
    write_cv_splits(survival, outputs, seed=args.seed, n_bins=args.bins, dataset_csv=args.dataset)
    return 0
