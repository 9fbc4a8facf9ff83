"""Slide access: mpp resolution and its source, rejection of implausible values, level choice, clear errors."""

from __future__ import annotations

import pytest

from pipeline.errors import SlideError
from pipeline.slide import (
    MppOverride,
    best_level,
    magnification_from_mpp,
    open_slide,
    read_mpp_overrides,
    read_recorded_mpp,
    resolve_mpp,
)


def test_cmu1_mpp_from_metadata_is_20x(cmu1):
    with open_slide(cmu1) as slide:
        assert slide.mpp == pytest.approx(0.499)
        assert slide.mpp_source == "openslide.mpp-x"
        assert slide.level0_magnification == 20
        assert slide.dimensions == (2220, 2967)


def test_synthetic_40x_slide_resolves_from_tiff_tags(slide_40x):
    with open_slide(slide_40x) as slide:
        assert slide.mpp == pytest.approx(0.25, rel=1e-3)
        assert slide.level0_magnification == 40
        assert len(slide.level_dimensions) >= 3


def test_resolution_tag_fallback_and_units():
    mpp, source = resolve_mpp("s", {"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"})
    assert mpp == pytest.approx(0.25) and source.startswith("tiff.XResolution")
    mpp, _ = resolve_mpp("s", {"tiff.XResolution": "50800", "tiff.ResolutionUnit": "inch"})
    assert mpp == pytest.approx(0.5)


def test_objective_power_fallback_is_recorded():
    mpp, source = resolve_mpp("s", {"aperio.AppMag": "40"})
    assert mpp == pytest.approx(0.25)
    assert "aperio.AppMag" in source


def test_no_metadata_is_an_error_not_a_guess():
    with pytest.raises(SlideError, match="slide 'nometa'.*cannot determine microns per pixel.*override"):
        resolve_mpp("nometa", {})


def test_boxes_rejected_for_implausible_mpp_then_accepted_with_override(fixtures):
    with pytest.raises(SlideError, match=r"slide 'boxes'.*352\.8 um/px.*plausible"):
        open_slide(fixtures / "boxes.tiff")
    with open_slide(fixtures / "boxes.tiff", overrides={"boxes": MppOverride(0.5, source="override (x.csv)")}) as s:
        assert s.mpp == 0.5 and s.mpp_source == "override (x.csv)" and s.level0_magnification == 20


def test_recorded_mpp_is_used_as_is_with_source_patches(fixtures, cmu1, tmp_path):
    """The mpp recorded at patching is taken without a metadata lookup, still checked for plausibility."""
    import numpy as np

    from pipeline.formats import PatchGrid, write_patches

    with open_slide(fixtures / "boxes.tiff", mpp=0.5) as slide:  # its metadata alone is rejected (352.8 um/px)
        assert slide.mpp == 0.5 and slide.mpp_source == "patches" and slide.level0_magnification == 20
    with open_slide(cmu1, mpp=0.25) as slide:  # metadata says 0.499: not consulted
        assert slide.mpp == 0.25 and slide.mpp_source == "patches" and slide.level0_magnification == 40
    with pytest.raises(SlideError, match=r"slide 'boxes'.*352\.8 is outside the plausible range"):
        open_slide(fixtures / "boxes.tiff", mpp=352.8)
    with pytest.raises(ValueError, match="not both"):
        open_slide(fixtures / "boxes.tiff", overrides={"boxes": MppOverride(0.5)}, mpp=0.5)

    empty = (np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    write_patches(tmp_path / "boxes.h5", PatchGrid(*empty, {"mpp": 0.5, "mpp_source": "override"}))
    assert read_recorded_mpp(tmp_path / "boxes.h5") == 0.5
    write_patches(tmp_path / "none.h5", PatchGrid(*empty, {"mpp_source": "override"}))
    with pytest.raises(SlideError, match=r"slide 'none'.*none\.h5 records no mpp; re-run patching"):
        read_recorded_mpp(tmp_path / "none.h5")


def test_valid_metadata_wins_over_unforced_override_but_not_forced():
    props = {"openslide.mpp-x": "0.5"}
    assert resolve_mpp("s", props, MppOverride(0.25))[0] == 0.5
    assert resolve_mpp("s", props, MppOverride(0.25, force=True))[0] == 0.25


def test_override_csv(tmp_path):
    csv = tmp_path / "mpp.csv"
    csv.write_text("slide_id,mpp,force\nboxes,0.5,\nother,0.25,yes\n")
    overrides = read_mpp_overrides(csv)
    assert overrides["boxes"].mpp == 0.5 and not overrides["boxes"].force
    assert overrides["other"].force
    (tmp_path / "bad.csv").write_text("slide,mpp\nx,1\n")
    with pytest.raises(ValueError, match="missing column"):
        read_mpp_overrides(tmp_path / "bad.csv")


def test_unopenable_names_the_file(fixtures):
    with pytest.raises(SlideError, match=r"slide 'unopenable'.*unopenable\.tiff.*Unsupported TIFF compression"):
        open_slide(fixtures / "unopenable.tiff")


def test_unreadable_fails_at_read_naming_slide_and_position(fixtures):
    with open_slide(fixtures / "unreadable.svs") as slide:
        with pytest.raises(SlideError, match=r"slide 'unreadable'.*cannot decode pixels"):
            slide.read_region_scaled(0, 0, 16, 16)


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match="does not exist"):
        open_slide(tmp_path / "nope.svs")


def test_best_level_is_the_coarsest_not_above_target(fixtures):
    downsamples = (1.0, 2.0, 4.016129032258064, 8.086312118570184)
    assert best_level(downsamples, 1.0) == 0
    assert best_level(downsamples, 3.9) == 1
    assert best_level(downsamples, 4.02) == 2
    assert best_level(downsamples, 100) == 3


@pytest.mark.parametrize("mpp,mag", [(0.25, 40), (0.2527, 40), (0.499, 20), (0.5, 20), (1.0, 10), (0.12, 80)])
def test_magnification_bins(mpp, mag):
    assert magnification_from_mpp(mpp) == mag


def test_read_region_scaled_matches_level0_read_downsampled(slide_40x):
    import cv2
    import numpy as np

    with open_slide(slide_40x) as slide:
        x, y, size = 2048, 2048, 1024
        via_pyramid = slide.read_region_scaled(x, y, size, 256).astype(float)
        direct = slide.read_level(x, y, 0, (size, size))
        reference = cv2.resize(direct, (256, 256), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(via_pyramid - reference).mean() < 6.0
