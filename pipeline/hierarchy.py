"""Coordinate-linked 5x -> 20x hierarchical features, with consistency checks.

HiVE-MIL wants, for every 5x patch, its 20x children as a [16, D] block in row-major slot order. We link the two
scales by level-0 coordinates rather than by trusting row order, so features made elsewhere (HiVE-MIL's downloads,
TRIDENT, CLAM: `features` + `coords` per scale) work too, and every link is checked before a model trains on it.

A child belongs to the parent whose box [x, x+S) x [y, y+S) holds the child's top-left corner, S being the 5x
patch size at level 0; its slot is its row-major position in the parent's 4x4 block of S/4-sized cells. The linker
is vectorised: parents are bucketed by integer grid cell, sorted once, and every child looks up the four cells a
holding parent can sit in with `searchsorted`. No per-parent Python loop.

Each slide gets a JSON report (every check with its status, counts, the sizes used). Wrong data stops the slide
with a `HierarchyCheckError` naming the check, the slide and the report; orphans (20x patches inside no parent)
and childless parents are only counted. Inputs are read, never rewritten.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError, SlideError
from pipeline.formats import (
    CHILDREN_PER_SIDE,
    PathLike,
    read_features,
    write_hierarchical,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

GRID = CHILDREN_PER_SIDE  # a 5x patch is a GRID x GRID block of 20x patches
SLOTS = GRID * GRID
MISALIGNED_MODES = ("fail", "nearest")
PATCH_SIZE_DEFAULT = 256  # px at the target magnification, as HiVE-MIL/ViLa-MIL/our patching use

# Every check, in the order it runs. A report lists them all: passed, failed, resolved (nearest mode) or not_run.
CHECKS: dict[str, str] = {
    "coords_format": "coords are [N, 2] integer level-0 positions in every file",
    "rows_match": "feature rows equal coords rows in every file",
    "feature_dims": "5x and 20x features have the same width",
    "unique_coords": "no duplicate coordinate in either scale",
    "single_parent": "no 20x patch lies inside two 5x patches",
    "one_child_per_slot": "at most 16 children per parent and no two in one slot",
    "aligned_grid": "every child sits at an exact slot offset of its parent",
    "child_inside_parent": "every kept child lies inside its parent, in the slot its offset names",
    "row_order": "hierarchical rows match the 5x file row for row",
}

# Counts a report carries; the cohort summary sums them.
COUNT_KEYS = (
    "parents",
    "children",
    "linked",
    "orphans",
    "empty_parents",
    "misaligned",
    "dropped_in_slot_conflicts",
)


class ConsistencyError(PipelineError):
    """A named consistency check failed on the data (not on the slide as a whole: see HierarchyCheckError)."""

    def __init__(self, check: str, detail: str):
        self.check = check
        self.detail = detail
        super().__init__(f"check '{check}' failed: {detail}")


class HierarchyCheckError(SlideError):
    """A slide's hierarchy failed a check; the message names the check, the slide and the report path."""

    def __init__(self, slide: str, check: str, detail: str, report_path: PathLike):
        self.check = check
        self.report_path = Path(report_path)
        super().__init__(slide, f"hierarchy check '{check}' failed: {detail} (report: {report_path})")


