"""Readable heatmaps and QuPath patch overlays (pipeline.explain): synthetic overviews and CMU-1's real patch grid."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.explain.geojson import patch_features, read_patch_geojson, write_patch_geojson
from pipeline.explain.heatmap import (
    fit_overview,
    grid_layout,
    heatmap_layout,
    make_norm,
    overlay,
    render_grid,
    render_heatmap,
    score_range,
)
from pipeline.formats import read_patches
from pipeline.patching import PatchParams, patch_slide
from pipeline.qc import read_png
from pipeline.slide import open_slide
from pipeline.tissue import TissueParams, segment_slide

DS = 8.0  # level-0 px per synthetic overview px
PATCH = 256  # level-0 patch side: 32 overview px


def viridis(value: float) -> np.ndarray:
    import matplotlib

    return np.asarray(matplotlib.colormaps["viridis"](value)[:3]) * 255


def synthetic(landscape: bool = True, seed: int = 0):
    """A textured overview (so 'unchanged' means something) and a 5 x 8 patch grid with a hole of NaN scores."""
    rng = np.random.default_rng(seed)
    h, w = (300, 500) if landscape else (500, 300)
    overview = rng.integers(120, 230, size=(h, w, 3), dtype=np.uint8)
    rows, cols = (5, 8) if landscape else (8, 5)
    ys, xs = np.mgrid[0:rows, 0:cols]
    coords = np.stack([(xs.ravel() + 2) * PATCH, (ys.ravel() + 2) * PATCH], axis=1).astype(np.int64)
    scores = rng.random(len(coords))
    scores[[3, 7, 11]] = np.nan
    return overview, coords, scores


def strict_json(text: str):
    """json.loads that rejects NaN / Infinity, as QuPath's and other strict readers do."""

    def reject(token: str):
        raise ValueError(f"non-finite number {token} in JSON")

    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def cmu1_grid(cmu1, tmp_path_factory):
    """CMU-1's real patch file (segmentation + patching, about a second), its overview and tissue mask."""
    d = tmp_path_factory.mktemp("cmu1")
    segment_slide(cmu1, "cmu1", d / "mask.png", d / "tissue.geojson", d / "tissue.json", d / "qc.png",
                  TissueParams(), None)
    patch_slide(cmu1, "cmu1", d / "tissue.geojson", d / "patches.h5", d / "pqc.png", PatchParams(), None)
    grid = read_patches(d / "patches.h5")
    with open_slide(cmu1, "cmu1", mpp=grid.attrs["mpp"]) as slide:
        overview, downsample = slide.read_overview(4.0)
    return grid, overview, downsample, read_png(d / "mask.png")


# --- the pixel overlay ---------------------------------------------------------------------------------------


def test_overlay_keeps_unscored_pixels_and_paints_exact_patch_boxes():
    overview, coords, scores = synthetic()
    out, norm = overlay(overview, DS, coords, PATCH, scores, "viridis", 0.5)
    assert out.dtype == np.uint8 and out.shape == overview.shape
    painted = np.zeros(overview.shape[:2], dtype=bool)
    for (x, y), s in zip(coords, scores):
        box = np.s_[int(y / DS):int((y + PATCH) / DS), int(x / DS):int((x + PATCH) / DS)]
        if np.isfinite(s):
            painted[box] = True
            expected = np.round(0.5 * overview[box].astype(float) + 0.5 * viridis(norm(s)))
            assert np.abs(out[box].astype(float) - expected).max() <= 1
    # NaN patches and everything outside the patches: the overview's own pixels, bit for bit
    assert (out[~painted] == overview[~painted]).all()
    assert (out[painted] != overview[painted]).any(axis=-1).mean() > 0.9
    assert (norm.vmin, norm.vmax) == (np.nanmin(scores), np.nanmax(scores))


def test_overlay_without_scores_is_the_overview():
    overview, coords, _ = synthetic()
    out, _ = overlay(overview, DS, coords, PATCH, np.full(len(coords), np.nan))
    assert (out == overview).all()


