"""Write patient-level, stratified, seeded few-shot splits: {out-dir}/{task}_{shots}/splits_{k}.csv.

Each fold draws whole cases per class into test (test-frac of the class's slides, at least one) and validation
(val-frac), the rest is the training partition; the few-shot training set takes `shots` slides per class from it.
Columns train,val,test as HiVE-MIL reads them; a splits_meta.json beside them records seed, fractions and counts.
With --import-from, existing split files in that format ({dir}/{task}_{shots}/splits_{k}.csv, or HiVE-MIL's
{dir}/{task}/{task}_{shots}/...) are checked against the dataset and copied instead of drawing new ones.
"""

from __future__ import annotations

import argparse

from pipeline.labels import parse_tree_args
from pipeline.splits import DEFAULT_SHOTS, import_splits, make_splits

NAME = "splits"
HELP = "dataset.csv -> k-fold few-shot splits in HiVE-MIL's format (or check and import existing ones)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset.csv (case_id,slide_id,label[,level0_mag])")
    parser.add_argument("--out-dir", required=True, help="splits folder; files go to {task}_{shots}/splits_{k}.csv")
    parser.add_argument("--task", required=True, help="task name used in the folder names, e.g. tcga_nsclc")
    parser.add_argument("--shots", type=int, nargs="+", default=list(DEFAULT_SHOTS), help="slides per class")
    parser.add_argument("--folds", type=int, default=5, help="number of folds k (default 5)")
    parser.add_argument("--val-frac", type=float, default=0.2, help="validation share of each class's slides")
    parser.add_argument("--test-frac", type=float, default=0.2, help="test share of each class's slides")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random draw (recorded in the JSON)")
    parser.add_argument("--labels", nargs="*", default=[], help="label order (empty: sorted dataset labels)")
    parser.add_argument("--import-from", nargs="?", const="", default="",
                        help="folder of existing split files to check and import (empty: draw new splits)")
    parser.add_argument("--ignore-other-labels", action="store_true",
                        help="leave out slides whose label is not in --labels (they belong to another task)")
    parser.add_argument("--label-tree", nargs="*", default=[], metavar="COARSE=FINE,FINE",
                        help="stratify by coarse class: sheet labels are fine labels of this tree (classification "
                        "over the coarse level)")
    parser.add_argument("--allow-case-overlap", action="store_true",
                        help="import splits even if a case has slides in two partitions (logged)")


def run(args: argparse.Namespace) -> int:
    labels = args.labels or None
    tree = parse_tree_args(args.label_tree)
    other = "ignore" if args.ignore_other_labels else "error"
    if args.import_from:
        import_splits(args.import_from, args.dataset, args.out_dir, args.task, args.shots, args.folds, labels,
                      args.allow_case_overlap, other_labels=other, label_tree=tree)
    else:
        make_splits(args.dataset, args.out_dir, args.task, args.shots, args.folds, args.val_frac, args.test_frac,
                    args.seed, labels, other_labels=other, label_tree=tree)
    return 0
