"""Features of several slides in one process (features.slides_per_job > 1): the backbone is built once.

Writes each slide's two feature files into --out-dir ({slide}_5x.h5, {slide}_20x.h5), or {slide}.failed.json
with the reason when that slide fails; the others go on, and the command succeeds unless every slide failed.
`python -m pipeline take-features` then places one slide's files into the features layout.
"""

from __future__ import annotations

import argparse

from pipeline import status
from pipeline.commands._common import add_reader_argument, check_slide_id
from pipeline.commands.extract import add_backbone_arguments, add_extraction_options, record_blanks, set_threads
from pipeline.errors import PipelineError

NAME = "extract-chunk"
HELP = "5x and 20x features of several slides in one process (the backbone built once)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slides", nargs="+", required=True, help="slide files")
    parser.add_argument("--slide-ids", nargs="+", type=check_slide_id, required=True, help="their ids, in order")
    parser.add_argument("--patches", nargs="+", required=True, help="their patches/{slide}.h5, in order")
    parser.add_argument("--out-dir", required=True, help="chunk folder receiving every slide's files")
    parser.add_argument("--status-dir", default="", help="folder for ok/failed records (status/extract/{slide}.json)")
    add_reader_argument(parser)
    add_backbone_arguments(parser)
    add_extraction_options(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.features.chunks import chunk_files, record_failure
    from pipeline.features.extract import SlideJob, extract_slides

    if not len(args.slides) == len(args.slide_ids) == len(args.patches):
        raise PipelineError(f"--slides, --slide-ids and --patches must be as long: {len(args.slides)}, "
                            f"{len(args.slide_ids)}, {len(args.patches)}")
    set_threads(args.threads)
    jobs = []
    for path, sid, patches in zip(args.slides, args.slide_ids, args.patches):
        f5, f20, _ = chunk_files(args.out_dir, sid)
        jobs.append(SlideJob(sid, path, patches, f5, f20))
    results = extract_slides(
        jobs, args.backbone, weights=args.weights, tokenizer=args.tokenizer, device=args.device, seed=args.seed,
        batch_size=args.batch_size, num_workers=args.workers, on_read_error=args.on_read_error,
        reader=args.reader, progress=not args.no_progress, cpus=args.threads or None,
    )
    for job, result in zip(jobs, results):
        if isinstance(result, PipelineError):
            reason = getattr(result, "reason", str(result))
            record_failure(args.out_dir, job.slide_id, reason)
            status.record(args.status_dir, "extract", job.slide_id, False, reason)
        else:
            status.record(args.status_dir, "extract", job.slide_id, True)
            record_blanks(args.status_dir, result)
    return 0 if any(not isinstance(r, PipelineError) for r in results) else 1
