"""Per-slide feature extraction: patches.h5 in, one features file per scale out (CLAM/TRIDENT/HiVE-MIL layout).

Row i of the 5x file is `coords_5x[i]` of patches.h5 and row j of the 20x file is `coords_20x[j]`, whatever order
the loader yields them in. The backbone runs under bf16 autocast on a GPU and in fp32 on the CPU; on the CPU the
run is deterministic (seeded, deterministic algorithms), so two runs write identical files.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline.device import autocast, resolve_device, run_precision
from pipeline.errors import PipelineError, SlideError
from pipeline.features.architectures.base import Backbone
from pipeline.features.loader import (
    AUTO,
    N_CHILDREN,
    ON_READ_ERROR,
    Batch,
    LoadingPlan,
    ParentDataset,
    PatchBatcher,
    iter_parents,
    loading_plan,
)
from pipeline.features.registry import create_backbone
from pipeline.formats import PatchGrid, PathLike, read_patches, write_features
from pipeline.readers import DEFAULT_READER
from pipeline.seeding import deterministic
from pipeline.slide import check_patches_match, open_slide, recorded_mpp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideFeatures:
    features_5x: np.ndarray  # [N, D] float32, rows of coords_5x
    features_20x: np.ndarray  # [M, D] float32, rows of coords_20x
    blank_5x: int
    blank_20x: int
    precision: str
    seconds: float
    decoded_px: int  # level pixels decoded (5x and 20x reads together)


def encode_images(backbone: Backbone, images: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    """uint8 [B, 3, S, S] -> float32 [B, D], at most `batch_size` images per forward pass."""
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        with autocast(device, backbone.cfg.precision):
            feats = backbone.encode_image(backbone.preprocess.normalize(x))
        out.append(feats.float().cpu())
    if not out:
        return np.zeros((0, backbone.embed_dim), np.float32)
    return torch.cat(out).numpy()


def extract_features(backbone: Backbone, slide_path: PathLike, slide_id: str, grid: PatchGrid,
                     **options: Any) -> SlideFeatures:
    """One backbone's features of a slide; see `extract_features_many` for the options."""
    return extract_features_many([backbone], slide_path, slide_id, grid, **options)[0]


