"""Multi-slide extraction jobs: slides grouped into chunks, each chunk extracted by one process into its folder with
every backbone, then each slide's files taken into the features layout.

One process per chunk pays torch's and the backbones' start-up once for all its slides, and decodes each parent
once for all backbones. A slide that fails
inside a chunk leaves a record with its reason instead of its files; the chunk job itself succeeds, so the other
slides' files are kept (a failed Snakemake job's outputs would be deleted), and the per-slide step that takes
the files fails for that slide alone, with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pipeline.errors import SlideError
from pipeline.formats import PathLike, atomic_path, write_json_atomic
from pipeline.wiring.layout import CHUNK_5X, CHUNK_20X, CHUNK_FAILED

CHUNK_NAME = "chunk{:04d}"


def chunks(slide_ids: list[str], slides_per_job: int) -> dict[str, list[str]]:
    """Chunk name -> its slides: the sorted ids cut into runs of `slides_per_job` (stable for a fixed cohort)."""
    if slides_per_job < 1:
        raise ValueError(f"slides_per_job must be >= 1, got {slides_per_job}")
    ids = sorted(slide_ids)
    return {CHUNK_NAME.format(i // slides_per_job): ids[i : i + slides_per_job]
            for i in range(0, len(ids), slides_per_job)}


def chunk_features(chunk_dir: PathLike, backbone: str, slide_id: str) -> tuple[Path, Path]:
    """A slide's 5x and 20x files of one backbone inside its chunk folder."""
    d = Path(chunk_dir)
    return (d / CHUNK_5X.format(backbone=backbone, slide=slide_id), d / CHUNK_20X.format(backbone=backbone, slide=slide_id))


def failure_record(chunk_dir: PathLike, slide_id: str) -> Path:
    return Path(chunk_dir) / CHUNK_FAILED.format(slide=slide_id)


def record_failure(chunk_dir: PathLike, slide_id: str, reason: str) -> None:
    write_json_atomic(failure_record(chunk_dir, slide_id), {"slide": slide_id, "reason": reason})


def take_features(chunk_dir: PathLike, backbone: str, slide_id: str, out_5x: PathLike, out_20x: PathLike) -> None:
    """Place a slide's chunk files at their features paths (hard links, so no second copy on disk; else copies;
    atomically), or raise its recorded failure."""
    (f5, f20), failed = chunk_features(chunk_dir, backbone, slide_id), failure_record(chunk_dir, slide_id)
    if failed.exists():
        raise SlideError(slide_id, json.loads(failed.read_text())["reason"])
    if not (f5.exists() and f20.exists()):
        raise SlideError(slide_id, f"chunk folder {chunk_dir} has no {backbone} features of this slide; rerun its "
                                   "chunk")
    for src, dest in ((f5, Path(out_5x)), (f20, Path(out_20x))):
        with atomic_path(dest) as tmp:
            tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError:  # another file system, or links not allowed: copy
                shutil.copyfile(src, tmp)
            os.utime(tmp)  # newer than the chunk folder's completion stamp, so Snakemake sees it as up to date
