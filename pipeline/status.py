"""Per-slide, per-stage status records and the cohort status table.

Each stage command records ok/failed with the reason under `status/{stage}/{slide}.json`. These records are not
Snakemake outputs, so a failed job's record survives Snakemake's cleanup and `--keep-going` runs can end with a
table listing every slide that failed and why.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from pipeline.formats import PathLike, write_json_atomic, write_text_atomic

FIELDS = ["slide", "stage", "status", "reason", "time"]


def name_problem(value: str) -> str:
    """Why `value` cannot be a slide id or stage name (a file name inside an output folder); '' if it can."""
    if not value or not value.strip():
        return "it is empty"
    if "/" in value or "\\" in value:
        return "it contains a path separator"
    if ".." in value:
        return "it contains '..'"
    if value.startswith("."):
        return "it starts with '.'"
    if "\0" in value:
        return "it contains a NUL character"
    return ""


def record(status_dir: PathLike | None, stage: str, slide: str, ok: bool, reason: str = "") -> None:
    """Write status_dir/stage/slide.json (ok or failed with the reason); nothing when status_dir is empty."""
    if not status_dir:
        return
    for what, value in (("slide id", slide), ("stage", stage)):
        if problem := name_problem(value):
            raise ValueError(f"refusing a status record for {what} {value!r}: {problem}")
    write_json_atomic(
        Path(status_dir) / stage / f"{slide}.json",
        {"slide": slide, "stage": stage, "status": "ok" if ok else "failed", "reason": reason,
         "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
    )


def collect(status_dir: PathLike) -> list[dict[str, str]]:
    rows = []
    for path in sorted(Path(status_dir).glob("*/*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue  # a record being written right now; the next collection sees it
    return sorted(rows, key=lambda r: (r["slide"], r["stage"]))


#: the start of the reason of an ok patch record whose file is valid but empty (the slide has no usable tissue).
NO_TISSUE = "no tissue"


def left_out(status_dir: PathLike) -> dict[str, str]:
    """slide -> why cohort stages must leave it out, from its records: each failed stage ("<stage> failed:
    <reason>", several joined by '; '), or an ok patch record saying the slide has no tissue."""
    if not Path(status_dir).is_dir():
        return {}
    out: dict[str, list[str]] = {}
    for row in collect(status_dir):
        reason = row.get("reason") or ""
        if row.get("status") != "ok":
            out.setdefault(row["slide"], []).append(f"{row['stage']} failed: {reason or 'no reason recorded'}")
        elif reason.startswith(NO_TISSUE):
            out.setdefault(row["slide"], []).append(reason)
    return {slide: "; ".join(reasons) for slide, reasons in out.items()}


def write_table(status_dir: PathLike, dest: PathLike) -> list[dict[str, str]]:
    rows = collect(status_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(dest, buf.getvalue())
    return rows