def extract_features_many(
    backbones: Sequence[Backbone],
    slide_path: PathLike,
    slide_id: str,
    grid: PatchGrid,
    *,
    batch_size: int = 64,
    num_workers: int | str = AUTO,
    threads: int | None = None,
    device: str | torch.device = "auto",
    on_read_error: str = "fail",
    reader: str = DEFAULT_READER,
    progress: bool = True,
    cpus: int | None = None,
) -> list[SlideFeatures]:
    """Encode every 5x parent and its kept 20x children of one slide with each backbone; each parent is decoded once
    for all of them (and resized once per distinct model input).

    `batch_size` is the number of patches (5x and 20x together) per forward pass, every pass full but the last.
    `num_workers`: see `loading_plan` (`cpus`: the job's cores, default all); `threads` overrides the plan's decode
    threads when no workers are used (benchmarks). The slide is opened with the mpp in `grid.attrs` (recorded at
    patching). Read errors: see the loader.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    plan = loading_plan(num_workers, dev, cpus)
    if threads is not None and not plan.workers:
        plan = LoadingPlan(0, threads)
    preps = list(dict.fromkeys(bb.preprocess for bb in backbones))  # distinct model inputs, in order
    dataset = ParentDataset(slide_path, slide_id, grid, preps, on_read_error, reader)
    n5, n20 = len(dataset), len(grid.coords_20x)
    f5 = [np.zeros((n5, bb.embed_dim), np.float32) for bb in backbones]
    f20 = [np.zeros((n20, bb.embed_dim), np.float32) for bb in backbones]
    seen5 = np.zeros(n5, bool)
    seen20 = np.zeros(n20, bool)
    blank5 = blank20 = decoded = 0
    for bb in backbones:
        bb.to(dev)
    batcher = PatchBatcher(batch_size)
    ahead = 2 * max(1, batch_size // (N_CHILDREN + 1))  # two batches' worth of parents in flight
    started = time.perf_counter()
    names = "+".join(bb.cfg.name for bb in backbones)
    bar = tqdm(total=n5, desc=f"{slide_id} [{names}]", unit="parent", file=sys.stderr,
               disable=not progress, mininterval=1.0 if sys.stderr.isatty() else 15.0)

    def encode(batch: Batch) -> None:
        rows5, rows20 = batch.rows[batch.is_5x], batch.rows[~batch.is_5x]
        for b, bb in enumerate(backbones):
            feats = encode_images(bb, batch.images[preps.index(bb.preprocess)], batch_size, dev)
            f5[b][rows5], f20[b][rows20] = feats[batch.is_5x], feats[~batch.is_5x]
        seen5[rows5], seen20[rows20] = True, True

    try:
        with torch.inference_mode():
            for item in iter_parents(dataset, plan.workers, plan.threads, ahead, pin_memory=dev.type == "cuda"):
                if item["error"] and on_read_error == "fail":
                    x, y = (int(v) for v in dataset.coords_5x[int(item["index"])])
                    raise SlideError(
                        slide_id,
                        f"cannot read the 5x patch at level-0 ({x}, {y}): {item['error']}. The slide file is "
                        "damaged; set features.on_read_error: blank (CLI --on-read-error blank) to substitute "
                        "white tiles",
                    )
                if item["blank"]:
                    blank5, blank20 = blank5 + 1, blank20 + len(item["rows_20x"])
                decoded += int(item["decoded_px"])
                for batch in batcher.add(item):
                    encode(batch)
                bar.update(1)
            for batch in batcher.flush():
                encode(batch)
    finally:
        bar.close()
        dataset.close()
    if not (seen5.all() and seen20.all()):
        raise SlideError(slide_id, f"{(~seen5).sum()} 5x and {(~seen20).sum()} 20x rows were never encoded")
    seconds = time.perf_counter() - started
    if blank5:
        log.warning("slide '%s': %d 5x and %d 20x patches were unreadable and encoded as white tiles",
                    slide_id, blank5, blank20)
    log.info("slide '%s': %d 5x + %d 20x patches x %d backbone(s) in %.1f s (%.1f patches/s, %s, %s, %.2f Mpx "
             "decoded)", slide_id, n5, n20, len(backbones), seconds, (n5 + n20) / max(seconds, 1e-9), dev,
             plan.label, decoded / 1e6)
    return [SlideFeatures(f5[b], f20[b], blank5, blank20, run_precision(dev, bb.cfg.precision), seconds, decoded)
            for b, bb in enumerate(backbones)]


@dataclass(frozen=True)
class ExtractResult:
    slide_id: str
    out_5x: Path
    out_20x: Path
    n_5x: int
    n_20x: int
    blank_5x: int
    blank_20x: int
    seconds: float


@dataclass(frozen=True)
class FeatureTarget:
    """A built backbone and where its two feature files of a slide go."""

    backbone: Backbone
    out_5x: Path
    out_20x: Path


def extract_slide(
    slide_path: PathLike,
    patches_path: PathLike,
    out_5x: PathLike,
    out_20x: PathLike,
    backbone: str | Backbone = "tiny",
    *,
    weights: str | None = None,
    tokenizer: str | None = None,
    seed: int = 0,
    device: str = "auto",
    **options: Any,
) -> ExtractResult:
    """Extract one slide's 5x and 20x features with one backbone and write both files atomically.

    `backbone` is a registered name (built here, seeded) or a built Backbone. Options: see `extract_slide_many`.
    """
    with deterministic(seed, resolve_device(device)):
        model = create_backbone(backbone, weights, tokenizer=tokenizer, seed=seed) if isinstance(backbone, str) \
            else backbone
    target = FeatureTarget(model, Path(out_5x), Path(out_20x))
    return extract_slide_many(slide_path, patches_path, [target], seed=seed, device=device, **options)[0]


def extract_slide_many(
    slide_path: PathLike,
    patches_path: PathLike,
    targets: Sequence[FeatureTarget],
    *,
    slide_id: str | None = None,
    batch_size: int = 64,
    num_workers: int | str = AUTO,
    device: str = "auto",
    on_read_error: str = "fail",
    reader: str = DEFAULT_READER,
    seed: int = 0,
    progress: bool = True,
    cpus: int | None = None,
) -> list[ExtractResult]:
    """Extract one slide's 5x and 20x features with every target's backbone (each parent decoded once) and write
    each backbone's two files atomically (the stage's library call).

    The slide is opened with the mpp recorded in `patches_path` (resolved once, at patching, overrides
    included), and a patch file whose recorded level-0 size or slide id is not this slide's is refused.
    """
    if on_read_error not in ON_READ_ERROR:
        raise PipelineError(f"on_read_error must be one of {ON_READ_ERROR}, got {on_read_error!r}")
    slide_id = slide_id or Path(slide_path).stem
    grid = read_patches(patches_path)
    mpp = recorded_mpp(grid.attrs, slide_id, patches_path)
    with open_slide(slide_path, slide_id, mpp=mpp, reader=reader) as slide:  # fail early: unopenable, other slide
        check_patches_match(slide, grid.attrs, patches_path)
        mpp_source = str(grid.attrs.get("mpp_source") or slide.mpp_source)  # where patching got it from
        reader_used = slide.reader  # what `auto` chose
    dev = resolve_device(device)
    with deterministic(seed, dev):
        results = extract_features_many(
            [t.backbone for t in targets], slide_path, slide_id, grid, batch_size=batch_size,
            num_workers=num_workers, device=dev, on_read_error=on_read_error, reader=reader_used,
            progress=progress, cpus=cpus,
        )
    out = []
    for target, result in zip(targets, results):
        common: dict[str, Any] = {
            **target.backbone.attrs(),
            "slide_id": slide_id,
            "patches_file": str(patches_path),
            "patch_size": int(grid.attrs["patch_size"]),
            "level0_magnification": int(grid.attrs.get("level0_magnification", 0)),
            "mpp": float(mpp),
            "mpp_source": mpp_source,
            "reader": reader_used,
            "precision": result.precision,
            "on_read_error": on_read_error,
            "seed": seed,
        }
        write_features(target.out_5x, result.features_5x, grid.coords_5x, {
            **common, "magnification": "5x", "patch_size_level0": int(grid.attrs["patch_size_level0_5x"]),
            "n_blank_patches": result.blank_5x,
        })
        write_features(target.out_20x, result.features_20x, grid.coords_20x, {
            **common, "magnification": "20x", "patch_size_level0": int(grid.attrs["patch_size_level0_20x"]),
            "n_blank_patches": result.blank_20x,
        })
        out.append(ExtractResult(slide_id, target.out_5x, target.out_20x, len(grid.coords_5x),
                                 len(grid.coords_20x), result.blank_5x, result.blank_20x, result.seconds))
    return out


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone to build: its registered name, weights and tokenizer (as create_backbone takes them)."""

    name: str
    weights: str | None = None
    tokenizer: str | None = None


