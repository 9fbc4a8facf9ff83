"""Slide access: open with a reader (pipeline.readers), resolve microns per pixel and its source, pick pyramid levels, read regions.

The magnification of a slide is never assumed. mpp comes from the slide's metadata (OpenSlide's normalised key,
vendor keys, TIFF resolution tags), then from the objective power, then from a per-slide override; a value
outside the plausible range for brightfield scanners (e.g. 352.8 um/px from a 72-dpi TIFF tag) is rejected.
It is resolved once, at patching, and recorded in patches/{slide}.h5; later stages open the slide with that
recorded value (`open_slide(..., mpp=read_recorded_mpp(patches))`) and never need the override again.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import cv2
import numpy as np

from pipeline.errors import SlideError
from pipeline.formats import read_patches
from pipeline.mpp_overrides import MppOverride, read_mpp_overrides  # noqa: F401  (re-exported)
from pipeline.readers import DEFAULT_READER, open_reader
from pipeline.readers.omezarr import MPP_KEY as NGFF_MPP_KEY

log = logging.getLogger(__name__)

#: mpp outside this range is not a brightfield whole-slide scan (80x ~ 0.12, 1.25x ~ 8).
PLAUSIBLE_MPP = (0.05, 4.0)

#: nominal magnifications and the mpp bin each covers (TRIDENT's binning: 20x is 0.3-0.6 um/px).
MAGNIFICATION_BINS: tuple[tuple[float, int], ...] = (
    (0.16, 80),
    (0.2, 60),
    (0.3, 40),
    (0.6, 20),
    (1.2, 10),
    (2.4, 5),
)

#: metadata keys holding mpp directly, in the order they are trusted.
MPP_KEYS = ("openslide.mpp-x", "aperio.MPP", "openslide.mirax.MPP", "hamamatsu.XResolution", NGFF_MPP_KEY)
POWER_KEYS = ("openslide.objective-power", "aperio.AppMag", "hamamatsu.SourceLens")
UM_PER_UNIT = {"centimeter": 1e4, "inch": 25_400.0, "millimeter": 1e3, "micrometer": 1.0}

#: mpp_source of a slide opened with the mpp its patch file records (see `open_slide`).
RECORDED_MPP_SOURCE = "patches"


def magnification_from_mpp(mpp: float) -> int:
    """Nominal objective magnification of a level-0 mpp (40x for 0.2-0.3 um/px, 20x for 0.3-0.6, ...)."""
    for upper, mag in MAGNIFICATION_BINS:
        if mpp < upper:
            return mag
    raise ValueError(f"mpp {mpp} is coarser than any supported magnification")


def _float(value: str | None) -> float | None:
    try:
        out = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return out if out is not None and math.isfinite(out) and out > 0 else None


def mpp_from_properties(props: dict[str, str]) -> tuple[float | None, str | None]:
    """mpp and the key it came from, from metadata alone; (None, None) if no key has a positive number."""
    for key in MPP_KEYS:
        value = _float(props.get(key))
        if value is not None:
            return value, key
    res = _float(props.get("tiff.XResolution"))
    unit = (props.get("tiff.ResolutionUnit") or "").lower()
    if res is not None and unit in UM_PER_UNIT:
        return UM_PER_UNIT[unit] / res, f"tiff.XResolution ({unit})"
    return None, None


def power_from_properties(props: dict[str, str]) -> tuple[float | None, str | None]:
    for key in POWER_KEYS:
        value = _float(props.get(key))
        if value is not None:
            return value, key
    return None, None


def plausible(mpp: float) -> bool:
    return PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def resolve_mpp(slide_id: str, props: dict[str, str], override: MppOverride | None = None) -> tuple[float, str]:
    """Decide the level-0 mpp of a slide and record where it came from.

    Order: metadata mpp keys and TIFF resolution tags, then objective power (mpp = 10 / power), then the
    override. A forced override wins over metadata. Implausible values are skipped with the reason kept, so
    the final error explains every candidate that was rejected.
    """
    if override is not None and override.force:
        if not plausible(override.mpp):
            raise SlideError(slide_id, f"override mpp {override.mpp} is outside {PLAUSIBLE_MPP} um/px")
        return override.mpp, override.source
    rejected: list[str] = []
    mpp, key = mpp_from_properties(props)
    if mpp is not None:
        if plausible(mpp):
            return mpp, key  # type: ignore[return-value]
        rejected.append(f"{key} gives {mpp:.4g} um/px, outside the plausible range {PLAUSIBLE_MPP}")
    power, pkey = power_from_properties(props)
    if power is not None:
        mpp_power = 10.0 / power
        if plausible(mpp_power):
            return mpp_power, f"objective power ({pkey}={power:g})"
        rejected.append(f"{pkey}={power:g} gives {mpp_power:.4g} um/px")
    if override is not None:
        if not plausible(override.mpp):
            raise SlideError(slide_id, f"override mpp {override.mpp} is outside {PLAUSIBLE_MPP} um/px")
        return override.mpp, override.source
    found = "; ".join(rejected) if rejected else "no mpp, resolution or objective-power metadata"
    raise SlideError(
        slide_id,
        f"cannot determine microns per pixel: {found}. Add the slide to the mpp override CSV "
        f"(config key mpp_overrides, columns slide_id,mpp) to process it.",
    )


def best_level(downsamples: Iterable[float], target: float, tolerance: float = 0.01) -> int:
    """Index of the coarsest level whose downsample does not exceed `target` (so we only ever shrink)."""
    best = 0
    for i, ds in enumerate(downsamples):
        if ds <= target * (1 + tolerance) and ds >= list(downsamples)[best]:
            best = i
    return best


def resize_square(image: np.ndarray, out_px: int) -> np.ndarray:
    """A square read to out_px x out_px: area averaging to shrink, bilinear to enlarge, untouched if equal."""
    side = image.shape[0]
    if side == out_px:
        return image
    interp = cv2.INTER_AREA if side > out_px else cv2.INTER_LINEAR
    return cv2.resize(image, (out_px, out_px), interpolation=interp)


class Slide:
    """An open whole-slide image with a resolved mpp. Use as a context manager; each process opens its own."""

    def __init__(
        self,
        path: str | Path,
        slide_id: str | None = None,
        override: MppOverride | None = None,
        *,
        mpp: float | None = None,
        reader: str = DEFAULT_READER,
    ):
        self.path = Path(path)
        self.slide_id = slide_id or self.path.stem
        if not self.path.exists():
            raise SlideError(self.slide_id, f"file {self.path} does not exist")
        self._reader = open_reader(self.path, self.slide_id, reader)
        self.reader = self._reader.name  # recorded in outputs beside mpp_source
        self.properties: dict[str, str] = dict(self._reader.properties)
        if mpp is None:
            self.mpp, self.mpp_source = resolve_mpp(self.slide_id, self.properties, override)
        else:
            self.mpp, self.mpp_source = _checked_recorded_mpp(self.slide_id, mpp), RECORDED_MPP_SOURCE
        self.level0_magnification = magnification_from_mpp(self.mpp)
        self.dimensions: tuple[int, int] = self._reader.dimensions
        self.level_dimensions: tuple[tuple[int, int], ...] = self._reader.level_dimensions
        self.level_downsamples: tuple[float, ...] = self._reader.level_downsamples

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    def __repr__(self) -> str:
        return (
            f"Slide({self.slide_id!r}, {self.dimensions[0]}x{self.dimensions[1]}, mpp={self.mpp:.4g} "
            f"[{self.mpp_source}], {self.level0_magnification}x)"
        )

    def best_level(self, downsample: float) -> int:
        return best_level(self.level_downsamples, downsample)

    def read_level(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 of `size` px of `level` from level-0 (x, y), areas outside the scan white (every reader's
        contract); no resizing."""
        return self._reader.read(x, y, level, size)

    def level_for(self, size_level0: int, out_px: int) -> tuple[int, int]:
        """The level a square level-0 box of `size_level0` px is read from to give `out_px` px (the coarsest with at
        least out_px across it), and the box's side in that level's pixels."""
        level = self.best_level(size_level0 / out_px)
        return level, max(1, int(round(size_level0 / self.level_downsamples[level])))

    def read_region_scaled(self, x: int, y: int, size_level0: int, out_px: int) -> np.ndarray:
        """A square level-0 box [x, x+size_level0)^2 as an out_px x out_px RGB array.

        Read at the coarsest level that still has at least out_px pixels across the box, then resized with
        area interpolation, so the result is the same whichever pyramid the scanner wrote.
        """
        level, side = self.level_for(size_level0, out_px)
        return resize_square(self.read_level(x, y, level, (side, side)), out_px)

    def read_overview(self, target_mpp: float, max_side: int = 8192) -> tuple[np.ndarray, float]:
        """The whole slide at about `target_mpp` (never finer than needed) and its exact level-0 downsample.

        Used for segmentation and QC pictures: one read of the coarsest suitable level, then resized.
        """
        downsample = max(1.0, target_mpp / self.mpp, max(self.dimensions) / max_side)
        level = self.best_level(downsample)
        w, h = self.level_dimensions[level]
        image = self.read_level(0, 0, level, (w, h))
        out_w = max(1, int(round(self.dimensions[0] / downsample)))
        out_h = max(1, int(round(self.dimensions[1] / downsample)))
        if (out_w, out_h) != (w, h):
            image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA)
        return image, self.dimensions[0] / out_w