class CheckLog:
    """Status of every check for one slide; `fail` records and raises, so a report always says how far it got."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, str]] = {
            name: {"status": "not_run", "what": what, "detail": ""} for name, what in CHECKS.items()
        }

    def passed(self, name: str, detail: str = "") -> None:
        self.results[name].update(status="passed", detail=detail)

    def resolved(self, name: str, detail: str) -> None:
        self.results[name].update(status="resolved", detail=detail)

    def fail(self, name: str, detail: str) -> None:
        self.results[name].update(status="failed", detail=detail)
        raise ConsistencyError(name, detail)


# --- sizes ---------------------------------------------------------------------------------------------------


def _as_int(value: Any, what: str) -> int:
    number = float(value)
    if not number.is_integer() or number <= 0:
        raise PipelineError(f"{what} = {value!r} is not a positive whole number of pixels")
    return int(number)


def size_from_magnification(level0_mag: float, patch_size: int = PATCH_SIZE_DEFAULT) -> int:
    """Level-0 side of a 5x patch: `patch_size` px at 5x is patch_size * mag / 5 px at level 0 (2048 at 40x)."""
    size = patch_size * level0_mag / 5
    if not float(size).is_integer() or size <= 0 or int(size) % GRID:
        raise PipelineError(
            f"level-0 magnification {level0_mag} gives a 5x patch of {size} px at level 0 ({patch_size} px at 5x), "
            f"not a whole multiple of {GRID}; use a base magnification such as 20 or 40"
        )
    return int(size)


def parent_size_level0(
    attrs_5x: Mapping[str, Any], attrs_20x: Mapping[str, Any], level0_mag: float | None = None
) -> tuple[int, str]:
    """The 5x patch size S at level 0 and where it came from.

    Sources: `patch_size_level0_5x` / `patch_size_level0_20x` (x4) in either file, else the generic
    `patch_size_level0` (TRIDENT's attr) read as the file's own scale, else a level-0 magnification (given, or the
    `level0_magnification` attr). All sources present must agree: a mismatch means a file is not what it claims.
    """
    found: list[tuple[int, str]] = []
    for scale, attrs in (("5x", attrs_5x), ("20x", attrs_20x)):
        specific = False
        if "patch_size_level0_5x" in attrs:
            found.append((_as_int(attrs["patch_size_level0_5x"], "patch_size_level0_5x"), f"{scale} attrs"))
            specific = True
        if "patch_size_level0_20x" in attrs:
            found.append((GRID * _as_int(attrs["patch_size_level0_20x"], "patch_size_level0_20x"), f"{scale} attrs"))
            specific = True
        if not specific and "patch_size_level0" in attrs:
            size = _as_int(attrs["patch_size_level0"], "patch_size_level0")
            found.append((size if scale == "5x" else GRID * size, f"{scale} attrs patch_size_level0"))
    if level0_mag is not None:
        found.append((size_from_magnification(level0_mag), f"level-0 magnification {level0_mag:g}x"))
    elif not found:
        for attrs in (attrs_5x, attrs_20x):
            if attrs.get("level0_magnification"):  # extraction writes 0 when unknown
                patch = _as_int(attrs.get("patch_size", PATCH_SIZE_DEFAULT), "patch_size")
                mag = float(attrs["level0_magnification"])
                found.append((size_from_magnification(mag, patch), f"attrs level0_magnification {mag:g}x"))
                break
    if not found:
        raise PipelineError(
            "cannot tell the 5x patch size at level 0: the feature files carry no patch_size_level0* or "
            "level0_magnification attrs; pass the slide's level-0 magnification (--level0-mag 40 or 20)"
        )
    sizes = {size for size, _ in found}
    if len(sizes) > 1:
        raise PipelineError(
            "the 5x patch size at level 0 is ambiguous: " + ", ".join(f"{size} from {src}" for size, src in found)
        )
    size, source = found[0]
    if size % GRID:
        raise PipelineError(f"5x patch size {size} px at level 0 ({source}) is not divisible by {GRID}")
    return size, source


# --- input checks --------------------------------------------------------------------------------------------


def as_coords(coords: np.ndarray, what: str, checks: CheckLog) -> np.ndarray:
    """Coordinates as int64 [N, 2]; float files are accepted when every value is whole."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 2:
        checks.fail("coords_format", f"{what} coords have shape {list(coords.shape)}, expected [N, 2]")
    if not np.issubdtype(coords.dtype, np.integer):
        if not np.issubdtype(coords.dtype, np.number) or not np.all(np.isfinite(coords)):
            checks.fail("coords_format", f"{what} coords are not finite numbers (dtype {coords.dtype})")
        if np.any(coords != np.round(coords)):
            checks.fail("coords_format", f"{what} coords are not whole pixels")
    return coords.astype(np.int64, copy=False)


def duplicate_rows(coords: np.ndarray) -> np.ndarray:
    """Row indices [K, 2] of coordinate pairs that repeat an earlier equal row (after sorting by y, x)."""
    if len(coords) < 2:
        return np.empty((0, 2), dtype=np.int64)
    order = np.lexsort((coords[:, 0], coords[:, 1]))
    ordered = coords[order]
    same = np.all(ordered[1:] == ordered[:-1], axis=1)
    return np.stack([order[:-1][same], order[1:][same]], axis=1)


def check_inputs(
    features_5x: np.ndarray,
    coords_5x: np.ndarray,
    features_20x: np.ndarray,
    coords_20x: np.ndarray,
    checks: CheckLog,
) -> tuple[np.ndarray, np.ndarray]:
    """Input-file checks (format, row counts, widths, duplicates); returns the coords as int64."""
    coords_5x = as_coords(coords_5x, "5x", checks)
    coords_20x = as_coords(coords_20x, "20x", checks)
    checks.passed("coords_format")
    for scale, feats, coords in (("5x", features_5x, coords_5x), ("20x", features_20x, coords_20x)):
        if len(feats) != len(coords):
            checks.fail("rows_match", f"{scale} file has {len(feats)} feature rows but {len(coords)} coords rows")
    checks.passed("rows_match", f"5x {len(coords_5x)} rows, 20x {len(coords_20x)} rows")
    if features_5x.ndim != 2 or features_20x.ndim != 2 or features_5x.shape[1] != features_20x.shape[1]:
        checks.fail(
            "feature_dims",
            f"5x features have shape {list(features_5x.shape)}, 20x {list(features_20x.shape)}; expected [N, D] "
            "with the same D (same backbone)",
        )
    checks.passed("feature_dims", f"D = {features_5x.shape[1]}")
    for scale, coords in (("5x", coords_5x), ("20x", coords_20x)):
        dup = duplicate_rows(coords)
        if len(dup):
            i, j = dup[0]
            x, y = coords[i]
            checks.fail(
                "unique_coords",
                f"{scale} file has {len(dup)} duplicate coordinate(s), e.g. ({x}, {y}) at rows {i} and {j}",
            )
    checks.passed("unique_coords")
    return coords_5x, coords_20x


# --- linking -------------------------------------------------------------------------------------------------


def find_holders(coords_5x: np.ndarray, coords_20x: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """All (child row, parent row) pairs where the parent's box [x, x+size) x [y, y+size) holds the child's corner.

    Parents are keyed by their integer cell floor(xy / size) and sorted by key; a parent holding a child in cell
    (i, j) sits in cell (i, j), (i-1, j), (i, j-1) or (i-1, j-1), so each child makes four look-ups (a dense
    per-cell table, or `searchsorted` when the cells are too spread out for one). Works for parents off any
    lattice and for overlapping parents (several holders per child). Works on contiguous x and y arrays with
    `np.take`: numpy's fancy indexing of [M, 2] rows or strided columns is several times slower.
    """
    empty = np.empty(0, dtype=np.int64)
    if len(coords_5x) == 0 or len(coords_20x) == 0:
        return empty, empty
    px, py = np.ascontiguousarray(coords_5x.T)
    cx, cy = np.ascontiguousarray(coords_20x.T)
    pcx, pcy, ccx, ccy = px // size, py // size, cx // size, cy // size
    low_x, low_y = min(pcx.min(), ccx.min() - 1), min(pcy.min(), ccy.min() - 1)
    width = int(max(pcx.max(), ccx.max()) - low_x + 1)
    n_cells = width * int(max(pcy.max(), ccy.max()) - low_y + 1)
    parent_keys = (pcy - low_y) * width + (pcx - low_x)
    child_keys = (ccy - low_y) * width + (ccx - low_x)
    parent_order = np.argsort(parent_keys, kind="stable")
    neighbours = np.array([0, 1, width, width + 1], dtype=np.int64)  # own cell, left, above, above-left
    queries = (child_keys[None, :] - neighbours[:, None]).ravel()  # [4 * M], neighbour-major
    if n_cells <= max(8 * (len(coords_5x) + len(coords_20x)), 1 << 20):
        per_cell = np.bincount(parent_keys, minlength=n_cells)
        counts = per_cell[queries]
        start = (np.cumsum(per_cell) - per_cell)[queries]
    else:  # coordinates spread so far apart that a table would be mostly empty
        sorted_keys = parent_keys[parent_order]
        start = np.searchsorted(sorted_keys, queries, side="left")
        counts = np.searchsorted(sorted_keys, queries, side="right") - start
    hit = np.flatnonzero(counts)
    if np.all(counts[hit] == 1):  # the usual case: at most one parent per cell
        child, parent = hit % len(coords_20x), np.take(parent_order, np.take(start, hit))
    else:  # several parents share a cell: expand every (query, parent-in-cell) pair
        counts, start, hit_child = counts[hit], start[hit], hit % len(coords_20x)
        within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        child, parent = np.repeat(hit_child, counts), parent_order[np.repeat(start, counts) + within]
    dx, dy = np.take(cx, child) - np.take(px, parent), np.take(cy, child) - np.take(py, parent)
    holds = (dx >= 0) & (dx < size) & (dy >= 0) & (dy < size)
    return child[holds], parent[holds]


def slot_of_offset(offset: np.ndarray, slot_size: int, nearest: bool) -> np.ndarray:
    """Row-major slot of a child offset: the cell holding it, or (nearest) the cell whose origin is closest."""
    if nearest:
        cell = np.clip(np.floor_divide(2 * offset + slot_size, 2 * slot_size), 0, GRID - 1)
    else:
        cell = np.floor_divide(offset, slot_size)
    return cell[:, 1] * GRID + cell[:, 0]


@dataclass
class Linkage:
    """Where every 20x row goes: `parent` row (-1 = not kept) and `slot` (0..15, -1 = not kept)."""

    parent: np.ndarray  # [M] int64
    slot: np.ndarray  # [M] int64
    counts: dict[str, int]


def link_children(
    coords_5x: np.ndarray,
    coords_20x: np.ndarray,
    size: int,
    checks: CheckLog,
    misaligned: str = "fail",
    seed: int = 0,
) -> Linkage:
    """Link every 20x patch to its 5x parent and slot; runs single_parent, one_child_per_slot and aligned_grid.

    misaligned="nearest" (grids made elsewhere, not on our slot lattice): each child goes to the slot whose origin
    is nearest, and a slot claimed by several children keeps the nearest one; ties are broken by a permutation
    drawn from `seed` over the children in coordinate order, so the choice does not depend on row order.
    """
    if misaligned not in MISALIGNED_MODES:
        raise PipelineError(f"misaligned = {misaligned!r}; choose one of {', '.join(MISALIGNED_MODES)}")
    slot_size = size // GRID
    n_children = len(coords_20x)
    child, parent = find_holders(coords_5x, coords_20x, size)
    holders = np.bincount(child, minlength=n_children)
    if np.any(holders > 1):
        k = int(np.argmax(holders > 1))
        boxes = ", ".join(f"({x}, {y})" for x, y in coords_5x[parent[child == k]])
        checks.fail(
            "single_parent",
            f"{int(np.sum(holders > 1))} 20x patch(es) lie inside two or more 5x patches, e.g. 20x "
            f"({coords_20x[k, 0]}, {coords_20x[k, 1]}) inside 5x {boxes} (size {size})",
        )
    checks.passed("single_parent")

    offset = np.take(coords_20x, child, axis=0) - np.take(coords_5x, parent, axis=0)
    aligned = (offset[:, 0] % slot_size == 0) & (offset[:, 1] % slot_size == 0)
    nearest = misaligned == "nearest"
    slot = slot_of_offset(offset, slot_size, nearest)
    keep = np.ones(len(child), dtype=bool)
    n_misaligned = int(np.sum(~aligned))
    if not nearest:
        _fail_on_shared_slots(child, parent, slot, coords_20x, coords_5x, checks)
        if n_misaligned:
            k = int(np.argmax(~aligned))
            checks.fail(
                "aligned_grid",
                f"{n_misaligned} of {n_children} 20x patches are not at a slot offset (multiple of {slot_size} px) "
                f"of their 5x parent, e.g. 20x ({coords_20x[child[k], 0]}, {coords_20x[child[k], 1]}) at offset "
                f"({offset[k, 0]}, {offset[k, 1]}) in 5x ({coords_5x[parent[k], 0]}, {coords_5x[parent[k], 1]}); "
                "the grids are not aligned (misaligned: nearest keeps the nearest child per slot)",
            )
        checks.passed("aligned_grid")
    else:
        origin = np.stack([slot % GRID, slot // GRID], axis=1) * slot_size
        distance = np.sum((offset - origin) ** 2, axis=1)
        canonical = np.lexsort((coords_20x[:, 0], coords_20x[:, 1]))
        tiebreak = np.empty(n_children, dtype=np.int64)
        tiebreak[canonical] = np.random.default_rng(seed).permutation(n_children)
        cell = parent * SLOTS + slot
        order = np.lexsort((tiebreak[child], distance, cell))
        first = np.ones(len(order), dtype=bool)
        first[1:] = cell[order][1:] != cell[order][:-1]
        keep[order] = first
        checks.passed("one_child_per_slot", "nearest mode: one child kept per slot")
        checks.resolved(
            "aligned_grid",
            f"nearest mode (seed {seed}): {n_misaligned} misaligned child(ren) placed in the nearest slot, "
            f"{int(np.sum(~keep))} dropped where a nearer child held the slot",
        )

    parent_of = np.full(n_children, -1, dtype=np.int64)
    slot_of = np.full(n_children, -1, dtype=np.int64)
    parent_of[child[keep]] = parent[keep]
    slot_of[child[keep]] = slot[keep]
    per_parent = np.bincount(parent[keep], minlength=len(coords_5x))
    counts = {
        "parents": len(coords_5x),
        "children": n_children,
        "linked": int(np.sum(keep)),
        "orphans": int(np.sum(holders == 0)),
        "empty_parents": int(np.sum(per_parent == 0)),
        "misaligned": n_misaligned,
        "dropped_in_slot_conflicts": int(np.sum(~keep)),
        "max_children_per_parent": int(per_parent.max()) if len(per_parent) else 0,
    }
    return Linkage(parent_of, slot_of, counts)


def _fail_on_shared_slots(
    child: np.ndarray,
    parent: np.ndarray,
    slot: np.ndarray,
    coords_20x: np.ndarray,
    coords_5x: np.ndarray,
    checks: CheckLog,
) -> None:
    """Fail one_child_per_slot where two children fall in one cell of a parent's 4x4 block."""
    cell = parent * SLOTS + slot
    per_cell = np.bincount(cell, minlength=len(coords_5x) * SLOTS)
    if np.any(per_cell > 1):
        crowded = int(np.argmax(per_cell > 1))
        a, b = child[cell == crowded][:2]
        p, k = divmod(crowded, SLOTS)
        checks.fail(
            "one_child_per_slot",
            f"{int(np.sum(per_cell[per_cell > 1] - 1))} extra child(ren) share a slot with another child, e.g. "
            f"20x ({coords_20x[a, 0]}, {coords_20x[a, 1]}) and ({coords_20x[b, 0]}, {coords_20x[b, 1]}) both in "
            f"slot {k} of 5x ({coords_5x[p, 0]}, {coords_5x[p, 1]})",
        )
    checks.passed("one_child_per_slot")


# --- assembly and its post-conditions ------------------------------------------------------------------------


def assemble(
    features_20x: np.ndarray, coords_20x: np.ndarray, n_parents: int, linkage: Linkage
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[N,16,D] features, [N,16,2] coords and [N,16] mask, row i = 5x row i; missing children are zeros."""
    dim = features_20x.shape[1]
    features = np.zeros((n_parents, SLOTS, dim), dtype=np.float32)
    coords = np.zeros((n_parents, SLOTS, 2), dtype=np.int64)
    mask = np.zeros((n_parents, SLOTS), dtype=bool)
    kept = linkage.parent >= 0
    rows, slots = linkage.parent[kept], linkage.slot[kept]
    features[rows, slots] = features_20x[kept]
    coords[rows, slots] = coords_20x[kept]
    mask[rows, slots] = True
    return features, coords, mask


def verify_hierarchical(
    coords_5x: np.ndarray, coords: np.ndarray, mask: np.ndarray, size: int, checks: CheckLog, nearest: bool = False
) -> None:
    """Check an assembled hierarchy against the 5x coords it claims to follow (child_inside_parent, row_order)."""
    if coords.shape[:2] != (len(coords_5x), SLOTS) or mask.shape != (len(coords_5x), SLOTS):
        checks.fail(
            "row_order",
            f"hierarchical coords {list(coords.shape)} / mask {list(mask.shape)} do not match "
            f"{len(coords_5x)} 5x rows x {SLOTS} slots",
        )
    rows, slots = np.nonzero(mask)
    offset = coords[rows, slots] - coords_5x[rows]
    outside = ~np.all((offset >= 0) & (offset < size), axis=1)
    if np.any(outside):
        k = int(np.argmax(outside))
        checks.fail(
            "row_order",
            f"{int(np.sum(outside))} child(ren) of hierarchical row {rows[k]} lie outside 5x row {rows[k]} "
            f"({coords_5x[rows[k], 0]}, {coords_5x[rows[k], 1]}); rows are not in the 5x file's order",
        )
    checks.passed("row_order", f"{len(coords_5x)} rows in 5x order")
    wrong_slot = slot_of_offset(offset, size // GRID, nearest) != slots
    if not nearest:
        wrong_slot |= np.any(offset % (size // GRID) != 0, axis=1)
    if np.any(wrong_slot):
        k = int(np.argmax(wrong_slot))
        checks.fail(
            "child_inside_parent",
            f"{int(np.sum(wrong_slot))} child(ren) are not in the slot their offset names, e.g. row {rows[k]} "
            f"slot {slots[k]} at offset ({offset[k, 0]}, {offset[k, 1]})",
        )
    checks.passed("child_inside_parent", f"{len(rows)} children in place")


# --- one slide -----------------------------------------------------------------------------------------------


def _backbone(attrs_5x: Mapping[str, Any], attrs_20x: Mapping[str, Any]) -> str:
    for attrs in (attrs_5x, attrs_20x):
        for key in ("backbone", "encoder"):
            if attrs.get(key):
                return str(attrs[key])
    return ""


def build_hierarchical(
    features_5x_path: PathLike,
    features_20x_path: PathLike,
    out_path: PathLike,
    report_path: PathLike,
    *,
    level0_mag: float | None = None,
    misaligned: str = "fail",
    seed: int = 0,
    slide: str | None = None,
) -> dict[str, Any]:
    """Link one slide's 20x features to its 5x parents, write the hierarchical file and the report.

    The report is written whether the checks pass or not; a failed check raises HierarchyCheckError (after the
    report is on disk) and writes no hierarchical file. Inputs are only read.
    """
    features_5x_path, features_20x_path = Path(features_5x_path), Path(features_20x_path)
    out_path, report_path = Path(out_path), Path(report_path)
    slide = slide or features_5x_path.stem
    inputs = {features_5x_path.resolve(), features_20x_path.resolve()}
    for target in (out_path, report_path):
        if target.resolve() in inputs:
            raise SlideError(slide, f"output {target} is one of the inputs; inputs are never rewritten")
    if misaligned not in MISALIGNED_MODES:
        raise SlideError(slide, f"misaligned = {misaligned!r}; choose one of {', '.join(MISALIGNED_MODES)}")
    try:
        f5, c5, attrs_5x = read_features(features_5x_path)
        f20, c20, attrs_20x = read_features(features_20x_path)
    except (FileNotFoundError, KeyError) as err:
        raise SlideError(slide, f"cannot read features: {err}") from err
    try:
        size, size_source = parent_size_level0(attrs_5x, attrs_20x, level0_mag)
    except PipelineError as err:
        raise SlideError(slide, f"{err} ({features_5x_path}, {features_20x_path})") from err

    checks = CheckLog()
    report: dict[str, Any] = {
        "slide": slide,
        "backbone": _backbone(attrs_5x, attrs_20x),
        "status": "passed",
        "failed_check": None,
        "inputs": {"features_5x": str(features_5x_path), "features_20x": str(features_20x_path)},
        "output": str(out_path),
        "patch_size_level0_5x": size,
        "slot_size_level0": size // GRID,
        "size_source": size_source,
        "misaligned_mode": misaligned,
        "seed": seed,
        "counts": {},
        "check_order": list(CHECKS),
        "checks": checks.results,
    }
    try:
        c5, c20 = check_inputs(f5, c5, f20, c20, checks)
        linkage = link_children(c5, c20, size, checks, misaligned=misaligned, seed=seed)
        features, coords, mask = assemble(f20, c20, len(c5), linkage)
        verify_hierarchical(c5, coords, mask, size, checks, nearest=misaligned == "nearest")
    except ConsistencyError as err:
        report.update(status="failed", failed_check=err.check)
        write_json_atomic(report_path, report)
        raise HierarchyCheckError(slide, err.check, err.detail, report_path) from err

    counts = linkage.counts
    counts["children_per_parent"] = np.bincount(mask.sum(axis=1), minlength=SLOTS + 1).tolist()
    report["counts"] = counts
    attrs = {
        "backbone": report["backbone"],
        "source_5x": str(features_5x_path),
        "source_20x": str(features_20x_path),
        "patch_size_level0_5x": size,
        "slot_size_level0": size // GRID,
        "size_source": size_source,
        "misaligned_mode": misaligned,
        "seed": seed,
        **{f"n_{key}": counts[key] for key in COUNT_KEYS},
    }
    write_hierarchical(out_path, features, coords, mask, attrs)
    write_json_atomic(report_path, report)
    log.info(
        "%s: %d parents, %d/%d children linked, %d orphans, %d empty parents, S=%d (%s)",
        slide, counts["parents"], counts["linked"], counts["children"], counts["orphans"],
        counts["empty_parents"], size, size_source,
    )  # fmt: skip
    return report


# --- cohort --------------------------------------------------------------------------------------------------


def summarise_reports(report_paths: Iterable[PathLike], out_csv: PathLike) -> pd.DataFrame:
    """One row per slide report plus a `TOTAL` row summing the counts; written atomically as CSV."""
    rows = []
    for path in sorted(Path(p) for p in report_paths):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise PipelineError(f"hierarchy report {path}: cannot read it ({err})") from err
        counts = report.get("counts") or {}
        rows.append(
            {
                "slide": report.get("slide", path.stem),
                "backbone": report.get("backbone", ""),
                "status": report.get("status", ""),
                "failed_check": report.get("failed_check") or "",
                "patch_size_level0_5x": report.get("patch_size_level0_5x"),
                "misaligned_mode": report.get("misaligned_mode", ""),
                **{key: counts.get(key, math.nan) for key in COUNT_KEYS},
                "report": str(path),
            }
        )
    table = pd.DataFrame(rows, columns=[
        "slide", "backbone", "status", "failed_check", "patch_size_level0_5x", "misaligned_mode",
        *COUNT_KEYS, "report",
    ])  # fmt: skip
    n_failed = int((table["status"] != "passed").sum())
    total = {key: table[key].sum(min_count=0) for key in COUNT_KEYS}
    total.update(slide="TOTAL", status=f"{len(table) - n_failed} passed, {n_failed} failed")
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    for key in ("patch_size_level0_5x", *COUNT_KEYS):
        table[key] = table[key].astype("Int64")
    write_text_atomic(out_csv, table.to_csv(index=False))
    return table
