"""One slide's interpretability files, the same for every method: heatmaps, QuPath overlay, top-patch table.

From the ensemble's `PatchScores` (pipeline.explain.scores) of one slide, prediction writes into the folders of
`ExplanationFolders` (named here by their usual names, which the workflow's layout uses):

- `heatmaps/{slide}_{5x,20x}.png`: the scale's leading map over the slide overview, with the slide, the
  prediction and the map's name (a text, an attribute, "attention") in the title; `{slide}_{scale}_grid.png`, every
  map of the scale side by side, when asked for;
  all as 256-colour PNGs (about 4x smaller than exact colours: a cohort has many slides and methods);
- `gallery/{slide}_{5x,20x}.png`: the same heatmaps, smaller, for the first few slides only: what the Snakemake
  report shows (a report embedding every slide's full-size heatmaps would be gigabytes);
- `overlays/{slide}.geojson`: every 5x and 20x patch as a QuPath tile with all its scores as measurements;
- `top_patches/{slide}.csv`: per scale and map, the `top_n` patches with their level-0 coordinates.

The leading map of a scale is the one the output leans on most: the largest weight where the method has weights
(HiLa's attribute weights), otherwise the highest mean score (HiVE-MIL: the predicted class's best-matching text).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.explain.scores import PatchScores
from pipeline.formats import PathLike, read_patches, write_text_atomic

SCALES = ("5x", "20x")
OVERVIEW_DETAIL = 0.6


@dataclass(frozen=True)
class HeatmapOptions:
    long_side: int = 1500  # px of each heatmap's long side
    grid: bool = False  # also one small-multiples PNG per scale with every map
    top_n: int = 10  # patches per map in top_patches/{slide}.csv
    gallery_slides: int = 4  # slides whose heatmaps also go to gallery/ (the report's)
    gallery_long_side: int = 800


@dataclass(frozen=True)
class ExplanationFolders:
    """Where each kind of per-slide file goes; the caller names the folders, the files in them are per slide."""

    top_patches: Path
    overlays: Path
    heatmaps: Path
    gallery: Path

    @classmethod
    def in_folder(cls, out_dir: PathLike) -> "ExplanationFolders":
        """top_patches/, overlays/, heatmaps/ and gallery/ in `out_dir` (library use)."""
        out = Path(out_dir)
        return cls(out / "top_patches", out / "overlays", out / "heatmaps", out / "gallery")

    def make(self) -> None:
        """Create every folder, so each exists (a Snakemake directory output) even when it receives no file."""
        for folder in (self.top_patches, self.overlays, self.heatmaps, self.gallery):
            folder.mkdir(parents=True, exist_ok=True)


def scale_maps(scores: PatchScores, scale: str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    return (scores.maps_5x, scores.weights_5x) if scale == "5x" else (scores.maps_20x, scores.weights_20x)


def leading_map(scores: PatchScores, scale: str) -> str | None:
    """The map a scale's heatmap shows (see the module docstring), or None when the method has none there."""
    maps, weights = scale_maps(scores, scale)
    if not maps:
        return None
    if weights:
        return max(weights, key=lambda name: weights[name])

    def mean(name: str) -> float:
        values = maps[name][np.isfinite(maps[name])]
        return float(values.mean()) if values.size else -np.inf

    return max(maps, key=mean)


def top_patches(scores: PatchScores, coords_5x: np.ndarray, coords_20x: np.ndarray, top_n: int) -> pd.DataFrame:
    """Per scale and map, the `top_n` highest-scoring patches: rank, row, child slot (-1 at 5x), x, y, score."""
    rows: list[dict[str, Any]] = []
    for scale in SCALES:
        maps, weights = scale_maps(scores, scale)
        for name, values in maps.items():
            flat = np.nan_to_num(values.reshape(-1), nan=-np.inf)
            for rank, index in enumerate(np.argsort(-flat, kind="stable")[:top_n]):
                if not np.isfinite(flat[index]):
                    break
                if scale == "5x":
                    row, slot, (x, y) = int(index), -1, coords_5x[index]
                else:
                    row, slot = divmod(int(index), values.shape[1])
                    x, y = coords_20x[row, slot]
                rows.append({"scale": scale, "map": name, "map_weight": weights.get(name, np.nan), "rank": rank + 1,
                             "patch_row": row, "child_slot": slot, "x": int(x), "y": int(y),
                             "score": float(flat[index]), "kind": scores.kind})
    columns = ["scale", "map", "map_weight", "rank", "patch_row", "child_slot", "x", "y", "score", "kind"]
    return pd.DataFrame(rows, columns=columns)


