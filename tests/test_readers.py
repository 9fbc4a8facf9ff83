"""Slide readers: every reader gives OpenSlide's pixels (CMU-1, a synthetic 40x pyramid, both as OME-Zarr), OME-Zarr
metadata (NGFF 0.4 in bioformats2raw's layout, NGFF 0.5), the `auto` choice, and read errors per reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import SlideError
from pipeline.features import create_backbone
from pipeline.features.extract import extract_slide
from pipeline.features.loader import ParentDataset
from pipeline.formats import PatchGrid, read_features, write_patches
from pipeline.readers import READER_CHOICES, READERS, auto_reader, open_reader
from pipeline.readers.omezarr import MPP_KEY, write_ome_zarr
from pipeline.slide import open_slide

REPO = Path(__file__).resolve().parents[1]
CMU1 = REPO / "pipeline" / "data" / "slides" / "CMU-1-Small-Region.svs"
UNREADABLE = REPO / "tests" / "data" / "slides" / "unreadable.svs"


@pytest.fixture(scope="module")
def zarr_of(tmp_path_factory, slide_40x):
    """CMU-1 and the synthetic 40x slide converted to OME-Zarr (bioformats2raw layout), by name."""
    out = {}
    for name, path in (("cmu", CMU1), ("syn40x", slide_40x)):
        with open_slide(path, name, reader="openslide") as slide:
            out[name] = write_ome_zarr(slide, tmp_path_factory.mktemp("zarr") / f"{name}.zarr")
    return out


def boxes(width: int, height: int) -> list[tuple[int, int, tuple[int, int]]]:
    """Reads inside, across each border, and wholly outside the level-0 image."""
    return [(0, 0, (512, 512)), (width // 3, height // 2, (700, 300)), (width - 200, height - 100, (512, 256)),
            (-64, -32, (256, 128)), (width + 10, 0, (64, 64))]


@pytest.mark.parametrize("which", ["cmu", "syn40x"])
@pytest.mark.parametrize("reader", ["tiffslide", "omezarr"])
def test_readers_give_openslide_pixels(reader, which, slide_40x, zarr_of):
    path = CMU1 if which == "cmu" else slide_40x
    ref = open_reader(path, which, "openslide")
    other = open_reader(zarr_of[which] if reader == "omezarr" else path, which, reader)
    assert other.name == reader and other.dimensions == ref.dimensions
    levels = [0]
    if reader == "tiffslide":  # the same pyramid: every level compares (the zarr's pyramid is its own, 2x per level)
        assert other.level_downsamples == pytest.approx(ref.level_downsamples)
        levels = range(len(ref.level_dimensions))
    for level in levels:
        ds = int(ref.level_downsamples[level])
        for x, y, size in boxes(*ref.dimensions):
            x, y = x // ds * ds, y // ds * ds  # on the level's grid, where OpenSlide reads whole pixels
            np.testing.assert_array_equal(other.read(x, y, level, size), ref.read(x, y, level, size),
                                          err_msg=f"{reader} {which} level {level} ({x}, {y}) {size}")
    ref.close()
    other.close()


@pytest.mark.parametrize("reader", ["tiffslide", "omezarr"])
def test_loader_patches_equal_openslides(reader, tmp_path):
    """The loader's model inputs (5x patch and kept children) through each reader equal OpenSlide's (the zarr holds
    CMU-1's single level only: a pyramid of its own would give the 5x patch from its own, other, pixels)."""
    tiny = create_backbone("tiny", weights="random")
    with open_slide(CMU1, reader="openslide") as slide:
        s20 = 256
        coords_5x = np.array([[0, 0], [1024, 1024], [1536, 2048]])
        children = np.array([[x + (k % 4) * s20, y + (k // 4) * s20] for x, y in coords_5x for k in (0, 5, 6, 15)])
        attrs = {"patch_size": 256, "patch_size_level0_20x": s20, "patch_size_level0_5x": 4 * s20,
                 "mpp": slide.mpp, "mpp_source": slide.mpp_source, "level0_width": slide.dimensions[0],
                 "level0_height": slide.dimensions[1]}
    grid = PatchGrid(coords_5x, children, np.repeat(np.arange(3), 4), attrs)
    path = CMU1
    if reader == "omezarr":
        with open_slide(CMU1, reader="openslide") as slide:
            path = write_ome_zarr(slide, tmp_path / "cmu.zarr", min_side=10**6)
    ours, ref = (ParentDataset(p, "cmu", grid, tiny.preprocess, reader=r) for p, r in ((path, reader), (CMU1, "openslide")))
    for i in range(len(grid.coords_5x)):
        assert torch.equal(ours[i]["images"][0], ref[i]["images"][0]), i
    ours.close()
    ref.close()


def test_ome_zarr_slide_metadata_and_ngff_05(tmp_path, zarr_of):
    """mpp and levels from the NGFF metadata, through `auto`; an NGFF 0.5 (Zarr v3) image with c,y,x axes reads too."""
    import zarr

    from pipeline.cli import main

    assert main(["to-ome-zarr", "--slide", str(CMU1), "--out", str(tmp_path / "cli.zarr")]) == 0
    assert main(["to-ome-zarr", "--slide", str(CMU1), "--out", str(tmp_path / "cli.zarr")]) == 1  # never overwrites
    with open_slide(zarr_of["cmu"]) as slide, open_slide(tmp_path / "cli.zarr") as cli:  # auto: zarr -> omezarr
        assert slide.reader == "omezarr" and slide.mpp == pytest.approx(0.499)
        assert slide.mpp_source == MPP_KEY and slide.level0_magnification == 20
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        ref = slide.read_level(300, 500, 0, (400, 300))
        np.testing.assert_array_equal(cli.read_level(300, 500, 0, (400, 300)), ref)
    root = zarr.open_group(str(tmp_path / "v05.zarr"), mode="w", zarr_format=3)
    arr = root.create_array("s0", shape=(3, 300, 400), chunks=(3, 128, 128), dtype="uint8")
    arr[:] = ref.transpose(2, 0, 1)
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "nanometer"},
                 {"name": "x", "type": "space", "unit": "nanometer"}],
        "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 250, 250]}]}]}]}
    with open_slide(tmp_path / "v05.zarr") as v05:
        assert v05.mpp == pytest.approx(0.25) and v05.dimensions == (400, 300)
        np.testing.assert_array_equal(v05.read_level(0, 0, 0, (400, 300)), ref)
    gray = zarr.open_group(str(tmp_path / "gray.zarr"), mode="w", zarr_format=3)
    gray.create_array("0", shape=(1, 64, 64), dtype="uint16")
    gray.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": ["c", "y", "x"], "datasets": [{"path": "0"}]}]}
    with pytest.raises(SlideError, match=r"slide 'gray'.*1 channel\(s\) of uint16"):
        open_slide(tmp_path / "gray.zarr")


def test_auto_picks_the_fastest_identical_reader(tmp_path, slide_40x, zarr_of, fixtures):
    import yaml

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["slides"]["properties"]["reader"]["enum"] == list(READER_CHOICES)
    assert set(READER_CHOICES) == {"auto", *READERS}
    assert auto_reader(CMU1) == "tiffslide" and auto_reader(slide_40x) == "tiffslide"
    assert auto_reader(zarr_of["cmu"]) == "omezarr"
    plain = tmp_path / "plain.png"
    plain.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert auto_reader(plain) == "openslide"  # not a format tiffslide is checked for: OpenSlide decides
    with pytest.raises(SlideError, match="not a whole-slide format OpenSlide recognises"):
        open_slide(plain)
    with pytest.raises(SlideError, match="Unsupported TIFF compression"):  # fails at open whichever reader
        open_slide(fixtures / "unopenable.tiff")
    with pytest.raises(SlideError, match="is not a readable OME-Zarr image"):
        open_slide(tmp_path, reader="omezarr")


@pytest.mark.parametrize("reader", ["openslide", "tiffslide"])
def test_a_corrupt_tile_follows_on_read_error_with_every_reader(tmp_path, reader):
    with open_slide(UNREADABLE, reader=reader) as slide:
        attrs = {"mpp": slide.mpp, "mpp_source": slide.mpp_source, "level0_width": 16, "level0_height": 16}
    grid = PatchGrid(np.array([[0, 0]]), np.array([[0, 0]]), np.array([0]),
                     {"patch_size": 256, "patch_size_level0_20x": 256, "patch_size_level0_5x": 1024, **attrs})
    write_patches(tmp_path / "p.h5", grid)
    with pytest.raises(SlideError, match="cannot read the 5x patch at level-0 \\(0, 0\\)"):
        extract_slide(UNREADABLE, tmp_path / "p.h5", tmp_path / "a.h5", tmp_path / "b.h5", "tiny", weights="random",
                      device="cpu", reader=reader, progress=False)
    res = extract_slide(UNREADABLE, tmp_path / "p.h5", tmp_path / "a.h5", tmp_path / "b.h5", "tiny",
                        weights="random", device="cpu", reader=reader, on_read_error="blank", progress=False)
    assert (res.blank_5x, res.blank_20x) == (1, 1)
    assert read_features(tmp_path / "b.h5")[2]["reader"] == reader
