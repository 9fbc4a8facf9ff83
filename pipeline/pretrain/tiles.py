"""The HLSS tile pool: a seeded sample of each pretraining slide's 20x patches, read once from the slide into one h5.

Pretraining draws thousands of batches of tiles; reading them from the whole-slide images each step would make the
slide decoder the bottleneck (and a killed run would read them again). The pool is read once, by the coordinates of
`patches/{slide}.h5`, exactly as extraction reads a 20x patch. A slide that cannot be read is left out of the pool
with its reason (logged and kept in the pool's attrs); the rest of the cohort is pretrained on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pipeline.errors import PipelineError, SlideError
from pipeline.formats import PathLike, TilePoolIndex, read_patches, write_tile_pool
from pipeline.readers import DEFAULT_READER
from pipeline.seeding import slide_rng
from pipeline.slide import check_patches_match, open_slide, recorded_mpp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSlide:
    slide_id: str
    case_id: str
    slide_path: Path
    patches_path: Path


def tile_sample(slide_id: str, n_patches: int, tiles_per_slide: int, seed: int) -> np.ndarray:
    """Sorted rows of the 20x grid to pool: seeded per slide id, so adding slides to a cohort keeps each slide's
    sample."""
    rng = slide_rng(seed, slide_id)
    k = min(n_patches, tiles_per_slide)
    return np.sort(rng.choice(n_patches, size=k, replace=False)) if k else np.zeros(0, np.int64)


def read_slide_tiles(
    slide: PoolSlide, tiles_per_slide: int, seed: int, reader: str = DEFAULT_READER
) -> tuple[np.ndarray, np.ndarray, int]:
    """(tiles [n, S, S, 3] uint8, their level-0 coords [n, 2], S) of one slide; SlideError when unreadable."""
    grid = read_patches(slide.patches_path)
    size = int(grid.attrs["patch_size"])
    s20 = int(grid.attrs["patch_size_level0_20x"])
    rows = tile_sample(slide.slide_id, len(grid.coords_20x), tiles_per_slide, seed)
    coords = grid.coords_20x[rows]
    mpp = recorded_mpp(grid.attrs, slide.slide_id, slide.patches_path)
    with open_slide(slide.slide_path, slide.slide_id, mpp=mpp, reader=reader) as wsi:
        check_patches_match(wsi, grid.attrs, slide.patches_path)
        tiles = [wsi.read_region_scaled(int(x), int(y), s20, size) for x, y in coords]
    return (np.stack(tiles) if tiles else np.zeros((0, size, size, 3), np.uint8)), coords, size


def build_tile_pool(
    slides: Sequence[PoolSlide],
    out: PathLike,
    *,
    tiles_per_slide: int = 32,
    seed: int = 0,
    reader: str = DEFAULT_READER,
) -> TilePoolIndex:
    """Read every slide's sample and write the pool `out`. Needs at least one readable slide with two tiles."""
    if tiles_per_slide < 2:
        raise PipelineError(f"tiles_per_slide must be at least 2 (two patches per slide per step), got {tiles_per_slide}")
    failed: dict[str, str] = {}
    sizes: set[int] = set()

    def per_slide() -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
        for slide in slides:
            try:
                tiles, coords, size = read_slide_tiles(slide, tiles_per_slide, seed, reader)
            except (SlideError, OSError, KeyError, ValueError) as err:
                reason = err.reason if isinstance(err, SlideError) else f"{type(err).__name__}: {err}"
                log.error("slide '%s' is left out of the tile pool: %s", slide.slide_id, reason)
                failed[slide.slide_id] = reason
                continue
            if len(tiles) < 2:
                failed[slide.slide_id] = f"{len(tiles)} 20x patch(es); pretraining needs two per slide"
                log.warning("slide '%s' is left out of the tile pool: %s", slide.slide_id, failed[slide.slide_id])
                continue
            sizes.add(size)
            if len(sizes) > 1:
                raise PipelineError(f"slide '{slide.slide_id}': patch size {size} differs from the pool's {sizes}")
            log.info("%s: %d tiles", slide.slide_id, len(tiles))
            yield slide.slide_id, slide.case_id, tiles, coords
        attrs["failed"] = json.dumps(failed)  # read by write_tile_pool once every slide is in

    if not slides:
        raise PipelineError("no slides to pretrain on (pretrain.slides and the cohort leave none)")
    size = int(read_patches(slides[0].patches_path).attrs["patch_size"])
    attrs = {"tiles_per_slide": tiles_per_slide, "seed": seed, "reader": reader, "magnification": "20x",
             "failed": json.dumps(failed)}
    index = write_tile_pool(out, per_slide(), size, attrs)
    if not index.slide_ids:
        Path(out).unlink(missing_ok=True)
        raise PipelineError(f"no slide could be read into the tile pool: {failed}")
    log.info("tile pool %s: %d tiles of %d slides, %d patients; %d slide(s) left out", out, len(index),
             len(index.slide_ids), len(set(index.case_ids)), len(failed))
    return index
