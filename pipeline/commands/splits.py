"""Write patient-level, stratified, seeded few-shot splits in HiVE-MIL's `splits_{k}.csv` format.

Each fold draws whole cases per class into test (test-frac of the class's slides, at least one) and validation
(val-frac), the rest is the training partition; the few-shot training set takes `shots` slides per class from it.
Columns train,val,test as HiVE-MIL reads them; a meta JSON records seed, fractions and counts.

Where the files go: --out (one file per fold, fold k = the k-th path) and --meta for a single shot count, as the
workflow names them; or, by hand, --out-dir for every --shots count in HiVE-MIL's layout
({out-dir}/{task}_{shots}/splits_{k}.csv and splits_meta.json). With --import-from, existing split files in that
format ({dir}/{task}_{shots}/splits_{k}.csv, or HiVE-MIL's {dir}/{task}/{task}_{shots}/...) are checked against the
dataset and copied instead of drawing new ones.
"""

from __future__ import annotations

import argparse

from pipeline.errors import PipelineError
from pipeline.labels import parse_tree_args
from pipeline.splits import DEFAULT_SHOTS, SplitOutputs, folder_outputs, import_splits, make_splits

NAME = "splits"
HELP = "dataset.csv -> k-fold few-shot splits in HiVE-MIL's format (or check and import existing ones)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset.csv (case_id,slide_id,label[,level0_mag])")
    add_output_arguments(parser, "{task}_{shots}/splits_{k}.csv and splits_meta.json for every --shots")
    parser.add_argument("--task", required=True, help="task name (the meta, and --out-dir's folder names)")
    parser.add_argument("--shots", type=int, nargs="+", default=list(DEFAULT_SHOTS),
                        help="slides per class (one count with --out)")
    parser.add_argument("--folds", type=int, default=5, help="number of folds k (default 5; with --out, its count)")
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


def add_output_arguments(parser: argparse.ArgumentParser, out_dir_help: str) -> None:
    """--out and --meta (explicit files, the workflow's way) or --out-dir (HiVE-MIL's names, by hand); shared with
    survival-splits."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", nargs="+", metavar="SPLIT_CSV", help="the split files to write, fold k = k-th path")
    where.add_argument("--out-dir", help=f"folder receiving {out_dir_help}")
    parser.add_argument("--meta", help="with --out: the meta JSON to write")


def explicit_outputs(args: argparse.Namespace) -> SplitOutputs | None:
    """--out/--meta as SplitOutputs (None with --out-dir), checked against --folds."""
    if args.out is None:
        if args.meta:
            raise PipelineError("--meta goes with --out (--out-dir names the meta file itself)")
        return None
    if not args.meta:
        raise PipelineError("--out needs --meta, the meta JSON to write beside the split files")
    if len(args.out) != args.folds:
        raise PipelineError(f"--folds {args.folds} but {len(args.out)} --out file(s): one file per fold")
    return SplitOutputs.of(args.out, args.meta)


def run(args: argparse.Namespace) -> int:
    labels = args.labels or None
    tree = parse_tree_args(args.label_tree)
    other = "ignore" if args.ignore_other_labels else "error"
    files = explicit_outputs(args)
    if files is not None and len(args.shots) != 1:
        raise PipelineError(f"--out names the files of one shot count; got --shots {args.shots} (use --out-dir)")
    outputs = {args.shots[0]: files} if files else folder_outputs(args.out_dir, args.task, args.shots, args.folds)
    if args.import_from:
        import_splits(args.import_from, args.dataset, outputs, args.task, labels, args.allow_case_overlap,
                      other_labels=other, label_tree=tree)
    else:
        make_splits(args.dataset, outputs, args.task, args.val_frac, args.test_frac, args.seed, labels,
                    other_labels=other, label_tree=tree)
    return 0
