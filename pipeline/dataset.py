"""dataset.csv: the labelled slides that made it through feature extraction, in HiVE-MIL's columns.

A slide enters the dataset only if it has a label, a case id, a level-0 magnification and every per-slide file the
trainer reads. Everything else is listed in dropped.csv with the reason, so a shrinking cohort is never silent.
Functions take explicit lists of paths (what Snakemake hands the rule), not folders to glob.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from pipeline import status
from pipeline.errors import PipelineError
from pipeline.formats import PathLike, read_patches, write_text_atomic

log = logging.getLogger(__name__)

DATASET_COLUMNS = ["case_id", "slide_id", "label", "level0_mag"]
DROPPED_COLUMNS = ["slide_id", "case_id", "label", "reason"]
SHEET_REQUIRED = ["slide_id", "case_id", "label"]


class CohortError(PipelineError):
    """The cohort sheet or dataset cannot be used as given."""


def slide_id_of(path: PathLike) -> str:
    """Slide id of a per-slide file: the file name without its last suffix (TCGA ids contain dots)."""
    return Path(path).name.rsplit(".", 1)[0]


def read_sheet(path: PathLike) -> pd.DataFrame:
    """Read a cohort sheet as strings (ids like '001' or 'NA' stay as written); blank cells become ''."""
    path = Path(path)
    if not path.exists():
        raise CohortError(f"cohort sheet {path}: no such file")
    sheet = pd.read_csv(path, dtype=str, keep_default_na=False)
    sheet.columns = [c.strip() for c in sheet.columns]
    missing = [c for c in SHEET_REQUIRED if c not in sheet.columns]
    if missing:
        raise CohortError(f"cohort sheet {path}: missing column(s) {missing}; has {list(sheet.columns)}")
    for col in SHEET_REQUIRED:
        sheet[col] = sheet[col].str.strip()
    dup = sheet["slide_id"][sheet["slide_id"].duplicated() & (sheet["slide_id"] != "")]
    if len(dup):
        raise CohortError(f"cohort sheet {path}: slide_id listed more than once: {sorted(set(dup))}")
    return sheet


def read_level0_mags(patch_files: Iterable[PathLike]) -> dict[str, float | None]:
    """Map slide id -> `level0_magnification` attr of its patches h5 (None when absent or unusable)."""
    mags: dict[str, float | None] = {}
    for path in patch_files:
        path = Path(path)
        if not path.exists():
            continue  # reported per slide by build_dataset as a missing patches file
        value = read_patches(path).attrs.get("level0_magnification")
        try:
            mag = float(value)
        except (TypeError, ValueError):
            mag = None
        mags[slide_id_of(path)] = mag if mag is not None and mag > 0 else None
    return mags


@dataclass(frozen=True)
class PatchCount:
    """What a patch file says about a slide's usable tissue: its 5x patch count and, when empty, why."""

    n_5x: int
    empty_reason: str = ""


def read_patch_counts(patch_files: Iterable[PathLike]) -> dict[str, PatchCount]:
    """Map slide id -> its 5x patch count and the patch stage's `empty_reason` (files that exist)."""
    counts: dict[str, PatchCount] = {}
    for path in patch_files:
        path = Path(path)
        if path.exists():
            grid = read_patches(path)
            counts[slide_id_of(path)] = PatchCount(len(grid.coords_5x), str(grid.attrs.get("empty_reason") or ""))
    return counts


def _index_files(paths: Iterable[PathLike]) -> dict[str, Path]:
    """slide id -> path, for the files that exist."""
    return {slide_id_of(p): Path(p) for p in paths if Path(p).exists()}


def _format_mag(mag: float) -> int | float:
    return int(mag) if float(mag).is_integer() else mag


@dataclass
class Cohort:
    """The kept slides (dataset.csv rows) and the dropped ones with reasons (dropped.csv rows)."""

    dataset: pd.DataFrame
    dropped: pd.DataFrame


