"""Benchmark: feature extraction's loader, measured against baselines in the same run.

(a) end-to-end patches/s of `extract_features` against the same model on the same batches pre-loaded in memory
    (model only): the loader's efficiency, ratio target >= 0.9.
(b) our one-read-per-parent loading (read the 5x region once at 20x resolution, cut the children, shrink for 5x)
    against reading every 5x and 20x patch separately from level 0 and resizing each (CLAM / ViLa-MIL), one
    process each: patches/s and the speed-up.
(c) megapixels decoded per second by our parent reads against a bare `read_region` loop over the same regions at
    the same pyramid level (the decode ceiling of one core).

Slides: CMU-1-Small-Region (20x, real H&E) and a synthetic 40x-base demo slide; patch grids from the real
segmentation and patching stages. Each pass opens its slide with a fresh 32 MiB tile cache, so no pass profits
from an earlier one; the best of --repeats passes is reported.

    python bench/extract.py [--backbones tiny quiltnet] [--slides cmu synthetic]
        [--workers 0 1] [--batch-size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import openslide
import torch

from pipeline.demo import render_slide, write_pyramid_tiff
from pipeline.features import create_backbone
from pipeline.features.extract import encode_images, extract_features
from pipeline.features.loader import (
    GridGeometry,
    ParentDataset,
    child_patches,
    collate_parents,
    parent_patch,
    read_parent,
)
from pipeline.formats import PatchGrid, read_patches
from pipeline.patching import PatchParams, patch_slide
from pipeline.slide import Slide, open_slide
from pipeline.tissue import TissueParams, segment_slide
from pipeline.wiring.cohort import BUNDLED_SLIDE

CACHE_BYTES = 32 << 20


def fresh(path: Path) -> Slide:
    """A slide handle with its own empty tile cache (bench only: reaches into the handle to set it)."""
    slide = open_slide(path)
    slide._osr.set_cache(openslide.OpenSlideCache(CACHE_BYTES))
    return slide


def grid_of(path: Path, work: Path) -> PatchGrid:
    """Patch coordinates from the pipeline's own segmentation and patching."""
    sid = path.stem
    segment_slide(path, sid, work / f"{sid}.png", work / f"{sid}.geojson", work / f"{sid}.json",
                  work / f"{sid}_qc.png", TissueParams())
    patch_slide(path, sid, work / f"{sid}.geojson", work / f"{sid}.h5", work / f"{sid}_pqc.png", PatchParams())
    return read_patches(work / f"{sid}.h5")


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def children_of(grid: PatchGrid) -> list[np.ndarray]:
    return [np.flatnonzero(grid.parent_of_20x == i) for i in range(len(grid.coords_5x))]


