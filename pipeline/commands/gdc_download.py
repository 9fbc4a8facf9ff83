"""Download one slide from the GDC, resumable and md5-verified.

Streams /data/{file_id} to <out>.partial while hashing it; after a dropped connection it resumes with a Range
request; connection errors, 429 (honouring Retry-After) and 5xx are retried with exponential backoff. The file
is renamed to <out> only when its size and md5 match the manifest, and a file already at <out> with the right
md5 is not downloaded again. Either --manifest with --slide and --out (what the workflow runs), or --file-id
with --out-dir (the file then keeps the name the server gives, sanitised). With --status-dir, a --slide download
records ok or its failure (stage `download`), so a slide that cannot be fetched is listed and left out, not waited on.
"""

from __future__ import annotations

import argparse

from pipeline.commands._common import (
    StatusTarget,
    add_status_arguments,
    check_slide_id,
    recover_status_target,
    run_recorded,
)
from pipeline.commands._gdc_args import add_client_arguments, client_from_args
from pipeline.errors import PipelineError
from pipeline.gdc.download import download_file, download_slide

NAME = "gdc-download"
HELP = "download one GDC slide: resumable, retried, md5-verified"
STAGE = "download"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", help="manifest.tsv from gdc-query (or gdc-client format)")
    parser.add_argument("--slide", type=check_slide_id, help="slide id (file name without extension) to download from the manifest")
    parser.add_argument("--out", help="destination file for --slide")
    parser.add_argument("--file-id", help="download this GDC file id instead (no md5 check unless --md5)")
    parser.add_argument("--out-dir", help="folder for --file-id; the file keeps its GDC name, sanitised")
    parser.add_argument("--md5", help="expected md5 for --file-id")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_status_arguments(parser)
    add_client_arguments(parser)


def status_target(argv: list[str]) -> StatusTarget | None:
    """Where a command line that does not parse records its failure."""
    return recover_status_target(argv, STAGE, id_flag="--slide", path_flag=None)


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.manifest and args.slide and args.out and not args.file_id:
        run_recorded(
            STAGE,
            args,
            lambda: download_slide(client_from_args(args), args.manifest, args.slide, args.out, progress=progress),
            slide=args.slide,
        )
        return 0
    client = client_from_args(args)
    if args.file_id:
        if not args.out_dir:
            raise PipelineError("--file-id needs --out-dir")
        download_file(client, args.file_id, dest_dir=args.out_dir, md5=args.md5, progress=progress)
    else:
        raise PipelineError("give --manifest, --slide and --out, or --file-id and --out-dir")
    return 0
