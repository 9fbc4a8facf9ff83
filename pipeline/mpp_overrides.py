"""Per-slide mpp overrides (slide_id,mpp[,force] CSV): read by the segment and patch stages and, to pass each
slide only its own override, by the workflow while it builds the DAG, so this module needs only the standard
library."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MppOverride:
    mpp: float
    force: bool = False
    source: str = "override"


def read_mpp_overrides(path: str | Path | None) -> dict[str, MppOverride]:
    """Per-slide overrides from a CSV with columns slide_id,mpp[,force]. Empty path: no overrides."""
    if not path:
        return {}
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mpp override file {path} does not exist")
    out: dict[str, MppOverride] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"slide_id", "mpp"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected slide_id,mpp[,force]")
        for row in reader:
            slide_id = row["slide_id"].strip()
            try:
                mpp = float(row["mpp"])
            except ValueError:
                raise ValueError(f"{path}: slide '{slide_id}' has a non-numeric mpp '{row['mpp']}'") from None
            force = str(row.get("force") or "").strip().lower() in {"1", "true", "yes"}
            out[slide_id] = MppOverride(mpp, force, f"override ({path.name})")
    return out
