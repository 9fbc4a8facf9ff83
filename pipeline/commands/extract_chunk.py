"""Features of several slides with several backbones in one process (features.slides_per_job > 1 or
features.shared_decode): the backbones are built once, each slide's parents decoded once for all of them.

Writes each slide's feature files into --out-dir ({backbone}/{slide}_5x.h5, {backbone}/{slide}_20x.h5), or
{slide}.failed.json with the reason when that slide fails; the others go on, and the command succeeds unless
every slide failed. `python -m pipeline take-features` then places one slide's files into the features layout.
"""

from __future__ import annotations

import argparse

from pipeline import status
from pipeline.commands._common import add_reader_argument, check_slide_id
from pipeline.commands.extract import add_extraction_options, record_blanks, set_threads
from pipeline.errors import PipelineError
from pipeline.features.registry import list_backbones

NAME = "extract-chunk"
HELP = "5x and 20x features of several slides and backbones in one process (built once, decoded once)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slides", nargs="+", required=True, help="slide files")
    parser.add_argument("--slide-ids", nargs="+", type=check_slide_id, required=True, help="their ids, in order")
    parser.add_argument("--patches", nargs="+", required=True, help="their patches/{slide}.h5, in order")
    parser.add_argument("--backbones", nargs="+", required=True, choices=list_backbones(), help="registered backbones")
    parser.add_argument("--weights", nargs="+", required=True,
                        help="per backbone: checkpoint file, hub id, 'random', or '' for the published weights")
    parser.add_argument("--tokenizers", nargs="+", required=True, help="per backbone: tokenizer file or ''")
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights and of torch")
    parser.add_argument("--out-dir", required=True, help="chunk folder receiving every slide's files")
    parser.add_argument("--status-dir", default="", help="folder for ok/failed records (status/extract/{slide}.json)")
    add_reader_argument(parser)
    add_extraction_options(parser)


def _same_lengths(args: argparse.Namespace, *names: str) -> None:
    lengths = {n: len(getattr(args, n)) for n in names}
    if len(set(lengths.values())) > 1:
        raise PipelineError(f"{', '.join('--' + n.replace('_', '-') for n in names)} must be as long: {lengths}")


def run(args: argparse.Namespace) -> int:
    from pipeline.features.chunks import chunk_features, record_failure
    from pipeline.features.extract import BackboneSpec, SlideJob, extract_slides

    _same_lengths(args, "slides", "slide_ids", "patches")
    _same_lengths(args, "backbones", "weights", "tokenizers")
    set_threads(args.threads)
    specs = [BackboneSpec(b, w, t or None) for b, w, t in zip(args.backbones, args.weights, args.tokenizers)]
    jobs = [SlideJob(sid, path, patches, {b: chunk_features(args.out_dir, b, sid) for b in args.backbones})
            for path, sid, patches in zip(args.slides, args.slide_ids, args.patches)]
    results = extract_slides(
        jobs, specs, device=args.device, seed=args.seed, batch_size=args.batch_size, num_workers=args.workers,
        on_read_error=args.on_read_error, reader=args.reader, progress=not args.no_progress,
        cpus=args.threads or None,
    )
    for job, result in zip(jobs, results):
        if isinstance(result, PipelineError):
            reason = getattr(result, "reason", str(result))
            record_failure(args.out_dir, job.slide_id, reason)
            status.record(args.status_dir, "extract", job.slide_id, False, reason)
        else:
            status.record(args.status_dir, "extract", job.slide_id, True)
            record_blanks(args.status_dir, result[0])
    return 0 if any(not isinstance(r, PipelineError) for r in results) else 1
