"""dataset.csv: the labelled slides that made it through feature extraction, in HiVE-MIL's columns.

A slide enters the dataset only if it has a label, a case id, a level-0 magnification and every per-slide file the
trainer reads. Everything else is listed in dropped.csv with the reason, so a shrinking cohort is never silent.
Functions take explicit lists of paths (what Snakemake hands the rule), not folders to glob.

Survival labels (event, time_days; blank when unknown) ride along per slide from the sheet. They are per patient, so
`survival_table` gives one row per case. When a survival task is configured, a kept slide without a usable label
(or whose case's slides disagree on it) also gets a dropped.csv row saying so, but stays in dataset.csv for the
other tasks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from pipeline import status
from pipeline.errors import PipelineError
from pipeline.formats import PathLike, read_patches, write_text_atomic
from pipeline.gdc.clinical import Survival, format_days

log = logging.getLogger(__name__)

DATASET_COLUMNS = ["case_id", "slide_id", "label", "level0_mag", "event", "time_days"]
DROPPED_COLUMNS = ["slide_id", "case_id", "label", "reason"]
SHEET_REQUIRED = ["slide_id", "case_id", "label"]
SURVIVAL_COLUMNS = ["event", "time_days"]
#: the start of a dropped.csv reason for a slide that is left out of survival tasks only (it stays in dataset.csv)
SURVIVAL_ONLY = "survival tasks only: "


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
    for col in SHEET_REQUIRED + [c for c in SURVIVAL_COLUMNS + ["follow_up"] if c in sheet.columns]:
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


def sheet_survival(row: Mapping[str, str]) -> Survival | None:
    """A sheet row's survival label, None when event and time_days are both blank (or the columns absent).

    The sheet stage has checked them already (pipeline.sheet); a hand-edited sheet with half a label or a bad value
    is refused here rather than read as "unknown", since that would silently shrink a survival cohort."""
    event, time = (_cell(row.get(c)) for c in SURVIVAL_COLUMNS)
    if not event and not time:
        return None
    where = f"cohort sheet: slide '{row.get('slide_id')}'"
    if not event or not time:
        raise CohortError(f"{where} has event '{event}' and time_days '{time}': give both, or leave both blank")
    flag, days = _number(event), _number(time)
    if flag not in (0.0, 1.0) or not math.isfinite(days) or days < 0:
        raise CohortError(f"{where}: event '{event}' / time_days '{time}' are not 0/1 and a number of days >= 0")
    return Survival(int(flag), days)


def _cell(value: object) -> str:
    """A sheet cell as text, '' for blank (a DataFrame built in code may hold None or NaN there)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _survival_cells(label: Survival | None) -> dict[str, str]:
    if label is None:
        return {"event": "", "time_days": ""}
    return {"event": str(label.event), "time_days": format_days(label.time_days)}