def open_slide(
    path: str | Path,
    slide_id: str | None = None,
    overrides: dict[str, MppOverride] | None = None,
    *,
    mpp: float | None = None,
    reader: str = DEFAULT_READER,
) -> Slide:
    """Open a slide with the named reader (pipeline.readers; `auto` picks by format), applying the override for
    its id if one is listed.

    `mpp` is the value the patch stage resolved and recorded in patches/{slide}.h5: the slide's mpp is resolved
    once, at patching (metadata, then override), and every later stage reads it back, so extraction and
    prediction need no override and cannot disagree with the patch grid. Given, it is used as-is (mpp_source
    "patches", no metadata lookup), still checked for plausibility; overrides may not be given with it.
    """
    slide_id = slide_id or Path(path).stem
    if mpp is not None and overrides:
        raise ValueError(f"slide '{slide_id}': give either the recorded mpp or overrides, not both")
    return Slide(path, slide_id, (overrides or {}).get(slide_id), mpp=mpp, reader=reader)


def _checked_recorded_mpp(slide_id: str, mpp: Any, where: str = "the recorded mpp") -> float:
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        raise SlideError(slide_id, f"{where} {mpp!r} is not a number; re-run patching") from None
    if not plausible(value):
        raise SlideError(slide_id, f"{where} {value:.4g} is outside the plausible range {PLAUSIBLE_MPP} um/px")
    return value


