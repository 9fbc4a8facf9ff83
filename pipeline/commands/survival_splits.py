"""Write k-fold patient-level survival cross-validation splits: {out-dir}/splits_{k}.csv and splits_meta.json.

The survival labels are dataset.csv's `event` (1 = death observed, 0 = censored) and `time_days` columns; slides
with either blank are left out, and every case needs one value of each across its slides. Cases are stratified by
(time bin, event) with --bins bins at the quartiles of the uncensored times; fold k tests its cases and trains on
the rest, there is no validation set. The split files list CASE ids (columns train,val,test; val empty), not slide
ids as the classification splits do (the meta says "unit": "case"). --labels keeps only the slides of those labels.
"""

from __future__ import annotations

import argparse
import logging
import math

import pandas as pd

from pipeline.dataset import CohortError, read_dataset
from pipeline.survival.splits import write_cv_splits

NAME = "survival-splits"
HELP = "dataset.csv with event,time_days -> k-fold patient-level survival splits (case ids) and their meta"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset.csv (case_id,slide_id,label,...,event,time_days)")
    parser.add_argument("--out-dir", required=True, help="folder for splits_{k}.csv and splits_meta.json")
    parser.add_argument("--folds", type=int, default=5, help="number of folds k (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fold draw (recorded in the JSON)")
    parser.add_argument("--bins", type=int, default=4, help="time bins for stratification (default 4)")
    parser.add_argument("--labels", nargs="*", default=[], help="keep only slides of these labels (empty: all)")


def _number(value: str, slide: str, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise CohortError(f"slide '{slide}': {column} {value!r} is not a number") from None


# TODO: use pipeline.dataset.survival_table (being added on another branch; same contract)
def _survival_table(dataset: pd.DataFrame) -> pd.DataFrame:
    """One row per case with survival labels: case_id, event (int 0/1), time_days (float), slides (sorted slide
    ids). Slides with a blank event or time_days are left out; a case whose slides disagree is an error."""
    for column in ("event", "time_days"):
        if column not in dataset.columns:
            raise CohortError(f"dataset has no '{column}' column (survival labels); has {list(dataset.columns)}")
    event = dataset["event"].astype(str).str.strip()
    time = dataset["time_days"].astype(str).str.strip()
    known = (event != "") & (time != "")
    if (~known).any():
        log.info("%d slide(s) without event or time_days are left out", int((~known).sum()))
    rows = []
    labelled = dataset[known].assign(event=event[known], time_days=time[known])
    for case, group in labelled.groupby("case_id", sort=True):
        values = set()
        for slide, ev, days in zip(group["slide_id"], group["event"], group["time_days"]):
            e, t = _number(ev, slide, "event"), _number(days, slide, "time_days")
            if e not in (0.0, 1.0):
                raise CohortError(f"slide '{slide}': event must be 0 or 1, got {ev!r}")
            if not (math.isfinite(t) and t >= 0):
                raise CohortError(f"slide '{slide}': time_days must be a finite number >= 0, got {days!r}")
            values.add((int(e), t))
        if len(values) > 1:
            raise CohortError(f"case '{case}': its slides disagree on (event, time_days): {sorted(values)}")
        [(e, t)] = values
        rows.append({"case_id": case, "event": e, "time_days": t, "slides": sorted(group["slide_id"])})
    table = pd.DataFrame(rows, columns=["case_id", "event", "time_days", "slides"])
    return table.astype({"event": int, "time_days": float})


def run(args: argparse.Namespace) -> int:
    labels = [lab for lab in args.labels if lab.strip()]  # a rule's empty label list may arrive as ''
    dataset = read_dataset(args.dataset)
    if labels:
        dataset = dataset[dataset["label"].isin(labels)].reset_index(drop=True)
    survival = _survival_table(dataset)
    if survival.empty:
        raise CohortError(f"dataset {args.dataset}: no case with event and time_days"
                          + (f" among labels {labels}" if labels else ""))
    write_cv_splits(survival, args.out_dir, folds=args.folds, seed=args.seed, n_bins=args.bins,
                    dataset_csv=args.dataset)
    return 0