def survival_drops(kept: Sequence[Mapping[str, str]], notes: Mapping[str, str]) -> list[dict[str, str]]:
    """dropped.csv rows for kept slides a survival task cannot use: no usable label (the sheet's follow_up note says
    why, when it has one), or a case whose slides disagree on it (the label is the patient's, not the slide's)."""
    rows: list[dict[str, str]] = []
    labels: dict[str, set[tuple[str, str]]] = {}
    for r in kept:
        if r["event"] != "":
            labels.setdefault(r["case_id"], set()).add((r["event"], r["time_days"]))
    for r in kept:
        why = None
        if r["event"] == "":
            note = notes.get(r["slide_id"]) or "event/time_days blank in the sheet"
            why = f"no usable follow-up ({note})"
        elif len(labels[r["case_id"]]) > 1:
            seen = " vs ".join(f"event {e}, time_days {t}" for e, t in sorted(labels[r["case_id"]]))
            why = f"slides of case '{r['case_id']}' disagree on event/time_days ({seen})"
        if why:
            rows.append({"slide_id": r["slide_id"], "case_id": r["case_id"], "label": r["label"],
                         "reason": SURVIVAL_ONLY + why})  # fmt: skip
    return rows


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
    survival: bool = False,
) -> Cohort:
    """Keep sheet rows that are labelled, have a case id, a level-0 magnification and a file in every group.

    `required_files` maps a human name ("5x features", "hierarchical features") to the paths handed in; a slide is
    dropped with "no <name> file" when none of them is its own. `labels`, when given, is the allowed label set:
    a slide with another label is dropped, never relabelled. `failures` (slide -> "stage failed: reason", from the
    status records) gives a failed slide its real reason; with `patch_counts`, a slide with no tissue or fewer than
    `min_patches` 5x patches is dropped too, so no cohort stage receives a slide it cannot use.

    Kept slides carry the sheet's event/time_days (blank when unknown). With `survival` (a survival task is
    configured), kept slides a survival task cannot use get a dropped row too (see `survival_drops`) and stay kept.
    """
    failures = failures or {}
    indexed = {name: _index_files(paths) for name, paths in required_files.items()}
    allowed = list(labels) if labels else None
    kept: list[dict] = []
    dropped: list[dict] = []
    notes: dict[str, str] = {}
    for row in sheet.to_dict("records"):
        slide, case, label = row["slide_id"], row["case_id"], row["label"]
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
                         "level0_mag": _format_mag(level0_mags[slide]), **_survival_cells(sheet_survival(row))})
            notes[slide] = _cell(row.get("follow_up"))
        else:
            dropped.append({"slide_id": slide, "case_id": case, "label": label, "reason": reason})
    if survival:
        dropped += survival_drops(kept, notes)
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
    survival: bool = False,
) -> Cohort:
    """Build dataset.csv and dropped.csv from the sheet and the per-slide files; fail if nothing is kept.

    With `status_dir`, slides whose status records hold a failure (or no tissue) are dropped with that reason. With
    `survival`, dropped.csv also lists the kept slides that survival tasks cannot use."""
    sheet = read_sheet(sheet_path)
    cohort = build_dataset(
        sheet, read_level0_mags(patch_files), {"patches": patch_files, **required_files}, labels,
        failures=status.left_out(status_dir) if status_dir else None,
        patch_counts=read_patch_counts(patch_files), min_patches=min_patches, survival=survival,
    )
    write_text_atomic(dropped_out, cohort.dropped.to_csv(index=False))
    for row in cohort.dropped.itertuples(index=False):
        if row.reason.startswith(SURVIVAL_ONLY):
            log.warning("slide '%s' (kept for the other tasks): %s", row.slide_id, row.reason)
        else:
            log.warning("dropped slide '%s': %s", row.slide_id, row.reason)
    if cohort.dataset.empty:
        reasons = "; ".join(f"{r.slide_id}: {r.reason}" for r in cohort.dropped.head(5).itertuples(index=False))
        raise CohortError(f"no slide of {sheet_path} is usable ({len(cohort.dropped)} dropped; first: {reasons})")
    write_text_atomic(dataset_out, cohort.dataset.to_csv(index=False))
    counts = cohort.dataset["label"].value_counts().to_dict()
    n_survival = int(cohort.dropped["reason"].str.startswith(SURVIVAL_ONLY).sum())
    log.info("dataset: %d slides (%s), %d dropped", len(cohort.dataset), counts, len(cohort.dropped) - n_survival)
    if survival:
        cases = survival_table(cohort.dataset)
        log.info("survival: %d case(s) with a usable label (%d slides); %d slide(s) left out of survival tasks",
                 len(cases), sum(len(s) for s in cases["slides"]), n_survival)  # fmt: skip
    return cohort


def read_dataset(path: PathLike) -> pd.DataFrame:
    """Read dataset.csv (ours or HiVE-MIL's) as strings, checking columns and unique slide ids.

    event and time_days, when there (HiVE-MIL's own dataset.csv has neither), are floats with NaN where blank; a
    value that is neither blank nor valid is refused, naming the slides."""
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
    for col, valid in (("event", lambda v: v.isin([0, 1])), ("time_days", lambda v: v >= 0)):
        if col in df.columns:
            values = pd.to_numeric(df[col].str.strip(), errors="coerce")  # blank -> NaN
            bad = df["slide_id"][(df[col].str.strip() != "") & (values.isna() | ~valid(values))]
            if len(bad):
                raise CohortError(f"dataset {path}: unusable {col} for slide(s) {sorted(bad)[:5]}")
            df[col] = values.astype(float)
    return df


def survival_table(dataset: pd.DataFrame) -> pd.DataFrame:
    """One row per case with a usable survival label: case_id, event (int), time_days (float), slides (sorted ids).

    What a survival task builds its patient bags from. Slides with a blank label are not in their case's bag, and a
    case whose slides disagree on the label is left out (dropped.csv names it when a survival task is configured).
    """
    columns = ["case_id", "event", "time_days", "slides"]
    if not set(SURVIVAL_COLUMNS) <= set(dataset.columns):
        return pd.DataFrame(columns=columns)
    event = pd.to_numeric(dataset["event"], errors="coerce")  # blank -> NaN
    time = pd.to_numeric(dataset["time_days"], errors="coerce")
    usable = dataset.assign(event=event, time_days=time)[event.isin([0, 1]) & (time >= 0)]
    rows = []
    for case, group in usable.groupby("case_id", sort=True):
        if len(set(zip(group["event"], group["time_days"]))) == 1:
            first = group.iloc[0]
            rows.append({"case_id": case, "event": int(first["event"]), "time_days": float(first["time_days"]),
                         "slides": sorted(group["slide_id"])})  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"event": int, "time_days": float}) if rows else table
