"""Benchmark: feature extraction, end to end and by part, against baselines measured in the same run.

(a) Loader efficiency: end-to-end patches/s of `extract_features` (each loading mode: inline, decode threads,
    worker processes, `auto`) over model-only patches/s on the same batches pre-loaded in memory. Goal >= 0.9.
(b) Ours against a per-patch reader written here in the TRIDENT / CLAM manner: every 20x patch read on its own at
    level 0 and every 5x patch from the best lower level with OpenSlide, resized with PIL, encoded in batches of
    the same size by the same model (no overlap, as one process). Goal >= 1.3x end to end.
(c) Decode rate (Mpx/s) of each reader over the parents' kept-children boxes, against a bare OpenSlide
    `read_region` loop over the same boxes (PIL images, RGBA): the reader's cost without our cutting and resizing.
(d) Level pixels decoded per kept patch (5x and 20x together): ours, the former one-region-per-parent read
    (every parent's 4x4 box at level 0 and the 5x patch shrunk from it), and the per-patch baseline.
(e) Start-up of an extract job: seconds for a fresh interpreter to import torch and open_clip and build the
    backbone, ours (open_clip without transformers) against a plain `import open_clip`.

Slides: CMU-1-Small-Region (20x, real H&E, Aperio SVS), a synthetic 40x pyramid (levels 1/4/16, generic TIFF) and
the synthetic slide converted to OME-Zarr; grids from our segmentation and patching. Open_clip ViT-B/32
(`quiltnet`, random weights) is the issue's model; `tiny` is quicker. Each timing is the median of --repeats
interleaved rounds; OpenSlide handles get a fresh 32 MiB tile cache, so no pass profits from an earlier one.

    python bench/extract.py                                    # quiltnet, both slides, 3 rounds (~10 min, 2 cores)
    python bench/extract.py --backbones tiny --repeats 2       # quick
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import openslide
import torch

from pipeline.demo import render_slide, write_pyramid_tiff
from pipeline.features import create_backbone
from pipeline.features.architectures.base import Backbone
from pipeline.features.extract import encode_images, extract_features
from pipeline.features.loader import GridGeometry, ParentDataset, PatchBatcher, child_slots, read_boxes
from pipeline.formats import PatchGrid, read_patches
from pipeline.patching import PatchParams, patch_slide
from pipeline.readers import READERS, auto_reader, open_reader
from pipeline.readers.omezarr import write_ome_zarr
from pipeline.slide import open_slide
from pipeline.tissue import TissueParams, segment_slide
from pipeline.wiring.cohort import BUNDLED_SLIDE

CACHE_BYTES = 32 << 20
MODES = {"inline": (0, 0), "1 thread": (0, 1), "2 threads": (0, 2), "1 worker": (1, 0), "auto": ("auto", None)}


def grid_of(path: Path, work: Path) -> PatchGrid:
    """Patch coordinates from the pipeline's own segmentation and patching."""
    sid = path.stem
    segment_slide(path, sid, work / f"{sid}.png", work / f"{sid}.geojson", work / f"{sid}.json",
                  work / f"{sid}_qc.png", TissueParams())
    patch_slide(path, sid, work / f"{sid}.geojson", work / f"{sid}.h5", work / f"{sid}_pqc.png", PatchParams())
    return read_patches(work / f"{sid}.h5")