def write_slide_explanations(
    scores: PatchScores, *, slide_id: str, coords_5x: np.ndarray, coords_20x: np.ndarray, mask: np.ndarray,
    folders: ExplanationFolders, headline: str, meta: dict[str, Any], slide_file: PathLike | None = None,
    patches_h5: PathLike | None = None, options: HeatmapOptions = HeatmapOptions(), gallery: bool = False,
) -> bool:
    """The table always; the QuPath overlay and the heatmaps when the slide's patch file (and slide) are given,
    and, with `gallery`, the report's small copies. Returns whether heatmaps were drawn."""
    table = top_patches(scores, coords_5x, coords_20x, options.top_n)
    write_text_atomic(folders.top_patches / f"{slide_id}.csv", table.to_csv(index=False, float_format="%.6g"))
    if patches_h5 is None:
        return False
    from pipeline.explain.geojson import write_patch_geojson

    grid = read_patches(patches_h5)
    size_5x, size_20x = float(grid.attrs["patch_size_level0_5x"]), float(grid.attrs["patch_size_level0_20x"])
    write_patch_geojson(folders.overlays / f"{slide_id}.geojson", slide_id, coords_5x, size_5x, scores.maps_5x,
                        coords_20x, size_20x, scores.maps_20x, present_20x=mask, kind=scores.kind, **meta)
    if slide_file is None:
        return False
    overview, downsample = _overview(slide_file, slide_id, patches_h5, grid.attrs, options.long_side)
    sizes = {"5x": size_5x, "20x": size_20x}
    coords = {"5x": coords_5x, "20x": coords_20x.reshape(-1, 2)}
    _write_heatmaps(scores, slide_id, coords, sizes, overview, downsample, folders.heatmaps, headline,
                    options.long_side, options.grid)
    if gallery:
        _write_heatmaps(scores, slide_id, coords, sizes, overview, downsample, folders.gallery, headline,
                        options.gallery_long_side, False)
    return True


def _overview(slide_file: PathLike, slide_id: str, patches_h5: PathLike, attrs: dict[str, Any],
              long_side: int) -> tuple[np.ndarray, float]:
    """The slide overview at about OVERVIEW_DETAIL x the heatmap's long side (upsampled to fill it): decoding a
    level-0-sharp overview costs most of a slide's explanation time and adds little at the patches' scale."""
    from pipeline.readers import DEFAULT_READER
    from pipeline.slide import open_slide, recorded_mpp

    reader = str(attrs.get("reader") or DEFAULT_READER)  # the reader the patch grid was made with
    with open_slide(slide_file, slide_id, mpp=recorded_mpp(attrs, slide_id, patches_h5), reader=reader) as slide:
        target_mpp = slide.mpp * max(slide.dimensions) / (OVERVIEW_DETAIL * long_side)
        return slide.read_overview(max(slide.mpp, target_mpp), max_side=2 * long_side)


def _write_heatmaps(
    scores: PatchScores, slide_id: str, coords: dict[str, np.ndarray], sizes: dict[str, float],
    overview: np.ndarray, downsample: float, folder: Path, headline: str, long_side: int, grid: bool,
) -> None:
    from pipeline.explain.heatmap import render_grid, render_heatmap

    for scale in SCALES:
        maps, weights = scale_maps(scores, scale)
        name = leading_map(scores, scale)
        if name is None:
            continue
        weight = f" (weight {weights[name]:.2f})" if name in weights else ""
        render_heatmap(overview, downsample, coords[scale], sizes[scale], maps[name].reshape(-1),
                       folder / f"{slide_id}_{scale}.png", title=headline,
                       subtitle=f"{scale} patches, {scores.kind}: {name}{weight}", map_label=scores.kind,
                       long_side=long_side, palette=True)
        if grid and len(maps) > 1:
            render_grid(overview, downsample, coords[scale], sizes[scale], {k: v.reshape(-1) for k, v in maps.items()},
                        folder / f"{slide_id}_{scale}_grid.png", title=f"{headline} · {scale}", long_side=long_side,
                        map_label=scores.kind, palette=True)
