"""Patient-level, stratified, seeded few-shot splits in HiVE-MIL's `splits_{k}.csv` format.

Each of the k folds is an independent stratified draw (as the CLAM-style splits HiVE-MIL ships): per class, whole
cases go to test, then to validation, the rest form the training partition, so no patient is in two partitions.
The few-shot training set of a fold is then drawn from its training partition, `shots` slides per class. The
draw order per fold and class does not depend on `shots`, so the 4-shot set is inside the 8-shot set, which is
inside the 16-shot set, and validation and test are the same for every shot count: results across shot counts
differ only by the training slides.

Random streams (numpy PCG64): partition of fold i = default_rng([seed, i]); few-shot order of fold i, class c =
default_rng([seed, i, 1, c]). Cases are sorted by id before shuffling, so row order in dataset.csv does not matter.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline import __version__
from pipeline.dataset import read_dataset
from pipeline.errors import PipelineError
from pipeline.formats import PathLike, write_json_atomic, write_text_atomic
from pipeline.labels import LabelTree

log = logging.getLogger(__name__)

PARTITIONS = ("train", "val", "test")
DEFAULT_SHOTS = (4, 8, 16)
META_NAME = "splits_meta.json"


class SplitError(PipelineError):
    """Splits cannot be made or used as asked."""


class NotEnoughSlidesError(SplitError):
    """A class has fewer (training) slides than the shots asked."""


class MissingClassError(SplitError):
    """A class has no slide in the validation or test partition."""


class UnknownSlideError(SplitError):
    """A split names a slide that is not in the dataset."""


class CaseLeakError(SplitError):
    """A case (patient) or slide appears in more than one partition."""


@dataclass(frozen=True)
class Split:
    """One fold: slide ids per partition (train is the few-shot set once `few_shot` has been applied)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def partitions(self) -> dict[str, tuple[str, ...]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def split_path(out_dir: PathLike, task: str, shots: int, fold: int) -> Path:
    """`{out_dir}/{task}_{shots}/splits_{fold}.csv`, HiVE-MIL's layout (where imports are looked for)."""
    return Path(out_dir) / f"{task}_{shots}" / f"splits_{fold}.csv"


@dataclass(frozen=True)
class SplitOutputs:
    """The files of one set of k folds, as the caller names them: `splits[i]` is fold i's CSV, `meta` the JSON
    that records how they were made. The workflow passes its layout's paths; nothing here renames them."""

    splits: tuple[Path, ...]
    meta: Path

    def __post_init__(self) -> None:
        if not self.splits:
            raise SplitError("no split files to write (folds must be at least 1)")

    @classmethod
    def of(cls, splits: Sequence[PathLike], meta: PathLike) -> "SplitOutputs":
        return cls(tuple(Path(p) for p in splits), Path(meta))

    @classmethod
    def in_folder(cls, folder: PathLike, folds: int) -> "SplitOutputs":
        """`{folder}/splits_{i}.csv` and `{folder}/splits_meta.json`: HiVE-MIL's file names, for library and CLI use."""
        folder = Path(folder)
        return cls.of([folder / f"splits_{i}.csv" for i in range(folds)], folder / META_NAME)


def folder_outputs(out_dir: PathLike, task: str, shots: Sequence[int], folds: int) -> dict[int, SplitOutputs]:
    """Shot count -> its files in HiVE-MIL's layout `{out_dir}/{task}_{shots}/` (the CLI's --out-dir)."""
    return {int(n): SplitOutputs.in_folder(Path(out_dir) / f"{task}_{int(n)}", folds) for n in shots}


# --- drawing -------------------------------------------------------------------------------------------------


def resolve_labels(dataset: pd.DataFrame, labels: Sequence[str] | None) -> list[str]:
    """The label order (index = class id); every dataset label must be in it."""
    present = sorted(set(dataset["label"]))
    if not labels:
        return present
    labels = list(labels)
    unknown = [lab for lab in present if lab not in labels]
    if unknown:
        raise SplitError(f"dataset has label(s) {unknown} that are not in the configured labels {labels}")
    return labels


def task_rows(dataset: pd.DataFrame, labels: Sequence[str] | None, other_labels: str) -> pd.DataFrame:
    """The dataset rows of one task: with `other_labels="ignore"`, slides of labels the task does not have are left
    out (a cohort with several tasks shares one dataset.csv); with "error", `resolve_labels` refuses them."""
    if other_labels not in ("error", "ignore"):
        raise ValueError(f"other_labels must be 'error' or 'ignore', got {other_labels!r}")
    if other_labels == "error" or not labels:
        return dataset
    keep = dataset["label"].isin(list(labels))
    if not keep.all():
        log.info("%d slide(s) with labels %s belong to other tasks and are left out", int((~keep).sum()),
                 sorted(set(dataset.loc[~keep, "label"])))
    return dataset[keep].reset_index(drop=True)


def _case_labels(dataset: pd.DataFrame, labels: Sequence[str]) -> dict[str, str]:
    """A case's stratum: its most common slide label (ties: earlier in label order)."""
    out: dict[str, str] = {}
    for case, group in dataset.groupby("case_id", sort=True):
        counts = Counter(group["label"])
        best = max(counts.values())
        out[case] = next(lab for lab in labels if counts.get(lab, 0) == best)
        if len(counts) > 1:
            log.warning("case '%s' has slides of several labels %s; stratified as '%s'", case, dict(counts), out[case])
    return out


def _target(frac: float, n: int) -> int:
    """Slides a partition should get: frac * n rounded half up, at least one."""
    return max(1, math.floor(frac * n + 0.5))


def _take_cases(cases: list[str], sizes: Mapping[str, int], target: int) -> list[str]:
    """Pick cases (in the given, shuffled order) whose slide counts add up as close to `target` as possible.

    First fit: take each case that still fits; then, if short, the one remaining case that brings the total
    closest (only if it helps); never return nothing.
    """
    taken: list[str] = []
    need = target
    for case in cases:
        if 0 < sizes[case] <= need:
            taken.append(case)
            need -= sizes[case]
    taken_set = set(taken)
    rest = [c for c in cases if c not in taken_set]
    if need > 0 and rest:
        best = min(rest, key=lambda c: abs(need - sizes[c]))
        if abs(need - sizes[best]) < need or not taken:
            taken.append(best)
    return taken


def draw_partitions(
    dataset: pd.DataFrame, labels: Sequence[str], val_frac: float, test_frac: float, seed: int, fold: int
) -> Split:
    """One patient-level stratified draw of train/val/test partitions (train = the whole training partition)."""
    rng = np.random.default_rng([seed, fold])
    case_label = _case_labels(dataset, labels)
    sizes = dataset.groupby("case_id").size().to_dict()
    slides_of = dataset.groupby("case_id")["slide_id"].apply(list).to_dict()
    parts: dict[str, list[str]] = {p: [] for p in PARTITIONS}
    for label in labels:
        cases = sorted(c for c, lab in case_label.items() if lab == label)
        cases = [cases[i] for i in rng.permutation(len(cases))]
        n = sum(sizes[c] for c in cases)
        test = _take_cases(cases, sizes, _target(test_frac, n))
        test_set = set(test)
        left = [c for c in cases if c not in test_set]
        val = _take_cases(left, sizes, _target(val_frac, n)) if left else []
        val_set = set(val)
        train = [c for c in left if c not in val_set]
        for name, chosen in (("test", test), ("val", val), ("train", train)):
            parts[name].extend(sorted(s for c in chosen for s in slides_of[c]))
    return Split(*(tuple(parts[p]) for p in PARTITIONS))


def few_shot(dataset: pd.DataFrame, split: Split, labels: Sequence[str], shots: int, seed: int, fold: int) -> Split:
    """Keep `shots` training slides per class, one slide per case before any case gives a second."""
    label_of = dict(zip(dataset["slide_id"], dataset["label"]))
    case_of = dict(zip(dataset["slide_id"], dataset["case_id"]))
    chosen: list[str] = []
    for ci, label in enumerate(labels):
        pool = sorted(s for s in split.train if label_of[s] == label)
        if len(pool) < shots:
            raise NotEnoughSlidesError(
                f"fold {fold}: class '{label}' has {len(pool)} training slide(s) after the val/test draw, "
                f"fewer than the {shots} shots asked; lower the shots or val_frac/test_frac, or add slides"
            )
        rng = np.random.default_rng([seed, fold, 1, ci])
        order = [pool[i] for i in rng.permutation(len(pool))]
        seen: Counter[str] = Counter()
        rank = []
        for slide in order:
            rank.append(seen[case_of[slide]])
            seen[case_of[slide]] += 1
        ranked = [s for _, _, s in sorted(zip(rank, range(len(order)), order))]
        chosen.extend(ranked[:shots])
    return Split(tuple(chosen), split.val, split.test)


def check_feasible(
    dataset: pd.DataFrame, labels: Sequence[str], shots: Sequence[int], val_frac: float, test_frac: float
) -> None:
    """Fail before drawing when a class is too small for the fractions and the largest shot count."""
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise SplitError(
            f"val_frac={val_frac} and test_frac={test_frac} must each be in (0, 1) with a sum below 1 "
            "(every class needs slides in train, val and test)"
        )
    if not shots or min(shots) < 1:
        raise SplitError(f"shots must be positive integers, got {list(shots)}")
    counts = dataset["label"].value_counts().to_dict()
    need = max(shots)
    for label in labels:
        n = counts.get(label, 0)
        n_test, n_val = _target(test_frac, n), _target(val_frac, n)
        if n - n_test - n_val < need:
            raise NotEnoughSlidesError(
                f"class '{label}' has {n} slide(s): {n_test} go to test and {n_val} to val "
                f"(test_frac={test_frac}, val_frac={val_frac}), leaving {max(n - n_test - n_val, 0)} for training, "
                f"fewer than the {need} shots asked; lower the shots or the fractions, or add slides "
                f"(class counts: {counts})"
            )


# --- checking ------------------------------------------------------------------------------------------------


def check_split(
    dataset: pd.DataFrame,
    split: Split,
    labels: Sequence[str],
    shots: int | None = None,
    where: str = "split",
    allow_case_overlap: bool = False,
) -> None:
    """A split is usable: known slides, no slide or case in two partitions, every class in val and test,
    and (when `shots` is given) exactly `shots` training slides per class."""
    label_of = dict(zip(dataset["slide_id"], dataset["label"]))
    case_of = dict(zip(dataset["slide_id"], dataset["case_id"]))
    parts = split.partitions()
    for name, slides in parts.items():
        unknown = [s for s in slides if s not in label_of]
        if unknown:
            raise UnknownSlideError(
                f"{where}: {len(unknown)} slide(s) in '{name}' are not in the dataset (missing features or "
                f"dropped? see dropped.csv), e.g. {unknown[:3]}"
            )
        dup = sorted(s for s, n in Counter(slides).items() if n > 1)
        if dup:
            raise CaseLeakError(f"{where}: slide(s) listed twice in '{name}': {dup[:3]}")
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(set(parts[a]) & set(parts[b]))
        if both:
            raise CaseLeakError(f"{where}: {len(both)} slide(s) in both '{a}' and '{b}', e.g. {both[:3]}")
        cases = sorted({case_of[s] for s in parts[a]} & {case_of[s] for s in parts[b]})
        if cases:
            msg = f"{where}: {len(cases)} case(s) have slides in both '{a}' and '{b}' (patient leak), e.g. {cases[:3]}"
            if not allow_case_overlap:
                raise CaseLeakError(msg + "; set allow_case_overlap to accept it")
            log.warning("%s (allowed by allow_case_overlap)", msg)
    for name in ("val", "test"):
        have = Counter(label_of[s] for s in parts[name])
        missing = [lab for lab in labels if have[lab] == 0]
        if missing:
            raise MissingClassError(
                f"{where}: class(es) {missing} have no slide in '{name}' (counts there: {dict(have)}); "
                "every class is needed in val and test to measure it"
            )
    if shots is not None:
        have = Counter(label_of[s] for s in parts["train"])
        wrong = {lab: have[lab] for lab in labels if have[lab] != shots}
        if wrong:
            short = {lab: n for lab, n in wrong.items() if n < shots}
            cls = NotEnoughSlidesError if short else SplitError
            raise cls(f"{where}: training slides per class {dict(have)}, expected {shots} for every class "
                      f"(off: {wrong})")


# --- files ---------------------------------------------------------------------------------------------------


def write_split_csv(path: PathLike, split: Split) -> None:
    """HiVE-MIL/CLAM layout: an unnamed index column, then train,val,test columns padded with blanks."""
    frame = pd.DataFrame({name: pd.Series(list(ids), dtype=object) for name, ids in split.partitions().items()})
    write_text_atomic(path, frame.to_csv())


def read_split_csv(path: PathLike) -> Split:
    """Read a `splits_{k}.csv` (with or without the unnamed index column); blanks are padding."""
    path = Path(path)
    if not path.exists():
        raise SplitError(f"split file {path}: no such file")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    first = frame.columns[0] if len(frame.columns) else ""
    if first == "" or first.startswith("Unnamed:"):
        frame = frame.drop(columns=first)
    missing = [p for p in PARTITIONS if p not in frame.columns]
    if missing:
        raise SplitError(f"split file {path}: missing column(s) {missing}; has {list(frame.columns)}")
    return Split(*(tuple(v.strip() for v in frame[p] if v.strip()) for p in PARTITIONS))


def _sha256(path: PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _counts(dataset: pd.DataFrame, split: Split, labels: Sequence[str]) -> dict[str, dict[str, int]]:
    label_of = dict(zip(dataset["slide_id"], dataset["label"]))
    return {
        name: {lab: sum(label_of[s] == lab for s in slides) for lab in labels}
        for name, slides in split.partitions().items()
    }


def _write_meta(
    path: PathLike, task: str, shots: int, dataset_csv: PathLike, labels: Sequence[str],
    folds: list[tuple[Split, Split]], dataset: pd.DataFrame, params: dict,
) -> Path:
    meta = {
        "task": task,
        "shots": shots,
        "folds": len(folds),
        "labels": list(labels),
        "dataset": str(dataset_csv),
        "dataset_sha256": _sha256(dataset_csv),
        "hive_wsi_version": __version__,
        **params,
        "per_fold": [
            {"fold": i, "training_partition": _counts(dataset, full, labels)["train"], **_counts(dataset, fs, labels)}
            for i, (full, fs) in enumerate(folds)
        ],
    }
    write_json_atomic(path, meta)
    return Path(path)


def task_dataset(dataset_csv: PathLike, labels: Sequence[str] | None, other_labels: str,
                 label_tree: LabelTree | None = None) -> pd.DataFrame:
    """dataset.csv as one task sees it: with a label tree, fine sheet labels stand for their coarse class (a
    classification task over organs on a sheet of subtypes), then `task_rows` keeps the task's labels."""
    dataset = read_dataset(dataset_csv)
    if label_tree is not None:
        dataset = dataset.copy()
        dataset["label"] = [label_tree.coarse_of(lab) if lab in label_tree.fine else lab for lab in dataset["label"]]
    return task_rows(dataset, labels, other_labels)


def make_splits(
    dataset_csv: PathLike,
    outputs: Mapping[int, SplitOutputs],
    task: str,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    seed: int = 1,
    labels: Sequence[str] | None = None,
    other_labels: str = "error",
    label_tree: LabelTree | None = None,
) -> list[Path]:
    """Draw the folds and write, per shot count of `outputs`, its split files (fold i to `splits[i]`) and meta JSON.

    Fold i's partitions do not depend on the shot counts asked for, so one call per shot count (the workflow's jobs)
    writes the same files as one call for all of them."""
    if not outputs:
        raise SplitError("no shot counts to write splits for")
    dataset = task_dataset(dataset_csv, labels, other_labels, label_tree)
    labels = resolve_labels(dataset, labels)
    shots = sorted(int(s) for s in outputs)
    check_feasible(dataset, labels, shots, val_frac, test_frac)
    k = max(len(out.splits) for out in outputs.values())
    partitions = [draw_partitions(dataset, labels, val_frac, test_frac, seed, i) for i in range(k)]
    written: list[Path] = []
    for n_shots in shots:
        files = outputs[n_shots]
        folds = []
        for i, path in enumerate(files.splits):
            full = partitions[i]
            where = f"fold {i} ({task}, {n_shots}-shot)"
            check_split(dataset, full, labels, where=where)
            split = few_shot(dataset, full, labels, n_shots, seed, i)
            check_split(dataset, split, labels, shots=n_shots, where=where)
            write_split_csv(path, split)
            written.append(path)
            folds.append((full, split))
        params = {"source": "generated", "seed": seed, "val_frac": val_frac, "test_frac": test_frac,
                  "rng": "numpy PCG64: partitions default_rng([seed, fold]); few-shot default_rng([seed, fold, 1, class])"}
        written.append(_write_meta(files.meta, task, n_shots, dataset_csv, labels, folds, dataset, params))
        log.info("%s %d-shot: %d folds written (%s, ...)", task, n_shots, len(files.splits), files.splits[0])
    return written


def _find_import(src: Path, task: str, shots: int, fold: int) -> Path:
    """`src/{task}_{shots}/splits_{i}.csv`, or HiVE-MIL's repository layout `src/{task}/{task}_{shots}/...`."""
    tried = [split_path(src, task, shots, fold), split_path(src / task, task, shots, fold)]
    for path in tried:
        if path.exists():
            return path
    raise SplitError(f"no split file to import for {task} {shots}-shot fold {fold}; looked for {[str(p) for p in tried]}")


def import_splits(
    src_dir: PathLike,
    dataset_csv: PathLike,
    outputs: Mapping[int, SplitOutputs],
    task: str,
    labels: Sequence[str] | None = None,
    allow_case_overlap: bool = False,
    other_labels: str = "error",
    label_tree: LabelTree | None = None,
) -> list[Path]:
    """Check existing HiVE-MIL-format split files of `src_dir` against the dataset and write them, fold i of each
    shot count to its `outputs` entry's `splits[i]`, with a meta JSON naming their sources."""
    dataset = task_dataset(dataset_csv, labels, other_labels, label_tree)
    labels = resolve_labels(dataset, labels)
    src = Path(src_dir)
    written: list[Path] = []
    for n_shots in sorted(int(s) for s in outputs):
        files = outputs[n_shots]
        folds = []
        sources = []
        for i, path in enumerate(files.splits):
            source = _find_import(src, task, n_shots, i)
            split = read_split_csv(source)
            check_split(dataset, split, labels, shots=n_shots, where=f"imported {source}",
                        allow_case_overlap=allow_case_overlap)
            write_split_csv(path, split)
            written.append(path)
            folds.append((split, split))
            sources.append({"file": str(source), "sha256": _sha256(source)})
        params = {"source": "imported", "imported_from": sources, "allow_case_overlap": allow_case_overlap}
        written.append(_write_meta(files.meta, task, n_shots, dataset_csv, labels, folds, dataset, params))
        log.info("%s %d-shot: %d imported folds checked and written", task, n_shots, len(files.splits))
    return written