# --- heatmap PNGs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("long_side", [900, 1500])
@pytest.mark.parametrize("landscape", [True, False])
def test_heatmap_has_requested_size_and_a_colour_bar(tmp_path, long_side, landscape):
    overview, coords, scores = synthetic(landscape)
    title = "TCGA-XX-0000 slide id \u00b7 predicted LUAD (p = 0.91)"
    subtitle = "similarity to: " + "sheets of atypical glandular cells with vesicular nuclei " * 4
    png = tmp_path / "map.png"
    render_heatmap(overview, DS, coords, PATCH, scores, png, title=title, subtitle=subtitle,
                   map_label="text similarity", long_side=long_side)
    image = read_png(png)
    lay = heatmap_layout(overview.shape[:2], title, subtitle, long_side)
    assert image.shape == (lay.height, lay.width, 3)
    assert abs(max(image.shape[:2]) - long_side) <= 2
    assert len(lay.subtitle_lines) > 1, "a long subtitle wraps to the figure width"
    # the image area keeps the overview's aspect and its long side fills the figure's image area
    assert lay.image.w / lay.image.h == pytest.approx(overview.shape[1] / overview.shape[0], abs=0.01)
    assert lay.image.x + lay.image.w < lay.colorbar.x < lay.width
    # title/subtitle: dark text pixels above the image
    header = image[: lay.image.y].astype(int)
    assert (header.sum(-1) < 200).sum() > 200
    # the colour bar: down its middle column, viridis from yellow (max) at the top to purple (min) at the bottom
    bar = lay.colorbar
    column = image[bar.y + 3: bar.y + bar.h - 3, bar.x + bar.w // 2].astype(float)
    ramp = np.stack([viridis(v) for v in np.linspace(0, 1, 256)])
    nearest = np.abs(column[:, None, :] - ramp[None]).sum(-1)
    assert nearest.min(1).max() < 12, "the bar's pixels are viridis colours"
    assert len(np.unique(column, axis=0)) > min(120, 0.4 * len(column)), "a ramp, not a flat strip"
    index = nearest.argmin(1)
    assert index[0] > 240 and index[-1] < 15 and (np.diff(index) <= 1).all()


def test_rendered_image_area_is_the_overlay_pixel_for_pixel(tmp_path):
    """NaN patches and tissue outside patches show the (resized) overview unchanged in the PNG."""
    overview, coords, scores = synthetic()
    png = tmp_path / "map.png"
    render_heatmap(overview, DS, coords, PATCH, scores, png, title="t", long_side=900)
    lay = heatmap_layout(overview.shape[:2], "t", "", 900)
    box = lay.image
    area = read_png(png)[box.y: box.y + box.h, box.x: box.x + box.w]
    shown, ds = fit_overview(overview, DS, box.w, box.h)
    expected, _ = overlay(shown, ds, coords, PATCH, scores, norm=make_norm(score_range(scores)))
    assert (area == expected).mean() > 0.999
    unscored = (expected == shown).all(-1)
    assert unscored.mean() > 0.3 and (area[unscored] == shown[unscored]).mean() > 0.999


def test_constant_and_empty_maps_render(tmp_path):
    overview, coords, _ = synthetic()
    for name, scores in (("constant", np.full(len(coords), 0.42)), ("empty", np.full(len(coords), np.nan))):
        png = tmp_path / f"{name}.png"
        render_heatmap(overview, DS, coords, PATCH, scores, png, title=name, long_side=900)
        image = read_png(png)
        lay = heatmap_layout(overview.shape[:2], name, "", 900)
        assert image.shape == (lay.height, lay.width, 3) and max(image.shape[:2]) == 900
        bar = lay.colorbar
        column = image[bar.y + 3: bar.y + bar.h - 3, bar.x + bar.w // 2]
        assert len(np.unique(column, axis=0)) > min(120, 0.4 * len(column)), "the colour bar is still drawn"
    # a constant map paints every patch in the middle colour
    painted, _ = overlay(overview, DS, coords, PATCH, np.full(len(coords), 0.42))
    x, y = coords[0] // int(DS)
    expected = np.round(0.5 * overview[y + 5, x + 5].astype(float) + 0.5 * viridis(0.5))
    assert np.abs(painted[y + 5, x + 5] - expected).max() <= 1


def test_real_slide_heatmap_with_tissue_outline(tmp_path, cmu1_grid):
    grid, overview, downsample, mask = cmu1_grid
    s20 = float(grid.attrs["patch_size_level0_20x"])
    scores = np.linspace(0, 1, len(grid.coords_20x))
    scores[::5] = np.nan
    png = tmp_path / "cmu1_20x.png"
    render_heatmap(overview, downsample, grid.coords_20x, s20, scores, png, title="CMU-1 \u00b7 20x",
                   subtitle="a subtitle", tissue_mask=mask, long_side=1200)
    image = read_png(png)
    assert max(image.shape[:2]) == 1200 and image.shape[0] > image.shape[1]  # CMU-1 region is portrait


def test_grid_has_one_panel_per_map(tmp_path):
    overview, coords, scores = synthetic()
    rng = np.random.default_rng(1)
    maps = {f"text {i}: tumour cells with prominent nucleoli, variant {i}": rng.random(len(coords)) for i in range(6)}
    maps["text 5: tumour cells with prominent nucleoli, variant 5"][:4] = np.nan
    png = tmp_path / "grid.png"
    render_grid(overview, DS, coords, PATCH, maps, png, title="six maps", long_side=1500, cols=4)
    image = read_png(png)
    lay = grid_layout(overview.shape[:2], list(maps), "six maps", 1500, 4)
    assert image.shape == (lay.height, lay.width, 3) and max(image.shape[:2]) == 1500
    assert len(lay.panels) == 6 and len({(b.x, b.y) for b in lay.panels}) == 6
    assert len({b.y for b in lay.panels}) == 2, "six maps in four columns: two rows"
    norm = make_norm(score_range(*maps.values()))
    shown, ds = fit_overview(overview, DS, lay.panels[0].w, lay.panels[0].h)
    for box, scores_i in zip(lay.panels, maps.values()):
        assert box.x + box.w <= lay.colorbar.x and box.y + box.h <= lay.height
        crop = image[box.y: box.y + box.h, box.x: box.x + box.w]
        expected, _ = overlay(shown, ds, coords, PATCH, scores_i, norm=norm)
        assert (crop == expected).mean() > 0.999, "each panel is its own map on the shared scale"
    # fewer maps than columns: one row, a wider-than-tall figure of the same long side
    render_grid(overview, DS, coords, PATCH, dict(list(maps.items())[:3]), png, title="three", long_side=900)
    three = read_png(png)
    assert three.shape[1] == 900 and three.shape[0] < 0.7 * 900


# --- QuPath GeoJSON ------------------------------------------------------------------------------------------


def test_geojson_round_trips_a_real_patch_file(tmp_path, cmu1_grid):
    grid = cmu1_grid[0]
    s5, s20 = float(grid.attrs["patch_size_level0_5x"]), float(grid.attrs["patch_size_level0_20x"])
    n5, n20 = len(grid.coords_5x), len(grid.coords_20x)
    prob = np.linspace(0.1, 0.9, n5).astype(np.float32)
    prob[1] = np.nan
    sim = np.linspace(-0.2, 0.4, n20)
    sim[[0, 2]] = np.nan
    sim[3] = np.inf
    attn = np.linspace(0, 1, n20)
    attn[2] = np.nan  # row 2 has no finite measurement at all: still a tile
    path = tmp_path / "cmu1.geojson"
    write_patch_geojson(path, "cmu1", grid.coords_5x, s5, {"prob LUAD": prob}, grid.coords_20x, s20,
                        {"similarity": sim, "attention": attn}, method="hila", task="nsclc")
    doc = strict_json(path.read_text())
    assert doc["type"] == "FeatureCollection"
    assert doc["properties"] == {"slide_id": "cmu1", "method": "hila", "task": "nsclc"}
    assert len(doc["features"]) == n5 + n20, "every patch is a tile, with or without measurements"
    for feature in doc["features"]:
        ring = feature["geometry"]["coordinates"][0]
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        assert len(ring) == 5 and ring[0] == ring[-1]
        props = feature["properties"]
        assert props["objectType"] == "tile" and props["classification"]["name"] in ("5x", "20x")
        assert all(isinstance(v, float) and np.isfinite(v) for v in props["measurements"].values())
    names = [f["properties"]["name"] for f in doc["features"]]
    assert names[0] == "5x r0" and names[n5] == "20x r0" and names[-1] == f"20x r{n20 - 1}"
    tiles = read_patch_geojson(path)
    assert set(tiles) == {"5x", "20x"}
    for scale, coords, size in (("5x", grid.coords_5x, s5), ("20x", grid.coords_20x, s20)):
        got, sizes, _ = tiles[scale]
        assert (got == coords).all() and (sizes == size).all(), f"{scale} boxes are the patch file's boxes"
    m5, m20 = tiles["5x"][2], tiles["20x"][2]
    assert "prob LUAD" not in m5[1] and m5[0]["prob LUAD"] == 0.1, "float32 written at its own precision"
    assert m20[0] == {"attention": 0.0} and m20[2] == {} and m20[3] == {"attention": attn[3]}
    assert m20[4] == {"similarity": sim[4], "attention": attn[4]}


def test_hierarchical_coords_name_parent_row_and_slot():
    coords = np.zeros((2, 16, 2), dtype=np.int64)
    for slot in range(16):
        coords[:, slot] = [(slot % 4) * 256, (slot // 4) * 256]
    coords[1] += 1024
    present = np.zeros((2, 16), dtype=bool)
    present[0, [0, 5]] = present[1, 3] = True
    scores = np.full((2, 16), np.nan)
    scores[1, 3] = 0.5
    features = patch_features(coords, 256, {"s": scores}, scale="20x", present=present)
    assert [f["properties"]["name"] for f in features] == ["20x r0 s0", "20x r0 s5", "20x r1 s3"]
    assert features[2]["geometry"]["coordinates"][0][0] == [1024 + 3 * 256, 1024]
    assert [f["properties"]["measurements"] for f in features] == [{}, {}, {"s": 0.5}]


def test_geojson_never_writes_non_finite_numbers(tmp_path):
    coords = np.array([[0, 0], [256, 0]])
    with pytest.raises(ValueError):
        write_patch_geojson(tmp_path / "bad.geojson", "s", coords, 256, {}, coords, 256, {}, threshold=float("nan"))
    assert not (tmp_path / "bad.geojson").exists()
    with pytest.raises(ValueError, match="2 patches"):
        patch_features(coords, 256, {"x": np.zeros(3)}, scale="5x")


def test_explain_imports_stay_light():
    """The package is imported while Snakemake builds its DAG: no torch, matplotlib or cv2 at import."""
    code = ("import sys, pipeline.explain.heatmap, pipeline.explain.geojson; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'cv2', 'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.stdout.strip() == "[]"


def test_palette_heatmap_is_smaller_and_keeps_size_and_colours(tmp_path):
    """Prediction writes 256-colour PNGs: same pixel size, colours within a few levels, several times smaller."""
    overview, coords, scores = synthetic()
    exact, small = tmp_path / "exact.png", tmp_path / "palette.png"
    for path, palette in ((exact, False), (small, True)):
        render_heatmap(overview, DS, coords, PATCH, scores, path, title="t", long_side=900, palette=palette)
    a, b = read_png(exact).astype(int), read_png(small).astype(int)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 4
    assert small.stat().st_size < exact.stat().st_size
