"""OME-Zarr (OME-NGFF 0.4 on Zarr v2, 0.5 on Zarr v3) multiscale images as slides, and a writer for them.

A bioformats2raw conversion holds its image at series "0" of the root; a plain NGFF image holds `multiscales` at
the root. Levels are the multiscale's datasets; mpp is the x scale of the first dataset's coordinate
transformation in the x axis's unit; downsamples are the ratios of the x scales. Only 8-bit RGB (3 channels)
brightfield images are slides here; other axes (t, z) are read at index 0.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError, SlideError
from pipeline.readers.base import SlideReader, white

#: metadata key of the level-0 x scale in micrometers (pipeline.slide's MPP_KEYS lists it).
MPP_KEY = "ngff.scale-x"
UM_PER = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "angstrom": 1e-4}
BIOFORMATS2RAW_SERIES = "0"


def _multiscales(group: Any) -> tuple[Any, dict]:
    """The image group and its first multiscale, following the bioformats2raw layout when present."""
    attrs = dict(group.attrs)
    attrs = attrs.get("ome", attrs)  # NGFF 0.5 nests its metadata under "ome"
    if "multiscales" not in attrs and "bioformats2raw.layout" in attrs:
        return _multiscales(group[BIOFORMATS2RAW_SERIES])
    if not attrs.get("multiscales"):
        raise ValueError("no NGFF 'multiscales' metadata")
    return group, attrs["multiscales"][0]


def _x_scale(dataset: dict, x_axis: int) -> float:
    for t in dataset.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            return float(t["scale"][x_axis])
    return 1.0


class OmeZarrReader(SlideReader):
    name = "omezarr"

    def __init__(self, path: Path, slide_id: str):
        super().__init__(path, slide_id)
        import zarr

        try:
            image, ms = _multiscales(zarr.open_group(str(path), mode="r"))
            axes = [a["name"] if isinstance(a, dict) else a for a in ms["axes"]]
            self._arrays = [image[d["path"]] for d in ms["datasets"]]
        except Exception as err:  # zarr and KeyError/ValueError of malformed metadata
            raise SlideError(slide_id, f"{path.name} is not a readable OME-Zarr image: {err}") from err
        if "x" not in axes or "y" not in axes:
            raise SlideError(slide_id, f"OME-Zarr axes {axes} lack x or y")
        self._axes = axes
        first = self._arrays[0]
        channels = first.shape[axes.index("c")] if "c" in axes else 1
        if channels != 3 or first.dtype != np.uint8:
            raise SlideError(slide_id, f"OME-Zarr image has {channels} channel(s) of {first.dtype}; a slide here is "
                                       "8-bit RGB (3 channels)")
        ix, iy = axes.index("x"), axes.index("y")
        self.level_dimensions = tuple((int(a.shape[ix]), int(a.shape[iy])) for a in self._arrays)
        scales = [_x_scale(d, ix) for d in ms["datasets"]]
        self.level_downsamples = tuple(s / scales[0] for s in scales)
        unit = ms["axes"][ix].get("unit", "") if isinstance(ms["axes"][ix], dict) else ""
        self.properties = {"ngff.version": str(ms.get("version", "")), "ngff.axes": "".join(axes),
                           "ngff.x-unit": unit}
        if unit in UM_PER and math.isfinite(scales[0]) and scales[0] > 0:
            self.properties[MPP_KEY] = repr(scales[0] * UM_PER[unit])

    def read(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        lx, ly = int(x / ds), int(y / ds)
        w, h = size
        out = white(size)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        index = tuple(slice(y0, y1) if a == "y" else slice(x0, x1) if a == "x" else slice(None) if a == "c" else 0
                      for a in self._axes)
        try:
            part = np.asarray(self._arrays[level][index])
        except Exception as err:  # a codec error of a damaged chunk
            raise SlideError(self.slide_id, f"cannot decode pixels at level-0 ({x}, {y}), level {level}: {err}") from err
        kept = [a for a in self._axes if a in ("y", "x", "c")]
        part = part.transpose([kept.index(a) for a in ("y", "x", "c")])
        out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = part
        return out


def write_ome_zarr(slide: Any, out: str | Path, chunk: int = 512, min_side: int = 512) -> Path:
    """Convert an open `pipeline.slide.Slide` to OME-Zarr in bioformats2raw's layout (NGFF 0.4, Zarr v2, axes tczyx,
    2x pyramid, the slide's mpp as the x/y scale), atomically; `python -m pipeline to-ome-zarr` runs it.

    Level 0 is copied from the slide band by band of `chunk` rows; each further level halves the previous one
    with area averaging, band by band from the store, until its shorter side is under `min_side`. Memory stays
    bounded by a band, so a whole TCGA slide converts on a laptop.
    """
    import cv2
    import zarr

    out = Path(out)
    if out.exists():
        raise PipelineError(f"{out} exists; remove it first (a finished conversion is never overwritten)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        root.attrs["bioformats2raw.layout"] = 3
        image = root.create_group(BIOFORMATS2RAW_SERIES)
        w, h = slide.dimensions
        mpp = float(slide.mpp)
        level, datasets, scale = 0, [], 1.0
        previous = None
        while True:
            arr = image.create_array(str(level), shape=(1, 3, 1, h, w), chunks=(1, 1, 1, chunk, chunk), dtype="uint8")
            for y in range(0, h, chunk):
                rows = min(chunk, h - y)
                if previous is None:
                    band = slide.read_level(0, y, 0, (w, rows))
                else:  # the band's source rows of the previous level, read back from the store
                    source = np.asarray(previous[0, :, 0, 2 * y : 2 * y + 2 * rows]).transpose(1, 2, 0)
                    band = cv2.resize(source, (w, rows), interpolation=cv2.INTER_AREA)
                arr[0, :, 0, y : y + rows, :] = band.transpose(2, 0, 1)
            datasets.append({"path": str(level), "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, 1.0, 1.0, mpp * scale, mpp * scale]}]})
            if min(w, h) // 2 < min_side:
                break
            previous = arr
            w, h, scale, level = w // 2, h // 2, scale * 2, level + 1
        image.attrs["multiscales"] = [{
            "version": "0.4",
            "name": slide.slide_id,
            "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
                     {"name": "z", "type": "space", "unit": "micrometer"},
                     {"name": "y", "type": "space", "unit": "micrometer"},
                     {"name": "x", "type": "space", "unit": "micrometer"}],
            "datasets": datasets,
        }]
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
