"""Patch features of one slide at 5x and 20x with a vision-language backbone.

Reads patches/{slide}.h5 and opens the slide with the mpp recorded there (resolved once, at patching, so no mpp
override is needed here; a patch file of another slide is refused), then for each kept 5x patch reads it from the
pyramid level made for 5x and its kept 20x children from the 20x level (pipeline.features.loader); both go through
the backbone's preprocessing and image encoder (bf16 autocast on a GPU, fp32 on the CPU). Writes features [N, D]
float32 and coords [N, 2] (level-0, the order of patches.h5) to --out-5x and --out-20x, with attrs naming the backbone, its weights (path and sha256, or
"random"), input size and normalisation. A damaged slide fails with its reason unless --on-read-error blank.
"""

from __future__ import annotations

import argparse

from pipeline import status
from pipeline.commands._common import StatusTarget, add_slide_arguments, recover_status_target, run_recorded, slide_id
from pipeline.features.registry import ON_READ_ERROR, list_backbones

NAME = "extract"
HELP = "5x and 20x patch features of one slide (only the kept patches decoded)"


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """--backbone/--weights/--tokenizer/--device, shared with text-embed."""
    parser.add_argument("--backbone", required=True, choices=list_backbones(), help="registered backbone")
    parser.add_argument("--weights", default=None,
                        help="checkpoint file, the backbone's hub id (needs network), or 'random' (tests/demo only); "
                             "default: the published weights from the hub")
    parser.add_argument("--tokenizer", default=None, help="tokenizer file (CONCH); default: beside the weights")
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights and of torch")


def status_target(argv: list[str]) -> StatusTarget | None:
    """Where a command line that does not parse records its failure."""
    return recover_status_target(argv, "extract")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_slide_arguments(parser, mpp_overrides=False)  # the mpp recorded in --patches is used
    parser.add_argument("--patches", required=True, help="patches/{slide}.h5 from the patch stage")
    add_backbone_arguments(parser)
    parser.add_argument("--out-5x", required=True, help="output features h5 of the 5x patches")
    parser.add_argument("--out-20x", required=True, help="output features h5 of the 20x patches")
    add_extraction_options(parser)


def workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"--workers must be 'auto' or a number >= 0, got {value!r}")
    return n


def add_extraction_options(parser: argparse.ArgumentParser) -> None:
    """Batch, loading and read-error options, shared with extract-chunk."""
    parser.add_argument("--batch-size", type=int, default=64, help="patches (5x + 20x) per forward pass")
    parser.add_argument("--workers", type=workers, default="auto",
                        help="worker processes decoding the slide; 0 = in this process, no overlap; auto = "
                             "workers on a GPU machine, one decode thread beside the model on the CPU")
    parser.add_argument("--on-read-error", choices=ON_READ_ERROR, default="fail",
                        help="fail the slide on corrupt pixels, or substitute white tiles and count them")
    parser.add_argument("--threads", type=int, default=0,
                        help="cores of the job: torch's CPU threads and the decoders' budget (0 = all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def record_blanks(status_dir: str, result) -> None:
    """A slide extracted with white tiles for unreadable pixels is ok, with a note saying how many."""
    if result.blank_5x:
        status.record(status_dir, "extract", result.slide_id, True,
                      f"{result.blank_5x} 5x and {result.blank_20x} 20x patches unreadable, encoded as white tiles")


def run(args: argparse.Namespace) -> int:
    def work():
        from pipeline.features.extract import extract_slide  # heavy (torch): inside, so a failed import is recorded

        set_threads(args.threads)
        return extract_slide(
            args.slide, args.patches, args.out_5x, args.out_20x, args.backbone, weights=args.weights,
            tokenizer=args.tokenizer, slide_id=slide_id(args), batch_size=args.batch_size,
            num_workers=args.workers, device=args.device, on_read_error=args.on_read_error,
            reader=args.reader, seed=args.seed, progress=not args.no_progress, cpus=args.threads or None,
        )

    record_blanks(args.status_dir, run_recorded("extract", args, work))
    return 0