def ours(path: Path, grid: PatchGrid, g: GridGeometry) -> None:
    """One region read per parent, children cut from it, the 5x patch shrunk from it."""
    rows = children_of(grid)
    with fresh(path) as slide:
        for i, (x, y) in enumerate(grid.coords_5x):
            region = read_parent(slide, x, y, g)
            parent_patch(region, g.patch_size)
            kids = grid.coords_20x[rows[i]]
            slots = ((kids[:, 1] - y) // g.s20) * 4 + (kids[:, 0] - x) // g.s20
            child_patches(region, slots, g.patch_size)


def _level0_patch(osr: openslide.OpenSlide, x: int, y: int, side: int, out: int) -> np.ndarray:
    rgb = np.asarray(osr.read_region((int(x), int(y)), 0, (side, side)).convert("RGB"))
    return cv2.resize(rgb, (out, out), interpolation=cv2.INTER_AREA) if side != out else rgb


def baseline(path: Path, grid: PatchGrid, g: GridGeometry) -> None:
    """Every 5x and every 20x patch read on its own from level 0 and resized (the CLAM / ViLa-MIL way)."""
    osr = openslide.OpenSlide(str(path))
    osr.set_cache(openslide.OpenSlideCache(CACHE_BYTES))
    try:
        for x, y in grid.coords_5x:
            _level0_patch(osr, x, y, g.s5, g.patch_size)
        for x, y in grid.coords_20x:
            _level0_patch(osr, x, y, g.s20, g.patch_size)
    finally:
        osr.close()


def bare_reads(path: Path, grid: PatchGrid, g: GridGeometry) -> float:
    """The ceiling: `read_region` over the parents' regions at the level our reads use; returns Mpx read."""
    with fresh(path) as slide:
        level = slide.best_level(g.s5 / (4 * g.patch_size))
        side = int(round(g.s5 / slide.level_downsamples[level]))
        osr = slide._osr
        for x, y in grid.coords_5x:
            osr.read_region((int(x), int(y)), level, (side, side))
    return len(grid.coords_5x) * side * side / 1e6


def loader_table(slides: dict[str, tuple[Path, PatchGrid]], repeats: int) -> None:
    print("\n(b) loading only, one process: one read per 5x parent vs every patch read separately from level 0")
    print(f"{'slide':<22}{'5x':>6}{'20x':>7}{'ours p/s':>11}{'baseline p/s':>14}{'speed-up':>10}")
    for name, (path, grid) in slides.items():
        g = GridGeometry.from_grid(grid, name)
        n = len(grid.coords_5x) + len(grid.coords_20x)
        t_ours = best_of(repeats, lambda: ours(path, grid, g))
        t_base = best_of(repeats, lambda: baseline(path, grid, g))
        print(f"{name:<22}{len(grid.coords_5x):>6}{len(grid.coords_20x):>7}{n / t_ours:>11.1f}{n / t_base:>14.1f}"
              f"{t_base / t_ours:>9.2f}x")
    print("\n(c) decode rate of one core: our parent reads (read + RGBA->RGB + resize to 20x) vs bare read_region")
    print(f"{'slide':<22}{'Mpx':>8}{'ours Mpx/s':>12}{'bare Mpx/s':>12}{'ratio':>8}")
    for name, (path, grid) in slides.items():
        g = GridGeometry.from_grid(grid, name)
        mpx = bare_reads(path, grid, g)
        t_bare = best_of(repeats, lambda: bare_reads(path, grid, g))

        def parents_only() -> None:
            with fresh(path) as slide:
                for x, y in grid.coords_5x:
                    read_parent(slide, x, y, g)

        t_ours = best_of(repeats, parents_only)
        print(f"{name:<22}{mpx:>8.1f}{mpx / t_ours:>12.1f}{mpx / t_bare:>12.1f}{t_bare / t_ours:>8.2f}")


def model_table(slides: dict[str, tuple[Path, PatchGrid]], backbones: list[str], batch_size: int,
                workers: list[int], repeats: int) -> None:
    print(f"\n(a) end-to-end vs model only (same batches pre-loaded), batch {batch_size} patches, "
          f"{torch.get_num_threads()} torch threads, CPU fp32; end-to-end includes starting the worker pool")
    print(f"{'slide':<22}{'backbone':<10}{'workers':>8}{'patches':>8}{'end-to-end p/s':>16}{'model-only p/s':>16}"
          f"{'ratio':>8}")
    for bname in backbones:
        bb = create_backbone(bname, weights="random")
        for name, (path, grid) in slides.items():
            n = len(grid.coords_5x) + len(grid.coords_20x)
            ds = ParentDataset(path, name, grid, bb.preprocess)
            per = max(1, batch_size // 17)
            batches = [collate_parents([ds[i] for i in range(s, min(s + per, len(ds)))])["images"]
                       for s in range(0, len(ds), per)]
            ds.close()

            def model_only() -> None:
                with torch.inference_mode():
                    for images in batches:
                        encode_images(bb, images, batch_size, torch.device("cpu"))

            t_model = best_of(repeats, model_only)
            for w in workers:
                t_e2e = best_of(repeats, lambda: extract_features(bb, path, name, grid, batch_size=batch_size,
                                                                  num_workers=w, device="cpu", progress=False))
                print(f"{name:<22}{bname:<10}{w:>8}{n:>8}{n / t_e2e:>16.1f}{n / t_model:>16.1f}"
                      f"{t_model / t_e2e:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["tiny"], help="e.g. tiny quiltnet (ViT-B: slow on a CPU)")
    parser.add_argument("--slides", nargs="+", choices=["cmu", "synthetic"], default=["cmu", "synthetic"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="worker counts for (a)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synthetic-size", type=int, default=12288, help="level-0 side of the 40x synthetic slide")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        slides = {}
        if "cmu" in args.slides:
            slides["CMU-1-Small-Region"] = (BUNDLED_SLIDE, grid_of(BUNDLED_SLIDE, work))
        if "synthetic" in args.slides:
            synthetic = work / "synthetic_40x.tiff"
            write_pyramid_tiff(synthetic, render_slide("glandular", 5, args.synthetic_size, 0.25), 0.25)
            slides["synthetic 40x"] = (synthetic, grid_of(synthetic, work))
        loader_table(slides, args.repeats)
        model_table(slides, args.backbones, args.batch_size, args.workers, args.repeats)


if __name__ == "__main__":
    main()
