"""Comparing the results folders of two workflow runs, and finding which outputs a run rewrote.

Shared by tests/test_slurm.py and tests/test_reruns.py: a run through SLURM, or one interrupted and resumed,
must leave the same files as a plain local run. h5 files are compared by content (datasets and attrs, minus
attrs that legitimately differ between runs), JSON by parsed value, everything else byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.formats import read_h5

#: folders under results/ that record how a run went, not what it computed.
RUN_RECORDS = ("logs", "benchmarks", "status")
#: files under results/ that record how a run went.
RUN_RECORD_FILES = ("status.csv",)
#: attrs / JSON keys that may differ between two correct runs (clock, host, where the run happened).
VOLATILE_KEYS = frozenset(
    {"created", "created_at", "timestamp", "time", "hostname", "host", "elapsed_s", "duration_s", "workdir"}
)


def result_files(results: Path) -> dict[str, Path]:
    """relative path -> file, for every computed output under `results` (run records left out)."""
    out = {}
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(results)
        if path.is_dir() or rel.parts[0] in RUN_RECORDS or str(rel) in RUN_RECORD_FILES or is_partial_write(path):
            continue
        out[str(rel)] = path
    return out


def is_partial_write(path: Path) -> bool:
    """A temporary file of pipeline.formats.atomic_path (`.<name>.<random>.tmp`): never an output."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _stable(mapping: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k not in VOLATILE_KEYS}


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    return a == b


def file_differences(a: Path, b: Path) -> list[str]:
    """Why two output files differ (empty list: they hold the same result)."""
    if a.suffix == ".h5":
        data_a, attrs_a = read_h5(a)
        data_b, attrs_b = read_h5(b)
        problems = []
        if data_a.keys() != data_b.keys():
            problems.append(f"datasets {sorted(data_a)} vs {sorted(data_b)}")
        for name in sorted(data_a.keys() & data_b.keys()):
            if not _same_value(data_a[name], data_b[name]):
                problems.append(f"dataset {name!r} differs")
        attrs_a, attrs_b = _stable(attrs_a), _stable(attrs_b)
        for key in sorted(attrs_a.keys() | attrs_b.keys()):
            if not _same_value(attrs_a.get(key), attrs_b.get(key)):
                problems.append(f"attr {key!r}: {attrs_a.get(key)!r} vs {attrs_b.get(key)!r}")
        return problems
    if a.suffix == ".json":
        ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
        if isinstance(ja, dict) and isinstance(jb, dict):
            ja, jb = _stable(ja), _stable(jb)
        return [] if ja == jb else ["JSON content differs"]
    return [] if a.read_bytes() == b.read_bytes() else ["bytes differ"]


def assert_same_results(results_a: Path, results_b: Path) -> None:
    """Both results folders hold the same outputs with the same content."""
    files_a, files_b = result_files(results_a), result_files(results_b)
    assert files_a.keys() == files_b.keys(), (
        f"only in {results_a}: {sorted(files_a.keys() - files_b.keys())}; "
        f"only in {results_b}: {sorted(files_b.keys() - files_a.keys())}"
    )
    assert files_a, f"{results_a} holds no outputs"
    differing = {rel: why for rel in files_a if (why := file_differences(files_a[rel], files_b[rel]))}
    assert not differing, f"outputs differ between {results_a} and {results_b}: {differing}"


def mtimes(results: Path) -> dict[str, int]:
    """relative path -> mtime (ns) of every computed output under `results`."""
    return {rel: path.stat().st_mtime_ns for rel, path in result_files(results).items()}


def rewritten(before: dict[str, int], after: dict[str, int]) -> set[str]:
    """Outputs written between two `mtimes` snapshots (new files count as written)."""
    return {rel for rel, t in after.items() if before.get(rel) != t}