@dataclass(frozen=True)
class SlideJob:
    """One slide of a multi-slide extraction job: its files and, per backbone name, its two feature files."""

    slide_id: str
    slide_path: Path
    patches_path: Path
    outputs: dict[str, tuple[Path, Path]]


def extract_slides(
    jobs: Sequence[SlideJob],
    backbones: Sequence[BackboneSpec],
    *,
    device: str = "auto",
    seed: int = 0,
    **options: Any,
) -> list[list[ExtractResult] | SlideError]:
    """Several slides in one process, each with every backbone: the backbones are built (and torch and open_clip
    imported) once for all slides, and each slide's parents are decoded once for all backbones.

    A slide that fails yields its SlideError in its place and the others go on; each slide's files equal those of
    a single-slide run (the same seed; extraction has no randomness). `options`: see extract_slide_many.
    """
    with deterministic(seed, resolve_device(device)):
        models = {b.name: create_backbone(b.name, b.weights, tokenizer=b.tokenizer, seed=seed) for b in backbones}
    results: list[list[ExtractResult] | SlideError] = []
    for job in jobs:
        targets = [FeatureTarget(models[name], Path(f5), Path(f20)) for name, (f5, f20) in job.outputs.items()]
        try:
            results.append(extract_slide_many(job.slide_path, job.patches_path, targets, slide_id=job.slide_id,
                                              device=device, seed=seed, **options))
        except SlideError as err:
            log.error("%s", err)
            results.append(err)
    return results
