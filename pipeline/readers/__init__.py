"""Slide readers behind one interface, chosen by name or by the file's format (`slides.reader` in the config).

- `openslide`: every vendor format OpenSlide knows (the reference for pixels).
- `tiffslide`: Aperio SVS and generic tiled TIFF through tifffile; the same pixels as OpenSlide, several times faster.
- `omezarr`: OME-Zarr (NGFF) multiscale images, e.g. slides converted with bioformats2raw.
- `auto`: the fastest reader that gives OpenSlide's pixels for the file's format (`auto_reader`).

This module imports no reader library, so the CLI and the schema can list the names cheaply.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from pipeline.readers.base import SlideReader

#: reader name -> "module:class"; the one list of readers (CLI choices and the config schema follow it).
READERS: dict[str, str] = {
    "openslide": "pipeline.readers.openslide_reader:OpenSlideReader",
    "tiffslide": "pipeline.readers.tiffslide_reader:TiffSlideReader",
    "omezarr": "pipeline.readers.omezarr:OmeZarrReader",
}
AUTO = "auto"
READER_CHOICES = (AUTO, *READERS)
DEFAULT_READER = AUTO

#: OpenSlide vendors whose files tiffslide decodes to bit-identical pixels (checked in tests/test_readers.py).
TIFFSLIDE_IDENTICAL = ("aperio", "generic-tiff")


def reader_class(name: str) -> type[SlideReader]:
    if name not in READERS:
        raise ValueError(f"unknown slide reader {name!r}; choose one of {', '.join(READER_CHOICES)}")
    module, cls = READERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def is_ome_zarr(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / marker).exists() for marker in (".zattrs", "zarr.json", ".zgroup"))


def auto_reader(path: str | Path) -> str:
    """The reader `auto` uses for a file: OME-Zarr folders -> omezarr; the TIFF vendors where tiffslide's pixels
    equal OpenSlide's -> tiffslide (when installed); everything else -> openslide."""
    if is_ome_zarr(path):
        return "omezarr"
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        vendor = None
    if vendor in TIFFSLIDE_IDENTICAL and importlib.util.find_spec("tiffslide") is not None:
        return "tiffslide"
    return "openslide"


def open_reader(path: str | Path, slide_id: str, name: str = DEFAULT_READER) -> SlideReader:
    """Open `path` with the named reader (or the one `auto` picks); failures are SlideErrors naming the slide."""
    chosen = auto_reader(path) if name == AUTO else name
    return reader_class(chosen)(Path(path), slide_id)


__all__ = ["READERS", "READER_CHOICES", "DEFAULT_READER", "SlideReader", "auto_reader", "open_reader", "reader_class"]
