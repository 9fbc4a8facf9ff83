"""QuPath overlays: one GeoJSON tile per 5x and 20x patch, with the patch's scores as QuPath measurements.

A pathologist drags the file onto the slide in QuPath (or File > Import objects) and gets the patch grid as tile
objects, colourable by any measurement (Measure > Show measurement maps) and listed in the measurement table.

The shape follows QuPath's own GeoJSON reader, `PathObjectTypeAdapters` in
github.com/qupath/qupath, qupath-core/src/main/java/qupath/lib/io/PathObjectTypeAdapters.java (what I
relied on), and the "Units and origin" note of github.com/qupath/qupath-docs,
docs/advanced/exporting_annotations.rst:

- a FeatureCollection; QuPath reads only its "features" array, so the collection's own "properties"
  (slide_id, method, task, ...) are free for us and other readers;
- geometry: a GeoJSON Polygon in pixels of the full-resolution image with the origin at its top-left corner
  (x right, y down), which is exactly the level-0 frame of `patches/{slide}.h5`; the ring is closed
  (5 points);
- properties.objectType "tile" creates a tile object (`PathObjects.createTileObject`); a missing or unknown
  type would become an annotation;
- properties.name (a string) and properties.classification {"name": ...} (a PathClass; "5x" or "20x");
- properties.measurements: an object {name: number} (the form QuPath >= 0.4 writes and reads; it also reads
  the older [{"name", "value"}] list). NaN is not JSON, so a measurement without a finite value is left out of
  that tile (the tile is still written, so the grid is complete) and the file is dumped with allow_nan=False;
- no "id": QuPath takes only UUIDs there and otherwise assigns its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pipeline.formats import PathLike, json_default, write_text_atomic

Measurements = Mapping[str, np.ndarray]


def _num(value: float) -> int | float:
    """A JSON number: an int when integral (level-0 corners and sizes usually are), else the float."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"non-finite coordinate {value!r}")
    return int(v) if v.is_integer() else v


def _ring(x: float, y: float, size: float) -> list[list[int | float]]:
    """The patch's closed square ring, clockwise on screen (y down): QuPath does not care about winding."""
    x0, y0, x1, y1 = _num(x), _num(y), _num(x + size), _num(y + size)
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _columns(measurements: Measurements | None, n: int) -> dict[str, list[float | None]]:
    """Each measurement as a list of Python floats, None where not finite.

    Floats go through numpy's shortest repr of their own dtype, so a float32 0.91 is written 0.91, not
    0.9100000262260437.
    """
    out: dict[str, list[float | None]] = {}
    for name, values in (measurements or {}).items():
        arr = np.asarray(values)
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        arr = arr.reshape(-1)
        if len(arr) != n:
            raise ValueError(f"measurement {name!r} has {len(arr)} values for {n} patches")
        finite = np.isfinite(arr)
        out[str(name)] = [float(t) if ok else None for t, ok in zip(arr.astype(str), finite)]
    return out


def patch_features(
    coords: np.ndarray,
    patch_size_level0: float,
    measurements: Measurements | None,
    *,
    scale: str,
    name_prefix: str = "",
    present: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One QuPath tile Feature per patch, in row order.

    `coords` are level-0 top-left corners, either [P, 2] (rows of patches/{slide}.h5; names "5x r12") or
    hierarchical [R, S, 2] (parent row, child slot; names "20x r12 s3", with `present` [R, S] saying which
    slots hold a patch). Each measurement has one value per patch (same leading shape); non-finite values are
    left out of that tile's measurements.
    """
    coords = np.asarray(coords, dtype=float)
    if coords.ndim not in (2, 3) or coords.shape[-1] != 2:
        raise ValueError(f"coords must be [P, 2] or [R, S, 2], got {coords.shape}")
    slots = coords.shape[1] if coords.ndim == 3 else 0
    flat = coords.reshape(-1, 2)
    keep = np.ones(len(flat), dtype=bool) if present is None else np.asarray(present, dtype=bool).reshape(-1)
    if len(keep) != len(flat):
        raise ValueError(f"present has {len(keep)} entries for {len(flat)} patches")
    size = float(patch_size_level0)
    if not (math.isfinite(size) and size > 0):
        raise ValueError(f"patch size must be a positive number, got {patch_size_level0!r}")
    columns = _columns(measurements, len(flat))
    features = []
    for k in np.flatnonzero(keep):
        label = f"{name_prefix}{scale} r{k // slots} s{k % slots}" if slots else f"{name_prefix}{scale} r{k}"
        values = {name: col[k] for name, col in columns.items() if col[k] is not None}
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [_ring(flat[k, 0], flat[k, 1], size)]},
            "properties": {
                "objectType": "tile",
                "name": label,
                "classification": {"name": scale},
                "measurements": values,
            },
        })
    return features


def write_patch_geojson(
    path: PathLike,
    slide_id: str,
    coords_5x: np.ndarray,
    size_5x: float,
    measurements_5x: Measurements | None,
    coords_20x: np.ndarray,
    size_20x: float,
    measurements_20x: Measurements | None,
    *,
    present_20x: np.ndarray | None = None,
    **meta: Any,
) -> None:
    """Write the slide's 5x then 20x tiles as one FeatureCollection, atomically; `meta` (method, task, ...)
    goes to the collection's "properties" with the slide id.

    Raises ValueError rather than write NaN or Infinity anywhere (allow_nan=False), since QuPath's reader and
    strict JSON parsers reject them.
    """
    features = patch_features(coords_5x, size_5x, measurements_5x, scale="5x")
    features += patch_features(coords_20x, size_20x, measurements_20x, scale="20x", present=present_20x)
    doc = {
        "type": "FeatureCollection",
        "properties": {"slide_id": slide_id, **meta},
        "features": features,
    }
    write_text_atomic(path, json.dumps(doc, allow_nan=False, separators=(",", ":"), default=json_default) + "\n")


def read_patch_geojson(path: PathLike) -> dict[str, tuple[np.ndarray, np.ndarray, list[dict[str, float]]]]:
    """Per classification ("5x", "20x"): top-left corners [P, 2], sides [P] and measurements, in file order.

    For tests and users who want the tiles back as arrays; rings must be closed axis-aligned squares.
    """
    doc = json.loads(Path(path).read_text())
    if doc.get("type") != "FeatureCollection":
        raise ValueError(f"{path}: not a GeoJSON FeatureCollection")
    grouped: dict[str, tuple[list[np.ndarray], list[float], list[dict[str, float]]]] = {}
    for feature in doc["features"]:
        props = feature.get("properties") or {}
        scale = (props.get("classification") or {}).get("name", "")
        ring = np.asarray(feature["geometry"]["coordinates"][0], dtype=float)
        if ring.shape != (5, 2) or not (ring[0] == ring[-1]).all():
            raise ValueError(f"{path}: tile {props.get('name')!r} is not a closed 4-corner ring")
        lo, hi = ring.min(axis=0), ring.max(axis=0)
        side = hi - lo
        corners = all(np.isin(ring[:, a], [lo[a], hi[a]]).all() for a in (0, 1))
        if side[0] != side[1] or side[0] <= 0 or not corners:
            raise ValueError(f"{path}: tile {props.get('name')!r} is not an axis-aligned square")
        coords, sizes, values = grouped.setdefault(scale, ([], [], []))
        coords.append(lo)
        sizes.append(float(side[0]))
        values.append({str(k): float(v) for k, v in (props.get("measurements") or {}).items()})
    return {
        scale: (np.asarray(c, dtype=float).reshape(-1, 2), np.asarray(s, dtype=float), m)
        for scale, (c, s, m) in grouped.items()
    }