def build_dataset(
    sheet: pd.DataFrame,
    level0_mags: Mapping[str, float | None],
    required_files: Mapping[str, Iterable[PathLike]],
    labels: Sequence[str] | None = None,
    *,
    failures: Mapping[str, str] | None = None,
    patch_counts: Mapping[str, PatchCount] | None = None,
    min_patches: int = 1,
) -> Cohort:
    """Keep sheet rows that are labelled, have a case id, a level-0 magnification and a file in every group.

    `required_files` maps a human name ("5x features", "hierarchical features") to the paths handed in; a slide is
    dropped with "no <name> file" when none of them is its own. `labels`, when given, is the allowed label set:
    a slide with another label is dropped, never relabelled. `failures` (slide -> "stage failed: reason", from the
    status records) gives a failed slide its real reason; with `patch_counts`, a slide with no tissue or fewer than
    `min_patches` 5x patches is dropped too, so no cohort stage receives a slide it cannot use.
    """
    failures = failures or {}
    indexed = {name: _index_files(paths) for name, paths in required_files.items()}
    allowed = list(labels) if labels else None
    kept: list[dict] = []
    dropped: list[dict] = []
    for row in sheet.itertuples(index=False):
        slide, case, label = row.slide_id, row.case_id, row.label
        reason = None
        if not slide:
            reason = "sheet row without slide_id"
        elif not label:
            reason = "no label (unlabelled slides are for prediction only)"
        elif allowed is not None and label not in allowed:
            reason = f"label '{label}' is not one of the configured labels {allowed}"
        elif not case:
            reason = "no case_id (needed to keep a patient's slides in one partition)"
        elif slide in failures:
            reason = failures[slide]
        else:
            missing = [name for name, files in indexed.items() if slide not in files]
            count = patch_counts.get(slide) if patch_counts is not None else None
            if missing:
                reason = "no " + ", no ".join(missing) + " file"
            elif count is not None and count.n_5x == 0:
                reason = f"no tissue: {count.empty_reason or 'the patch file is empty'}"
            elif count is not None and count.n_5x < min_patches:
                reason = f"{count.n_5x} 5x patches, below the minimum of {min_patches} (cohort.min_patches)"
            elif slide not in level0_mags:
                reason = "no patches file (level-0 magnification unknown)"
            elif level0_mags[slide] is None:
                reason = "patches file has no usable level0_magnification attribute"
        if reason is None:
            kept.append({"case_id": case, "slide_id": slide, "label": label,
                         "level0_mag": _format_mag(level0_mags[slide])})
        else:
            dropped.append({"slide_id": slide, "case_id": case, "label": label, "reason": reason})
    return Cohort(pd.DataFrame(kept, columns=DATASET_COLUMNS), pd.DataFrame(dropped, columns=DROPPED_COLUMNS))


def write_dataset(
    sheet_path: PathLike,
    patch_files: Sequence[PathLike],
    required_files: Mapping[str, Sequence[PathLike]],
    dataset_out: PathLike,
    dropped_out: PathLike,
    labels: Sequence[str] | None = None,
    status_dir: PathLike | None = None,
    min_patches: int = 1,
) -> Cohort:
    """Build dataset.csv and dropped.csv from the sheet and the per-slide files; fail if nothing is kept.

    With `status_dir`, slides whose status records hold a failure (or no tissue) are dropped with that reason."""
    sheet = read_sheet(sheet_path)
    cohort = build_dataset(
        sheet, read_level0_mags(patch_files), {"patches": patch_files, **required_files}, labels,
        failures=status.left_out(status_dir) if status_dir else None,
        patch_counts=read_patch_counts(patch_files), min_patches=min_patches,
    )
    write_text_atomic(dropped_out, cohort.dropped.to_csv(index=False))
    for row in cohort.dropped.itertuples(index=False):
        log.warning("dropped slide '%s': %s", row.slide_id, row.reason)
    if cohort.dataset.empty:
        reasons = "; ".join(f"{r.slide_id}: {r.reason}" for r in cohort.dropped.head(5).itertuples(index=False))
        raise CohortError(f"no slide of {sheet_path} is usable ({len(cohort.dropped)} dropped; first: {reasons})")
    write_text_atomic(dataset_out, cohort.dataset.to_csv(index=False))
    counts = cohort.dataset["label"].value_counts().to_dict()
    log.info("dataset: %d slides (%s), %d dropped", len(cohort.dataset), counts, len(cohort.dropped))
    return cohort


def read_dataset(path: PathLike) -> pd.DataFrame:
    """Read dataset.csv (ours or HiVE-MIL's) as strings, checking columns and unique slide ids."""
    path = Path(path)
    if not path.exists():
        raise CohortError(f"dataset {path}: no such file")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("case_id", "slide_id", "label") if c not in df.columns]
    if missing:
        raise CohortError(f"dataset {path}: missing column(s) {missing}; has {list(df.columns)}")
    dup = df["slide_id"][df["slide_id"].duplicated()]
    if len(dup):
        raise CohortError(f"dataset {path}: slide_id listed more than once: {sorted(set(dup))[:5]}")
    blank = df[(df["slide_id"] == "") | (df["label"] == "") | (df["case_id"] == "")]
    if len(blank):
        raise CohortError(f"dataset {path}: {len(blank)} row(s) with a blank slide_id, case_id or label")
    return df
