"""Convert a slide to OME-Zarr (NGFF 0.4 in bioformats2raw's layout, 2x pyramid, the slide's mpp as the scale).

For slides in formats OpenSlide reads; bioformats2raw converts the rest. The output folder is a slide like any
other: list it in a local sheet (`file` column) and the `omezarr` reader opens it (`slides.reader: auto`).
"""

from __future__ import annotations

import argparse

from pipeline.commands._common import add_reader_argument, overrides, slide_id

NAME = "to-ome-zarr"
HELP = "convert a slide to OME-Zarr (bioformats2raw layout)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slide", required=True, help="path of the slide file")
    parser.add_argument("--slide-id", help="slide id (default: file name without extension)")
    parser.add_argument("--out", required=True, help="output folder, e.g. slide.zarr (must not exist)")
    parser.add_argument("--chunk", type=int, default=512, help="chunk side in px")
    parser.add_argument("--mpp-overrides", default="", help="CSV slide_id,mpp[,force] for slides without usable mpp")
    parser.add_argument("--mpp-override", type=float, help="this slide's mpp where its metadata has none usable")
    parser.add_argument("--mpp-override-force", action="store_true", help="use --mpp-override even over metadata")
    add_reader_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.readers.omezarr import write_ome_zarr
    from pipeline.slide import open_slide

    with open_slide(args.slide, slide_id(args), overrides(args), reader=args.reader) as slide:
        out = write_ome_zarr(slide, args.out, chunk=args.chunk)
    print(f"{out}: {slide.dimensions[0]}x{slide.dimensions[1]} px at {slide.mpp:.4g} um/px ({slide.mpp_source})")
    return 0
