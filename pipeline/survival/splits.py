"""k-fold patient-level cross-validation for survival, stratified by time bin and event (MCAT's protocol).

Every patient is tested exactly once: fold k tests its own patients and trains on the others'; there is no
validation set (MCAT trains a fixed number of epochs and reports on the held-out fold). Folds are drawn by
scikit-learn's `StratifiedKFold(folds, shuffle=True, random_state=seed)` over the cases listed by stratum and id
(input order does not matter), stratified by the combined (time bin, event) key, 2 * n_bins strata, with the cohort's bins of
`pipeline.survival.bins`.

Rare strata. A stratum with fewer patients than folds cannot reach every fold (scikit-learn warns, and puts its
patients in folds fixed by its position rather than by the seed), so:
1. within each event status, a rare time-bin stratum joins its neighbouring bin of the same status (the smaller
   neighbour; ties: the earlier bin), until each stratum has >= folds patients or the status is one stratum. The
   event status is never mixed: it is what keeps deaths in every test fold (the C-index needs them). Merging a
   handful of censored patients into the deaths' stratum, say, could leave a small test fold with censored
   patients only;
2. an event status with fewer patients than folds in all is one stratum of its own: it cannot reach every fold
   anyway, and as one stratum scikit-learn puts its patients in different folds. This is the only stratum that can
   stay smaller than folds; scikit-learn's warning about it is expected and silenced;
3. if both statuses are smaller than folds, the cohort is one stratum (scikit-learn refuses to stratify when every
   stratum is smaller than folds) and deaths fall in the folds at random.
Otherwise the cases go to scikit-learn listed by stratum, censored strata first, then the deaths' strata; it deals
the strata round-robin over the folds in that order, so each test fold's death count is within one of the
others': with >= folds deaths, every test fold has at least one.

The split files list CASE ids (column train / val / test, val empty), not slide ids as the classification splits
do; their meta JSON says so with `"unit": "case"`.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline import __version__
from pipeline.formats import PathLike, write_json_atomic
from pipeline.splits import Split, SplitError, SplitOutputs, write_split_csv
from pipeline.survival.bins import assign_bins, check_labels, time_bin_edges

log = logging.getLogger(__name__)

SURVIVAL_COLUMNS = ("case_id", "event", "time_days")


def _merge_within(cells: list[list[int]], sizes: dict[int, int], folds: int) -> list[list[int]]:
    """Merge runs of adjacent time bins (one event status) until every run has >= folds patients or one is left."""
    groups = [list(c) for c in cells]
    total = lambda g: sum(sizes[b] for b in g)  # noqa: E731
    while len(groups) > 1:
        rare = [i for i, g in enumerate(groups) if total(g) < folds]
        if not rare:
            break
        i = min(rare, key=lambda j: (total(groups[j]), j))
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(groups)]
        j = min(neighbours, key=lambda k: (total(groups[k]), k))
        lo, hi = sorted((i, j))
        groups[lo : hi + 1] = [groups[lo] + groups[hi]]
    return groups


def survival_strata(bins: np.ndarray, event: np.ndarray, folds: int) -> tuple[np.ndarray, list[list[str]]]:
    """Stratum index per patient from (time bin, event), rare strata merged as the module docstring says; also the
    strata as lists of their cells ("bin{b}/event{e}"), for the meta file. Strata are numbered censored first, then
    by time bin."""
    bins = np.asarray(bins, dtype=int)
    event = np.asarray(event, dtype=int)
    counts = {e: int((event == e).sum()) for e in (0, 1)}
    present = [e for e in (0, 1) if counts[e]]
    groups: list[list[tuple[int, int]]] = []
    if len(present) == 2 and all(counts[e] < folds for e in present):
        groups = [sorted({(int(b), int(e)) for b, e in zip(bins, event)})]  # step 3: one stratum
    else:
        for e in present:
            cells = sorted(int(b) for b in np.unique(bins[event == e]))
            if counts[e] < folds:  # step 2: the small status is one stratum
                groups.append([(b, e) for b in cells])
                continue
            sizes = {b: int(((bins == b) & (event == e)).sum()) for b in cells}
            groups += [[(b, e) for b in run] for run in _merge_within([[b] for b in cells], sizes, folds)]  # step 1
    stratum_of = {cell: s for s, group in enumerate(groups) for cell in group}
    strata = np.array([stratum_of[(int(b), int(e))] for b, e in zip(bins, event)], dtype=int)
    names = [[f"bin{b}/event{e}" for b, e in group] for group in groups]
    return strata, names


def cv_folds(
    cases: Sequence[str], time: np.ndarray, event: np.ndarray, n_bins: int = 4, folds: int = 5, seed: int = 1
) -> list[tuple[list[str], list[str]]]:
    """(train, test) case ids of each fold, both sorted: every case is tested in exactly one fold and trains in the
    others. Stratified by (time bin, event) with rare strata merged (module docstring); seeded and independent of
    the input order. Raises SplitError with fewer cases than folds or repeated case ids."""
    from sklearn.model_selection import StratifiedKFold

    cases = [str(c) for c in cases]
    time, event = check_labels(time, event)
    if len(cases) != time.size:
        raise SplitError(f"{len(cases)} cases but {time.size} survival labels")
    dup = sorted(c for c, n in Counter(cases).items() if n > 1)
    if dup:
        raise SplitError(f"case id(s) listed more than once: {dup[:5]}")
    if folds < 2:
        raise SplitError(f"cross-validation needs at least 2 folds, got {folds}")
    if len(cases) < folds:
        raise SplitError(f"{len(cases)} case(s) cannot make {folds} folds; lower the number of folds")
    order = np.argsort(np.array(cases, dtype=object), kind="stable")
    ids = np.array(cases, dtype=object)[order]
    time, event = time[order], event[order]
    strata, _ = survival_strata(assign_bins(time, time_bin_edges(time, event, n_bins)), event, folds)
    # scikit-learn numbers strata in order of first appearance and deals each stratum's share round-robin in that
    # order; listing the cases by stratum (then id) makes that order ours, censored strata first, then deaths
    by_stratum = np.argsort(strata, kind="stable")
    ids, strata = ids[by_stratum], strata[by_stratum]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # step 2 of the module docstring: an event status with fewer patients than folds is a stratum on purpose
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        parts = list(splitter.split(np.zeros((ids.size, 1)), strata))
    return [(sorted(ids[train].tolist()), sorted(ids[test].tolist())) for train, test in parts]


def _sha256(path: PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _counts(cases: Sequence[str], events: dict[str, int]) -> dict[str, int]:
    return {"cases": len(cases), "events": int(sum(events[c] for c in cases))}


def write_cv_splits(
    survival: pd.DataFrame,
    outputs: SplitOutputs,
    seed: int = 1,
    n_bins: int = 4,
    dataset_csv: PathLike | None = None,
) -> list[Path]:
    """Write fold k's split to `outputs.splits[k]` (one fold per file given; columns train,val,test of CASE ids,
    val empty; the layout of `pipeline.splits.write_split_csv`) and the meta JSON to `outputs.meta`; returns the
    paths written.

    `survival` has one row per case: case_id, event (0/1), time_days. The meta records folds, seed, bins and their
    edges, the strata after merging, per-fold case and event counts, the dataset's sha256 (when `dataset_csv` is
    given) and `"unit": "case"`. A test fold without a death is logged as a warning and listed in the meta.
    """
    folds = len(outputs.splits)
    missing = [c for c in SURVIVAL_COLUMNS if c not in survival.columns]
    if missing:
        raise SplitError(f"survival table: missing column(s) {missing}; has {list(survival.columns)}")
    cases = [str(c) for c in survival["case_id"]]
    time, event = check_labels(survival["time_days"].to_numpy(), survival["event"].to_numpy())
    fold_list = cv_folds(cases, time, event, n_bins=n_bins, folds=folds, seed=seed)
    edges = time_bin_edges(time, event, n_bins)
    _, strata = survival_strata(assign_bins(time, edges), event, folds)
    events = dict(zip(cases, event.tolist()))

    written: list[Path] = []
    per_fold = []
    for k, ((train, test), path) in enumerate(zip(fold_list, outputs.splits)):
        write_split_csv(path, Split(train=tuple(train), val=(), test=tuple(test)))
        written.append(path)
        per_fold.append({"fold": k, "train": _counts(train, events), "val": _counts([], events),
                         "test": _counts(test, events)})
    without = [f["fold"] for f in per_fold if f["test"]["events"] == 0]
    n_events = int(event.sum())
    guaranteed = n_events >= folds
    if without:
        log.warning("test fold(s) %s have no event (%d events in %d cases over %d folds)%s: their C-index is NaN",
                    without, n_events, len(cases), folds, "" if guaranteed else ", fewer events than folds")
    meta = {
        "unit": "case",
        "folds": folds,
        "seed": seed,
        "n_bins": n_bins,
        "bin_edges": edges.tolist(),
        "cases": len(cases),
        "events": n_events,
        "stratified_by": "time bin x event",
        "strata": strata,
        "rng": "sklearn StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed), cases listed by stratum, id",
        "event_in_every_test_fold_guaranteed": guaranteed,
        "test_folds_without_event": without,
        "dataset": None if dataset_csv is None else str(dataset_csv),
        "dataset_sha256": None if dataset_csv is None else _sha256(dataset_csv),
        "hive_wsi_version": __version__,
        "per_fold": per_fold,
    }
    write_json_atomic(outputs.meta, meta)
    written.append(outputs.meta)
    log.info("survival: %d folds of %d cases (%d events) written (%s, ...)", folds, len(cases), n_events,
             outputs.splits[0])
    return written