def recorded_mpp(attrs: Mapping[str, Any], slide_id: str, where: str | Path = "the patch file") -> float:
    """The level-0 mpp the patch stage resolved, from a patch file's attrs (PatchGrid.attrs); absent is an error,
    since guessing again here is what recording it at patching avoids."""
    value = attrs.get("mpp")
    if value in (None, ""):
        raise SlideError(slide_id, f"{where} records no mpp; re-run patching")
    return _checked_recorded_mpp(slide_id, value, f"mpp {value!r} recorded in {where}")


def read_recorded_mpp(patches_path: str | Path, slide_id: str | None = None) -> float:
    """`recorded_mpp` of a patches/{slide}.h5 file."""
    return recorded_mpp(read_patches(patches_path).attrs, slide_id or Path(patches_path).stem, patches_path)


def check_patches_match(slide: Slide, attrs: Mapping[str, Any], patches_path: str | Path) -> None:
    """Refuse a patch file made for another slide: its recorded level-0 size (and slide id, where recorded) must
    be this slide's, since its coordinates and mpp are only valid for the slide it was made from. A file from an
    older version that records no size is accepted with a warning (its slide id, if any, is still compared)."""
    recorded: tuple[int, int] | None = None
    if "level0_width" in attrs and "level0_height" in attrs:
        recorded = (int(attrs["level0_width"]), int(attrs["level0_height"]))
    else:
        log.warning("slide '%s': %s records no level-0 size (an older patch file); its size cannot be compared "
                    "with %s; re-run patching to have it checked", slide.slide_id, patches_path, slide.path)
    problems = []
    if recorded is not None and recorded != tuple(slide.dimensions):
        problems.append(
            f"level-0 size {recorded[0]}x{recorded[1]} px recorded in {patches_path}, "
            f"but {slide.path} is {slide.dimensions[0]}x{slide.dimensions[1]} px"
        )
    recorded_id = attrs.get("slide_id")
    if recorded_id not in (None, "") and str(recorded_id) != slide.slide_id:
        problems.append(f"{patches_path} was made for slide '{recorded_id}', not '{slide.slide_id}' ({slide.path})")
    if problems:
        raise SlideError(slide.slide_id, "the patch file belongs to another slide: " + "; ".join(problems))