def median_of(repeats: int, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median seconds of each function over `repeats` interleaved rounds (so drifts of the machine hit all)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def fresh_osr(path: Path) -> openslide.OpenSlide:
    osr = openslide.OpenSlide(str(path))
    osr.set_cache(openslide.OpenSlideCache(CACHE_BYTES))
    return osr


# --- the per-patch baseline (TRIDENT / CLAM manner) ---------------------------------------------------------


def per_patch_images(path: Path, grid: PatchGrid, bb: Backbone) -> tuple[list[np.ndarray], int]:
    """Every patch read on its own (20x at level 0, 5x at the best lower level), RGB, resized with PIL to the
    model input; also the level pixels decoded."""
    from PIL import Image

    g = GridGeometry.from_grid(grid, path.stem)
    ps, size = g.patch_size, bb.preprocess.input_size
    mode = Image.Resampling.BICUBIC
    osr, decoded, out = fresh_osr(path), 0, []
    try:
        for side0, coords in ((g.s5, grid.coords_5x), (g.s20, grid.coords_20x)):
            level = osr.get_best_level_for_downsample(side0 / ps + 1e-6)
            side = int(round(side0 / osr.level_downsamples[level]))
            for x, y in coords:
                img = osr.read_region((int(x), int(y)), level, (side, side)).convert("RGB")
                decoded += side * side
                img = img.resize((ps, ps), Image.Resampling.LANCZOS) if side != ps else img
                out.append(np.asarray(img.resize((size, size), mode)).transpose(2, 0, 1))
    finally:
        osr.close()
    return out, decoded


def per_patch_end_to_end(path: Path, grid: PatchGrid, bb: Backbone, batch_size: int) -> None:
    images, _ = per_patch_images(path, grid, bb)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            encode_images(bb, torch.from_numpy(np.stack(images[start : start + batch_size])), batch_size,
                          torch.device("cpu"))


# --- tables --------------------------------------------------------------------------------------------------


def preloaded_batches(path: Path, name: str, grid: PatchGrid, bb: Backbone, batch_size: int) -> list[torch.Tensor]:
    ds = ParentDataset(path, name, grid, bb.preprocess)
    batcher, batches = PatchBatcher(batch_size), []
    for i in range(len(ds)):
        batches += [b.images[0] for b in batcher.add(ds[i])]
    batches += [b.images[0] for b in batcher.flush()]
    ds.close()
    return batches


def model_table(slides: dict[str, tuple[Path, PatchGrid]], backbones: list[str], batch_size: int,
                repeats: int) -> None:
    print(f"\n(a) loader efficiency = end-to-end / model-only patches/s; (b) ours (auto) / per-patch baseline; "
          f"batch {batch_size}, {torch.get_num_threads()} torch threads, CPU fp32")
    header = f"{'slide':<20}{'backbone':<10}{'patches':>8}{'model p/s':>10}"
    header += "".join(f"{m:>11}" for m in MODES) + f"{'baseline':>10}{'(b) ours/base':>14}"
    print(header)
    for bname in backbones:
        bb = create_backbone(bname, weights="random")
        for name, (path, grid) in slides.items():
            n = len(grid.coords_5x) + len(grid.coords_20x)
            batches = preloaded_batches(path, name, grid, bb, batch_size)

            def model_only() -> None:
                with torch.inference_mode():
                    for images in batches:
                        encode_images(bb, images, batch_size, torch.device("cpu"))

            model_only()  # warm-up: the first passes of a shape build the CPU kernels' plans
            fns: dict[str, Callable[[], object]] = {"model": model_only}
            for mode, (workers, threads) in MODES.items():
                fns[mode] = (lambda w=workers, t=threads: extract_features(
                    bb, path, name, grid, batch_size=batch_size, num_workers=w, threads=t, device="cpu",
                    progress=False))
            fns["baseline"] = lambda: per_patch_end_to_end(path, grid, bb, batch_size)
            t = median_of(repeats, fns)
            row = f"{name:<20}{bname:<10}{n:>8}{n / t['model']:>10.1f}"
            row += "".join(f"{t['model'] / t[m]:>11.2f}" for m in MODES)
            row += f"{n / t['baseline']:>10.1f}{t['baseline'] / t['auto']:>13.2f}x"
            print(row)
    print("    (mode columns: loader efficiency; baseline: its patches/s)")


def kept_boxes(grid: PatchGrid, g: GridGeometry) -> list[tuple[int, int, int, int]]:
    """Level-0 (x, y, w, h) of every box our loader reads for the kept children."""
    out = []
    for i, (x, y) in enumerate(grid.coords_5x):
        rows = np.flatnonzero(grid.parent_of_20x == i)
        for r0, r1, c0, c1 in read_boxes(child_slots(grid.coords_5x[i], grid.coords_20x[rows], g.s20, "b")):
            out.append((int(x) + c0 * g.s20, int(y) + r0 * g.s20, (c1 - c0) * g.s20, (r1 - r0) * g.s20))
    return out


def reader_table(slides: dict[str, tuple[Path, PatchGrid]], zarrs: dict[str, Path], repeats: int) -> None:
    print("\n(c) decode rate over the kept-children boxes at level 0: each reader vs a bare OpenSlide read_region "
          "loop (PIL RGBA)")
    print(f"{'slide':<20}{'Mpx':>7}{'bare p/s':>10}" + "".join(f"{r + ' Mpx/s':>17}" for r in READERS)
          + f"{'auto picks':>12}")
    for name, (path, grid) in slides.items():
        g = GridGeometry.from_grid(grid, name)
        boxes = kept_boxes(grid, g)
        mpx = sum(w * h for _, _, w, h in boxes) / 1e6

        def bare() -> None:
            osr = fresh_osr(path)
            for x, y, w, h in boxes:
                osr.read_region((x, y), 0, (w, h))
            osr.close()

        def through(reader: str) -> Callable[[], None]:
            target = zarrs[name] if reader == "omezarr" else path

            def run() -> None:
                r = open_reader(target, name, reader)
                if reader == "openslide":
                    r.set_cache(CACHE_BYTES)
                for x, y, w, h in boxes:
                    r.read(x, y, 0, (w, h))
                r.close()
            return run

        readers = [r for r in READERS if r != "tiffslide" or path.suffix.lower() in (".svs", ".tif", ".tiff")]
        t = median_of(repeats, {"bare": bare, **{r: through(r) for r in readers}})
        row = f"{name:<20}{mpx:>7.1f}{mpx / t['bare']:>10.1f}"
        row += "".join(f"{mpx / t[r]:>11.1f} ({t['bare'] / t[r]:.1f}x)" if r in t else f"{'-':>17}" for r in READERS)
        print(row + f"{auto_reader(path):>12}")


def pixels_table(slides: dict[str, tuple[Path, PatchGrid]], bb: Backbone) -> None:
    print("\n(d) level pixels decoded per kept patch (5x + 20x)")
    print(f"{'slide':<20}{'kept':>7}{'ours':>10}{'one region/parent':>19}{'per-patch':>11}{'ours / region':>15}")
    for name, (path, grid) in slides.items():
        n = len(grid.coords_5x) + len(grid.coords_20x)
        res = extract_features(bb, path, name, grid, batch_size=64, device="cpu", progress=False)
        g = GridGeometry.from_grid(grid, name)
        with open_slide(path) as slide:
            level = slide.best_level(g.s20 / g.patch_size)
            side = g.s5 / slide.level_downsamples[level]
        region = len(grid.coords_5x) * side * side
        _, per_patch = per_patch_images(path, grid, bb)
        print(f"{name:<20}{n:>7}{res.decoded_px / n:>10.0f}{region / n:>19.0f}{per_patch / n:>11.0f}"
              f"{res.decoded_px / region:>15.2f}")


STARTUP = """
import sys, time
start = time.perf_counter()
if sys.argv[1] == "plain":
    import open_clip  # noqa: F401  (with transformers, as open_clip imports it)
from pipeline.features import create_backbone
create_backbone(sys.argv[2], weights="random")
print(time.perf_counter() - start)
"""


def startup_table(backbones: list[str], repeats: int) -> None:
    import subprocess
    import sys

    print("\n(e) extract-job start-up: fresh interpreter -> backbone built (s)")
    print(f"{'backbone':<10}{'ours':>8}{'plain open_clip':>17}{'saved':>8}")
    for name in backbones:
        def run(mode: str) -> float:
            out = subprocess.run([sys.executable, "-c", STARTUP, mode, name], capture_output=True, text=True,
                                 check=True)
            return float(out.stdout.split()[-1])

        times = {m: statistics.median(run(m) for _ in range(repeats)) for m in ("ours", "plain")}
        print(f"{name:<10}{times['ours']:>8.2f}{times['plain']:>17.2f}{times['plain'] - times['ours']:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["quiltnet"], help="e.g. tiny quiltnet (ViT-B/32)")
    parser.add_argument("--slides", nargs="+", choices=["cmu", "synthetic"], default=["cmu", "synthetic"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synthetic-size", type=int, default=12288, help="level-0 side of the 40x synthetic slide")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        slides, zarrs = {}, {}
        if "cmu" in args.slides:
            slides["CMU-1-Small-Region"] = (BUNDLED_SLIDE, grid_of(BUNDLED_SLIDE, work))
        if "synthetic" in args.slides:
            synthetic = work / "synthetic_40x.tiff"
            write_pyramid_tiff(synthetic, render_slide("glandular", 5, args.synthetic_size, 0.25), 0.25)
            slides["synthetic 40x"] = (synthetic, grid_of(synthetic, work))
        for name, (path, _) in slides.items():
            with open_slide(path, name, reader="openslide") as slide:
                zarrs[name] = write_ome_zarr(slide, work / f"{path.stem}.zarr")
        reader_table(slides, zarrs, args.repeats)
        pixels_table(slides, create_backbone("tiny", weights="random"))
        model_table(slides, args.backbones, args.batch_size, args.repeats)
    startup_table(args.backbones, args.repeats)


if __name__ == "__main__":
    main()
