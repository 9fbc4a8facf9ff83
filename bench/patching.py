"""Seconds per slide for segmentation + patching: ours (raster tissue fractions, all patches at once) against a
CLAM-style baseline in the same run (per-patch point-in-contour tests in a Python loop: CLAM's `four_pt` rule,
four points around the patch centre, and the centre outside every hole).

    python bench/patching.py [--demo-slides 4] [--size 4096]

Both use the same segmentation; the table reports the whole stage per slide and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.demo import CLASSES, make_demo_slide
from pipeline.patching import PatchParams, build_grid, level0_patch_sizes
from pipeline.slide import open_slide
from pipeline.tissue import Polygon, TissueParams, segment_tissue
from pipeline.wiring.cohort import BUNDLED_SLIDE


def clam_style_grid(polygons, slide_size, level0_mag, patch_size):
    """Per-patch loop: a 20x patch is kept if any of 4 points at centre +- size/4 is in a contour and not in a hole."""
    s20, s5 = level0_patch_sizes(level0_mag, patch_size, "bench")
    kept = []
    for poly in polygons:
        outer = poly.outer.astype(np.float32).reshape(-1, 1, 2)
        holes = [h.astype(np.float32).reshape(-1, 1, 2) for h in poly.holes]
        x0, y0 = (np.floor(poly.outer.min(0) / s20) * s20).astype(int)
        x1, y1 = poly.outer.max(0).astype(int)
        for y in range(y0, y1, s20):
            for x in range(x0, x1, s20):
                cx, cy = x + s20 / 2, y + s20 / 2
                if any(cv2.pointPolygonTest(h, (cx, cy), False) > 0 for h in holes):
                    continue
                d = s20 / 4
                points = ((cx - d, cy - d), (cx + d, cy - d), (cx - d, cy + d), (cx + d, cy + d))
                if any(cv2.pointPolygonTest(outer, p, False) >= 0 for p in points):
                    kept.append((x, y))
    kept = np.unique(np.asarray(kept, dtype=np.int64).reshape(-1, 2), axis=0)
    parents = np.unique(kept // s5 * s5, axis=0)
    return parents, kept


def time_patching(polygons, size, mag, repeats: int) -> tuple[float, float, int, int, int]:
    params = PatchParams()
    ours, base = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        grid, _ = build_grid(polygons, size, mag, params, "bench")
        ours.append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        _, kept = clam_style_grid(polygons, size, mag, params.patch_size)
        base.append(time.perf_counter() - t1)
    return min(ours), min(base), len(grid.coords_5x), len(grid.coords_20x), len(kept)


def time_slide(path: Path, repeats: int):
    """Segmentation (shared) plus each patching method; also returns the polygons for the scaled-up row."""
    seg_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with open_slide(path) as slide:
            seg = segment_tissue(slide, TissueParams())
            size, mag = slide.dimensions, slide.level0_magnification
        seg_times.append(time.perf_counter() - t0)
    return (min(seg_times), *time_patching(seg.polygons, size, mag, repeats)), (seg.polygons, size, mag)


def scaled(polygons, size, factor: int):
    """The same tissue geometry on a slide `factor` times larger (a TCGA-sized 40x slide without the pixels)."""
    out = [Polygon(p.outer * factor, [h * factor for h in p.holes]) for p in polygons]
    return out, (size[0] * factor, size[1] * factor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-slides", type=int, default=4)
    parser.add_argument("--size", type=int, default=4096, help="demo slide side (px, 0.5 um/px)")
    parser.add_argument("--large", type=int, default=16384, help="side of one extra 40x synthetic slide (0 = none)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        slides = [BUNDLED_SLIDE]
        for i in range(args.demo_slides):
            label = CLASSES[i % len(CLASSES)]
            path = Path(tmp) / f"demo_{label}_{i:02d}.tiff"
            make_demo_slide(path, path.stem, label, seed=7, size=args.size, mpp=0.5)
            slides.append(path)
        if args.large:
            path = Path(tmp) / f"synthetic_40x_{args.large}.tiff"
            make_demo_slide(path, path.stem, "solid", seed=7, size=args.large, mpp=0.25)
            slides.append(path)
        rows, geometry = [], {}
        for p in slides:
            row, geometry[p.stem] = time_slide(p, args.repeats)
            rows.append((p.stem, *row))
    # patching alone on a TCGA-sized geometry: the 40x synthetic slide's tissue scaled x6 (about 98k px square)
    if args.large:
        polygons, size, mag = geometry[slides[-1].stem]
        big, big_size = scaled(polygons, size, 6)
        rows.append((f"scaled x6 ({big_size[0]} px)", 0.0, *time_patching(big, big_size, mag, 1)))
    head = f"{'slide':<28} {'5x':>5} {'20x':>6} {'20x CLAM':>8} {'seg s':>7} {'patch s':>8} {'CLAM patch s':>12}"
    print(head + f" {'patch ratio':>11} {'stage ratio':>11}")
    for name, seg, ours, base, n5, n20, n20b in rows:
        print(
            f"{name:<28} {n5:>5} {n20:>6} {n20b:>8} {seg:>7.3f} {ours:>8.4f} {base:>12.4f} "
            f"{base / ours:>10.1f}x {(seg + base) / (seg + ours):>10.2f}x"
        )


if __name__ == "__main__":
    main()
