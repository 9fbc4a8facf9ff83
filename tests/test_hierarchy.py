"""Coordinate-linked 5x -> 20x hierarchy: linking, every consistency check, external layouts, CLI, cohort table."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipeline
from pipeline.cli import main as cli_main
from pipeline.demo import write_pyramid_tiff
from pipeline.formats import read_features, read_hierarchical, read_patches, write_features, write_h5
from pipeline.hierarchy import (
    CHECKS,
    CheckLog,
    HierarchyCheckError,
    build_hierarchical,
    find_holders,
    parent_size_level0,
    summarise_reports,
)
from pipeline.patching import PatchParams, patch_slide
from pipeline.tissue import TissueParams, segment_slide

DIM = 8


@dataclass
class Layout:
    """A synthetic slide's two feature files, as our patching + extraction would write them."""

    size: int  # 5x patch side at level 0
    coords_5x: np.ndarray
    features_5x: np.ndarray
    coords_20x: np.ndarray
    features_20x: np.ndarray
    n_childless: int
    n_orphans: int

    @property
    def slot(self) -> int:
        return self.size // 4


def make_layout(size: int, seed: int = 0, origin: tuple[int, int] = (517, 93)) -> Layout:
    """Parents on a 7x5 lattice at a non-zero origin; about 60% of slots hold a child; rows in random order.

    Adds two childless parents (an external file may keep them) and three orphan 20x patches far from all parents.
    """
    rng = np.random.default_rng(seed)
    s = size // 4
    parents, children = [], []
    for j in range(5):
        for i in range(7):
            px, py = origin[0] + i * size, origin[1] + j * size
            slots = np.flatnonzero(rng.random(16) < 0.6)
            if len(slots) == 0:
                continue
            parents.append((px, py))
            children += [(px + (k % 4) * s, py + (k // 4) * s) for k in slots]
    parents += [(origin[0] + 9 * size, origin[1]), (origin[0] + 9 * size, origin[1] + 2 * size)]
    children += [(origin[0] + 20 * size + k * s, origin[1]) for k in range(3)]
    coords_5x = np.array(parents, dtype=np.int64)[rng.permutation(len(parents))]
    coords_20x = np.array(children, dtype=np.int64)[rng.permutation(len(children))]
    return Layout(
        size=size,
        coords_5x=coords_5x,
        features_5x=rng.normal(size=(len(coords_5x), DIM)).astype(np.float32),
        coords_20x=coords_20x,
        features_20x=rng.normal(size=(len(coords_20x), DIM)).astype(np.float32),
        n_childless=2,
        n_orphans=3,
    )


def write_layout(layout: Layout, folder: Path, slide: str = "slide", attrs: bool = True) -> tuple[Path, Path]:
    """Write the 5x and 20x files under folder/{5x,20x}/{slide}.h5 (with our attrs, or bare)."""
    mag = 40 if layout.size == 2048 else 20
    meta_5x = {"backbone": "plip", "patch_size_level0_5x": layout.size, "level0_magnification": mag} if attrs else {}
    meta_20x = {"backbone": "plip", "patch_size_level0_20x": layout.slot, "level0_magnification": mag} if attrs else {}
    p5, p20 = folder / "5x" / f"{slide}.h5", folder / "20x" / f"{slide}.h5"
    write_features(p5, layout.features_5x, layout.coords_5x, meta_5x)
    write_features(p20, layout.features_20x, layout.coords_20x, meta_20x)
    return p5, p20


def build(tmp_path: Path, p5: Path, p20: Path, name: str = "slide", **kwargs) -> tuple[dict, Path]:
    out = tmp_path / "hier" / f"{name}.h5"
    report = build_hierarchical(p5, p20, out, tmp_path / "reports" / f"{name}.json", **kwargs)
    return report, out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- linking on our own layouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1024, 2048], ids=["20x-base", "40x-base"])
def test_every_check_passes_and_each_child_sits_in_its_slot(tmp_path: Path, size: int) -> None:
    layout = make_layout(size)
    p5, p20 = write_layout(layout, tmp_path)
    report, out = build(tmp_path, p5, p20)

    assert report["status"] == "passed"
    assert {name: r["status"] for name, r in report["checks"].items()} == {name: "passed" for name in CHECKS}
    assert report["patch_size_level0_5x"] == size and report["slot_size_level0"] == size // 4
    counts = report["counts"]
    assert counts["parents"] == len(layout.coords_5x)
    assert counts["linked"] == len(layout.coords_20x) - layout.n_orphans
    assert counts["orphans"] == layout.n_orphans
    assert counts["empty_parents"] == layout.n_childless
    assert json.loads((tmp_path / "reports" / "slide.json").read_text()) == report

    features, coords, mask, attrs = read_hierarchical(out)
    assert features.shape == (len(layout.coords_5x), 16, DIM) and mask.shape == (len(layout.coords_5x), 16)
    assert attrs["patch_size_level0_5x"] == size and attrs["backbone"] == "plip"
    assert attrs["source_5x"] == str(p5) and attrs["n_orphans"] == layout.n_orphans
    feature_of = {tuple(c): f for c, f in zip(layout.coords_20x.tolist(), layout.features_20x)}
    s = size // 4
    for row, parent in enumerate(layout.coords_5x):  # rows follow the 5x file's (shuffled) order
        for slot in range(16):
            if not mask[row, slot]:
                assert not coords[row, slot].any() and not features[row, slot].any()
                continue
            offset = coords[row, slot] - parent
            assert tuple(offset) == ((slot % 4) * s, (slot // 4) * s)
            np.testing.assert_array_equal(features[row, slot], feature_of[tuple(coords[row, slot].tolist())])
    assert mask.sum() == counts["linked"]


@pytest.mark.parametrize("size", [1024, 2048], ids=["20x-base", "40x-base"])
def test_shuffled_20x_rows_give_the_identical_hierarchy(tmp_path: Path, size: int) -> None:
    layout = make_layout(size, seed=3)
    p5, p20 = write_layout(layout, tmp_path / "a")
    order = np.random.default_rng(11).permutation(len(layout.coords_20x))
    shuffled = Layout(**{**layout.__dict__, "coords_20x": layout.coords_20x[order],
                         "features_20x": layout.features_20x[order]})  # fmt: skip
    q5, q20 = write_layout(shuffled, tmp_path / "b")
    assert digest(p20) != digest(q20)
    _, out_a = build(tmp_path / "a", p5, p20)
    _, out_b = build(tmp_path / "b", q5, q20)
    a, b = read_hierarchical(out_a), read_hierarchical(out_b)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    ignore = {"source_5x", "source_20x"}
    assert {k: v for k, v in a[3].items() if k not in ignore} == {k: v for k, v in b[3].items() if k not in ignore}


def test_inputs_stay_byte_identical_on_success_and_on_failure(tmp_path: Path) -> None:
    layout = make_layout(2048)
    p5, p20 = write_layout(layout, tmp_path)
    before = (digest(p5), digest(p20))
    build(tmp_path, p5, p20)
    with pytest.raises(Exception, match="ambiguous"):
        build(tmp_path, p5, p20, level0_mag=20)  # attrs say 2048 px, a 20x base says 1024
    q5, q20 = write_layout(shifted(layout), tmp_path / "shifted")
    shifted_before = (digest(q5), digest(q20))
    with pytest.raises(HierarchyCheckError):
        build(tmp_path, q5, q20)
    assert (digest(p5), digest(p20)) == before
    assert (digest(q5), digest(q20)) == shifted_before


def test_a_slide_without_patches_gives_an_empty_hierarchy(tmp_path: Path) -> None:
    empty = Layout(1024, np.zeros((0, 2), np.int64), np.zeros((0, DIM), np.float32),
                   np.zeros((0, 2), np.int64), np.zeros((0, DIM), np.float32), 0, 0)  # fmt: skip
    report, out = build(tmp_path, *write_layout(empty, tmp_path))
    assert report["status"] == "passed" and report["counts"]["parents"] == report["counts"]["linked"] == 0
    features, coords, mask, _ = read_hierarchical(out)
    assert features.shape == (0, 16, DIM) and coords.shape == (0, 16, 2) and mask.shape == (0, 16)


def test_output_onto_an_input_is_refused(tmp_path: Path) -> None:
    p5, p20 = write_layout(make_layout(1024), tmp_path)
    before = digest(p5)
    with pytest.raises(Exception, match="inputs are never rewritten"):
        build_hierarchical(p5, p20, p5, tmp_path / "r.json")
    assert digest(p5) == before


# --- on our own patching stage's output ---------------------------------------------------------------------


def disc_slide_40x(path: Path) -> Path:
    """A 1.5 mm synthetic slide at 0.25 um/px (40x base): a stained disc on a white background."""
    n = 6144
    yy, xx = np.ogrid[:n, :n]
    image = np.full((n, n, 3), 240, dtype=np.uint8)
    image[(xx - 3000) ** 2 + (yy - 3200) ** 2 < 2600**2] = (200, 80, 160)
    write_pyramid_tiff(path, image, 0.25)
    return path


@pytest.fixture(scope="module")
def patched_slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """patches/{slide}.h5 from the real segment + patch stages: CMU-1-Small-Region (20x) and a 40x disc."""
    root = tmp_path_factory.mktemp("patched")
    slides = {
        "CMU-1-Small-Region": Path(pipeline.__file__).parent / "data" / "slides" / "CMU-1-Small-Region.svs",
        "disc40": disc_slide_40x(root / "disc40.tiff"),
    }
    out = {}
    for sid, path in slides.items():
        d = root / sid
        segment_slide(path, sid, d / "mask.png", d / "t.geojson", d / "t.json", d / "qc.png", TissueParams())
        patch_slide(path, sid, d / "t.geojson", d / "patches.h5", d / "pqc.png", PatchParams())
        out[sid] = d / "patches.h5"
    return out


@pytest.mark.parametrize("sid,size", [("CMU-1-Small-Region", 1024), ("disc40", 2048)])
def test_links_reproduce_the_patching_stage_parents(
    tmp_path: Path, patched_slides: dict[str, Path], sid: str, size: int
) -> None:
    """Features carry the patch file's coords and size attrs (feature values are stand-ins until extraction)."""
    grid = read_patches(patched_slides[sid])
    assert grid.attrs["patch_size_level0_5x"] == size and len(grid.coords_5x) >= 4
    keep = ("patch_size_level0_5x", "patch_size_level0_20x", "level0_magnification")
    attrs = {k: grid.attrs[k] for k in keep} | {"backbone": "plip"}
    rng = np.random.default_rng(0)
    p5, p20 = tmp_path / "plip_5x" / f"{sid}.h5", tmp_path / "plip_20x" / f"{sid}.h5"
    write_features(p5, rng.normal(size=(len(grid.coords_5x), DIM)), grid.coords_5x, attrs)
    order = rng.permutation(len(grid.coords_20x))  # row order must not matter
    write_features(p20, np.arange(len(order))[order, None].repeat(DIM, 1), grid.coords_20x[order], attrs)

    report, out = build(tmp_path, p5, p20, name=sid)
    assert report["status"] == "passed" and report["counts"]["orphans"] == 0
    assert report["counts"]["empty_parents"] == 0 and report["counts"]["linked"] == len(grid.coords_20x)
    features, coords, mask, _ = read_hierarchical(out)
    rows, slots = np.nonzero(mask)
    child_rows = features[rows, slots, 0].astype(int)  # each feature carries its row in the patch file
    np.testing.assert_array_equal(grid.parent_of_20x[child_rows], rows)
    np.testing.assert_array_equal(grid.coords_20x[child_rows], coords[rows, slots])
    offset = coords[rows, slots] - grid.coords_5x[rows]
    np.testing.assert_array_equal(offset, np.stack([slots % 4, slots // 4], axis=1) * (size // 4))


@pytest.mark.parametrize("sid", ["CMU-1-Small-Region", "disc40"])
def test_pipeline_features_link_with_every_check_passing(
    tmp_path: Path, patched_slides: dict[str, Path], sid: str
) -> None:
    """Real extraction (tiny backbone, random weights) on the patching stage's output, then the hierarchy."""
    from pipeline.features.extract import extract_slide

    slide = {
        "CMU-1-Small-Region": Path(pipeline.__file__).parent / "data" / "slides" / "CMU-1-Small-Region.svs",
        "disc40": patched_slides[sid].parent.parent / "disc40.tiff",
    }[sid]
    p5, p20 = tmp_path / "tiny_5x" / f"{sid}.h5", tmp_path / "tiny_20x" / f"{sid}.h5"
    extract_slide(slide, patched_slides[sid], p5, p20, "tiny", weights="random", slide_id=sid, device="cpu",
                  progress=False)  # fmt: skip
    report, out = build(tmp_path, p5, p20, name=sid)
    assert report["status"] == "passed"
    assert {c["status"] for c in report["checks"].values()} == {"passed"}
    features, coords, mask, attrs = read_hierarchical(out)
    f5, c5, _ = read_features(p5)
    f20, c20, _ = read_features(p20)
    np.testing.assert_array_equal(features.shape, (len(c5), 16, f5.shape[1]))
    rows, slots = np.nonzero(mask)
    assert len(rows) == len(c20)
    position = {tuple(c): i for i, c in enumerate(c20)}
    for r, k in zip(rows, slots):  # each linked feature is the 20x row at that child's coordinates
        np.testing.assert_array_equal(features[r, k], f20[position[tuple(coords[r, k])]])


# --- sizes ---------------------------------------------------------------------------------------------------


def test_patch_size_comes_from_attrs_or_magnification_and_must_agree() -> None:
    assert parent_size_level0({"patch_size_level0_5x": 2048}, {}) == (2048, "5x attrs")
    assert parent_size_level0({}, {"patch_size_level0": 256})[0] == 1024  # TRIDENT's attr on a 20x file
    assert parent_size_level0({}, {}, level0_mag=40)[0] == 2048
    assert parent_size_level0({}, {}, level0_mag=20)[0] == 1024
    with pytest.raises(Exception, match="--level0-mag"):
        parent_size_level0({}, {})
    with pytest.raises(Exception, match="ambiguous: 2048 from 5x attrs, 1024 from level-0 magnification 20x"):
        parent_size_level0({"patch_size_level0_5x": 2048}, {}, level0_mag=20)
    with pytest.raises(Exception, match="ambiguous"):
        parent_size_level0({"patch_size_level0": 2048}, {"patch_size_level0": 256})


# --- constructed violations ----------------------------------------------------------------------------------


def expect_failure(tmp_path: Path, layout: Layout, check: str, **kwargs) -> dict:
    """Build `layout` and assert it fails `check` with a message naming check, slide and report."""
    p5, p20 = write_layout(layout, tmp_path, slide="bad-slide")
    report_path = tmp_path / "reports" / "bad-slide.json"
    with pytest.raises(HierarchyCheckError) as info:
        build(tmp_path, p5, p20, name="bad-slide", **kwargs)
    message = str(info.value)
    assert f"check '{check}' failed" in message and "bad-slide" in message and str(report_path) in message
    assert info.value.check == check
    report = json.loads(report_path.read_text())
    assert report["status"] == "failed" and report["failed_check"] == check
    assert report["checks"][check]["status"] == "failed"
    assert not (tmp_path / "hier" / "bad-slide.h5").exists()
    return report


def with_20x(layout: Layout, coords: np.ndarray, features: np.ndarray | None = None) -> Layout:
    if features is None:
        features = np.random.default_rng(5).normal(size=(len(coords), DIM)).astype(np.float32)
    return Layout(**{**layout.__dict__, "coords_20x": coords, "features_20x": features})


def test_child_outside_every_parent_is_an_orphan_not_a_failure(tmp_path: Path) -> None:
    layout = make_layout(1024)
    far = np.array([[10**6, 10**6]])
    report, _ = build(tmp_path, *write_layout(with_20x(layout, np.vstack([layout.coords_20x, far])), tmp_path))
    assert report["status"] == "passed" and report["counts"]["orphans"] == layout.n_orphans + 1


def test_child_at_a_non_slot_offset_is_misalignment(tmp_path: Path) -> None:
    layout = make_layout(1024)
    # inside a parent's box but 100 px into its slot 5 (a single off-lattice child)
    stray = layout.coords_5x[:1] + [256 + 100, 256 + 100]
    moved = layout.coords_20x[~np.all(layout.coords_20x == layout.coords_5x[0] + [256, 256], axis=1)]
    report = expect_failure(tmp_path, with_20x(layout, np.vstack([moved, stray])), "aligned_grid")
    assert "not at a slot offset" in report["checks"]["aligned_grid"]["detail"]


@pytest.mark.parametrize("scale", ["5x", "20x"])
def test_duplicate_coordinate(tmp_path: Path, scale: str) -> None:
    layout = make_layout(2048)
    if scale == "20x":
        bad = with_20x(layout, np.vstack([layout.coords_20x, layout.coords_20x[4:5]]))
    else:
        bad = Layout(**{**layout.__dict__, "coords_5x": np.vstack([layout.coords_5x, layout.coords_5x[2:3]]),
                        "features_5x": np.vstack([layout.features_5x, layout.features_5x[:1]])})  # fmt: skip
    report = expect_failure(tmp_path, bad, "unique_coords")
    assert f"{scale} file has 1 duplicate coordinate(s)" in report["checks"]["unique_coords"]["detail"]


def test_two_children_in_one_slot(tmp_path: Path) -> None:
    layout = make_layout(1024)
    parent = layout.coords_5x[0]
    crowd = np.array([parent + [0, 0], parent + [64, 0]])  # both top-lefts fall in slot 0
    keep = ~np.all(layout.coords_20x == parent, axis=1)
    report = expect_failure(tmp_path, with_20x(layout, np.vstack([layout.coords_20x[keep], crowd])),
                            "one_child_per_slot")  # fmt: skip
    assert "both in slot 0" in report["checks"]["one_child_per_slot"]["detail"]


def test_child_with_two_parents(tmp_path: Path) -> None:
    layout = make_layout(1024)
    child = layout.coords_20x[np.argmin(layout.coords_20x[:, 0])]  # a linked child (orphans lie far right)
    overlapping = child[None, :] - [100, 100]  # an off-lattice parent whose box also holds that child
    bad = Layout(**{**layout.__dict__, "coords_5x": np.vstack([layout.coords_5x, overlapping]),
                    "features_5x": np.vstack([layout.features_5x, layout.features_5x[:1]])})  # fmt: skip
    expect_failure(tmp_path, bad, "single_parent")


@pytest.mark.parametrize("scale", ["5x", "20x"])
def test_features_coords_length_mismatch(tmp_path: Path, scale: str) -> None:
    layout = make_layout(1024)
    p5, p20 = write_layout(layout, tmp_path)
    target = p5 if scale == "5x" else p20
    feats = layout.features_5x if scale == "5x" else layout.features_20x
    coords = layout.coords_5x if scale == "5x" else layout.coords_20x
    attrs = {"patch_size_level0_5x": 1024} if scale == "5x" else {"patch_size_level0_20x": 256}
    write_h5(target, {"features": feats[:-1], "coords": coords}, attrs)  # write_features would refuse this
    with pytest.raises(HierarchyCheckError, match=f"check 'rows_match' failed: {scale} file has"):
        build(tmp_path, p5, p20)


# --- misaligned external grids -------------------------------------------------------------------------------


def shifted(layout: Layout, shift: tuple[int, int] = (8, 8)) -> Layout:
    """The 20x grid shifted by a few pixels, as a tool with its own grid origin would make it."""
    return with_20x(layout, layout.coords_20x + np.array(shift), layout.features_20x)


def test_misaligned_grid_fails_in_fail_mode(tmp_path: Path) -> None:
    layout = make_layout(2048)
    report = expect_failure(tmp_path, shifted(layout), "aligned_grid", misaligned="fail")
    assert report["checks"]["aligned_grid"]["detail"].startswith(f"{len(layout.coords_20x) - 3} of")


def test_misaligned_grid_nearest_mode_is_seeded_and_recorded(tmp_path: Path) -> None:
    layout = shifted(make_layout(2048))
    p5, p20 = write_layout(layout, tmp_path)
    report, out = build(tmp_path, p5, p20, misaligned="nearest", seed=4)
    assert report["status"] == "passed" and report["seed"] == 4 and report["misaligned_mode"] == "nearest"
    assert report["checks"]["aligned_grid"]["status"] == "resolved"
    assert report["counts"]["misaligned"] == report["counts"]["linked"] == len(layout.coords_20x) - 3
    _, coords, mask, _ = read_hierarchical(out)
    rows, slots = np.nonzero(mask)
    offset = coords[rows, slots] - layout.coords_5x[rows]
    expected = np.stack([(slots % 4) * 512, (slots // 4) * 512], axis=1) + 8
    np.testing.assert_array_equal(offset, expected)


def tie_layout() -> Layout:
    """One 40x parent whose slot 1 is claimed by two children equally far (8 px) from its origin."""
    parent = np.array([[4096, 2048]])
    coords = parent + np.array([[0, 0], [512 - 8, 0], [512 + 8, 0], [1024 + 3, 512]])
    rng = np.random.default_rng(0)
    return Layout(2048, parent, rng.normal(size=(1, DIM)).astype(np.float32), coords,
                  rng.normal(size=(4, DIM)).astype(np.float32), 0, 0)  # fmt: skip


def test_nearest_mode_breaks_ties_by_seed_only(tmp_path: Path) -> None:
    layout = tie_layout()
    p5, p20 = write_layout(layout, tmp_path)
    order = [3, 2, 0, 1]  # the same children in another row order
    q5, q20 = write_layout(with_20x(layout, layout.coords_20x[order], layout.features_20x[order]), tmp_path / "q")
    chosen = {}
    for seed in range(12):
        report, out = build(tmp_path, p5, p20, name=f"s{seed}", misaligned="nearest", seed=seed)
        assert report["counts"]["dropped_in_slot_conflicts"] == 1 and report["counts"]["linked"] == 3
        hier = read_hierarchical(out)
        assert hier[2][0].tolist() == [True, True, False, False] + [False, False, True] + [False] * 9
        chosen[seed] = int(hier[1][0, 1, 0] - 4096)
        _, reordered = build(tmp_path, q5, q20, name=f"q{seed}", misaligned="nearest", seed=seed)
        for x, y in zip(read_hierarchical(reordered)[:3], hier[:3]):  # row order does not change the choice
            np.testing.assert_array_equal(x, y)
    assert set(chosen.values()) == {504, 520}  # both tied children win under some seed
    _, again = build(tmp_path, p5, p20, name="again", misaligned="nearest", seed=5)
    assert int(read_hierarchical(again)[1][0, 1, 0] - 4096) == chosen[5]  # same seed, same choice


# --- HiVE-MIL's published layout -----------------------------------------------------------------------------


def published_hierarchy(
    coords_5x: np.ndarray, coords_20x: np.ndarray, features_20x: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """HiVE-MIL's published semantics, written out plainly as the test oracle: for each 5x patch with children
    (5x order), its children in 20x-file order, zero-padded to 16; no mask."""
    feats, coords = [], []
    for x, y in coords_5x:
        inside = ((coords_20x[:, 0] >= x) & (coords_20x[:, 0] < x + size)
                  & (coords_20x[:, 1] >= y) & (coords_20x[:, 1] < y + size))  # fmt: skip
        if not inside.any():
            continue
        pad = 16 - int(inside.sum())
        feats.append(np.pad(features_20x[inside], ((0, pad), (0, 0))))
        coords.append(np.pad(coords_20x[inside], ((0, pad), (0, 0))))
    return np.stack(feats), np.stack(coords)


def test_hivemil_published_layout_links(tmp_path: Path) -> None:
    layout = make_layout(2048, seed=8, origin=(0, 4096))
    # their published 5x files have childless parents removed, and the 20x grid holds no orphans
    holders_child, holders_parent = find_holders(layout.coords_5x, layout.coords_20x, 2048)
    has_child = np.isin(np.arange(len(layout.coords_5x)), holders_parent)
    layout = Layout(2048, layout.coords_5x[has_child], layout.features_5x[has_child],
                    layout.coords_20x[holders_child], layout.features_20x[holders_child], 0, 0)  # fmt: skip
    root = tmp_path / "tcga_nsclc_plip"
    p5, p20 = root / "plip_5x" / "slide.h5", root / "plip_20x" / "slide.h5"
    write_h5(p5, {"features": layout.features_5x, "coords": layout.coords_5x}, {})
    write_h5(p20, {"features": layout.features_20x, "coords": layout.coords_20x}, {})
    ref_features, ref_coords = published_hierarchy(layout.coords_5x, layout.coords_20x, layout.features_20x, 2048)
    write_h5(root / "hierarchical_plip_5x_20x" / "slide.h5", {"features": ref_features, "coords": ref_coords}, {})
    theirs = read_hierarchical(root / "hierarchical_plip_5x_20x" / "slide.h5")
    assert theirs[2] is None  # published files carry no mask

    with pytest.raises(Exception, match="--level0-mag"):
        build(tmp_path, p5, p20)
    report, out = build(tmp_path, p5, p20, level0_mag=40)
    assert report["status"] == "passed" and report["size_source"] == "level-0 magnification 40x"
    features, coords, mask, _ = read_hierarchical(out)
    assert len(features) == len(theirs[0])
    for row in range(len(features)):  # same children per row; ours in slot order, theirs in file order
        n = int(mask[row].sum())
        ours_order = np.lexsort((coords[row, mask[row], 0], coords[row, mask[row], 1]))
        theirs_order = np.lexsort((theirs[1][row, :n, 0], theirs[1][row, :n, 1]))
        np.testing.assert_array_equal(coords[row, mask[row]][ours_order], theirs[1][row, :n][theirs_order])
        np.testing.assert_array_equal(features[row, mask[row]][ours_order], theirs[0][row, :n][theirs_order])
        assert not theirs[0][row, n:].any()


# --- the vectorised linker against a plain scan --------------------------------------------------------------


@pytest.mark.parametrize("far", [False, True], ids=["cell-table", "searchsorted"])
def test_find_holders_matches_a_plain_scan_on_irregular_parents(far: bool) -> None:
    rng = np.random.default_rng(2)
    parents = rng.integers(-3000, 9000, size=(60, 2))  # off-lattice, overlapping, negative positions
    children = rng.integers(-4000, 10000, size=(900, 2))
    if far:  # one parent and child 10^9 px away: too many cells for a dense table
        parents, children = np.vstack([parents, [[10**9, 10**9]]]), np.vstack([children, [[10**9 + 5, 10**9]]])
    child, parent = find_holders(parents, children, 1024)
    got = sorted(zip(child.tolist(), parent.tolist()))
    want = sorted(
        (c, p)
        for c, (cx, cy) in enumerate(children.tolist())
        for p, (px, py) in enumerate(parents.tolist())
        if px <= cx < px + 1024 and py <= cy < py + 1024
    )
    assert got == want and len(want) > 100
    assert len(set(c for c, _ in want)) < len(want)  # some children have several holders


def test_checklog_marks_checks_not_reached() -> None:
    checks = CheckLog()
    with pytest.raises(Exception, match="check 'rows_match' failed: boom"):
        checks.fail("rows_match", "boom")
    assert checks.results["single_parent"]["status"] == "not_run"


# --- CLI and cohort table ------------------------------------------------------------------------------------


def test_cli_builds_fails_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good5, good20 = write_layout(make_layout(1024), tmp_path / "in", slide="good")
    bad5, bad20 = write_layout(shifted(make_layout(1024)), tmp_path / "in", slide="bad")
    reports = tmp_path / "hierarchy" / "plip"
    args = ["hierarchy", "--features-5x", str(good5), "--features-20x", str(good20),
            "--out", str(tmp_path / "h" / "good.h5"), "--report", str(reports / "good.json")]  # fmt: skip
    assert cli_main(args) == 0
    args = ["hierarchy", "--features-5x", str(bad5), "--features-20x", str(bad20), "--out", str(tmp_path / "h" / "bad.h5"),
            "--report", str(reports / "bad.json"), "--misaligned", "fail"]  # fmt: skip
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert "slide 'bad'" in err and "check 'aligned_grid' failed" in err and str(reports / "bad.json") in err

    summary = tmp_path / "summary.csv"
    assert cli_main(["hierarchy-summary", "--reports", str(reports / "good.json"), str(reports / "bad.json"),
                     "--out", str(summary)]) == 0  # fmt: skip
    table = pd.read_csv(summary)
    assert table["slide"].tolist() == ["bad", "good", "TOTAL"]
    assert table["status"].tolist() == ["failed", "passed", "1 passed, 1 failed"]
    assert table["failed_check"].fillna("").tolist() == ["aligned_grid", "", ""]
    good = json.loads((reports / "good.json").read_text())["counts"]
    assert table.iloc[-1]["linked"] == good["linked"] and table.iloc[-1]["orphans"] == good["orphans"]


def test_summary_sums_counts_over_slides(tmp_path: Path) -> None:
    paths = []
    for i, size in enumerate([1024, 2048]):
        p5, p20 = write_layout(make_layout(size, seed=i), tmp_path / "in", slide=f"s{i}")
        report, _ = build(tmp_path, p5, p20, name=f"s{i}")
        paths.append(tmp_path / "reports" / f"s{i}.json")
    table = summarise_reports(paths, tmp_path / "summary.csv")
    reports = [json.loads(p.read_text())["counts"] for p in paths]
    for key in ("parents", "children", "linked", "orphans", "empty_parents"):
        assert table.iloc[-1][key] == sum(r[key] for r in reports)
    assert table.iloc[-1]["status"] == "2 passed, 0 failed"
