"""tiffslide: Aperio SVS and generic tiled TIFF through tifffile/zarr, several times faster than OpenSlide and,
for those formats, bit-identical to it (tests/test_readers.py checks). It pads outside the image with black; that
border is whitened, as OpenSlide's transparent border blends to white."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import SlideError
from pipeline.readers.base import WHITE, SlideReader, white

#: tiffslide's own key prefix; its keys are renamed to OpenSlide's so mpp resolution reads one vocabulary.
_PREFIX = "tiffslide."


def _decoder(compression: int) -> None:
    """Raise unless tifffile can decode this TIFF compression (an unknown tag fails here, not mid-slide)."""
    import tifffile

    try:
        tifffile.TIFF.DECOMPRESSORS[compression]
    except KeyError:
        raise ValueError(f"Unsupported TIFF compression: {compression}") from None


class TiffSlideReader(SlideReader):
    name = "tiffslide"

    def __init__(self, path: Path, slide_id: str):
        super().__init__(path, slide_id)
        import tiffslide

        try:
            self._ts = tiffslide.TiffSlide(str(path))
            self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self._ts.level_dimensions)
            self.level_downsamples = tuple(float(d) for d in self._ts.level_downsamples)
            for level in self._ts.ts_tifffile.series[0].levels:
                _decoder(level.keyframe.compression)  # fail at open, as OpenSlide does, not at the first read
        except Exception as err:  # tifffile raises many types for a file it cannot parse
            raise SlideError(slide_id, f"tiffslide cannot open {path.name}: {err}") from err
        props = {}
        for key, value in self._ts.properties.items():
            if value is None or isinstance(value, (dict, list, tuple)):
                continue
            name = "openslide." + key[len(_PREFIX):] if key.startswith(_PREFIX) else key
            props[name] = str(value)
        self.properties = props

    def read(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.level_downsamples[level]
        lx, ly = int(x / ds), int(y / ds)  # tiffslide's own level coordinates (it truncates, as here)
        lw, lh = self.level_dimensions[level]
        w, h = size
        if lx >= lw or ly >= lh or lx + w <= 0 or ly + h <= 0:
            return white(size)  # wholly outside: nothing to decode (and no padding warning from tiffslide)
        try:
            rgb = np.asarray(self._ts.read_region((int(x), int(y)), int(level), size, as_array=True))[..., :3]
        except Exception as err:  # imagecodecs raises per-codec error types (e.g. Jpeg8Error)
            raise SlideError(self.slide_id, f"cannot decode pixels at level-0 ({x}, {y}), level {level}: {err}") from err
        if lx >= 0 and ly >= 0 and lx + w <= lw and ly + h <= lh:
            return rgb
        rgb = rgb.copy()  # whiten tiffslide's black padding outside the level
        rgb[:, : max(0, -lx)] = WHITE
        rgb[:, max(0, lw - lx) :] = WHITE
        rgb[: max(0, -ly)] = WHITE
        rgb[max(0, lh - ly) :] = WHITE
        return rgb

    def close(self) -> None:
        self._ts.close()
