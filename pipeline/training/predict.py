"""Predict new, unlabeled slides with trained checkpoints, and show what drove each prediction.

The checkpoints of one method's results folder (one per fold, same method, backbone and classes) form an ensemble
whose class probabilities are averaged. No backbone is built: checkpoints carry what their model needs (HiVE-MIL:
its learned prompts' text features). Outputs in `out_dir` (predictions/{task}/{backbone}/{run}/{method}/):

- `predictions.csv`: slide_id, predicted class, one probability column per class, number of models (survival: the
  slide's risk and survival function, each slide a bag of its own; per-patient risks of the cohort are the
  out-of-fold predictions in models/{task}/{backbone}/cv{k}/{method}/predictions.csv);
- `top_pairs/{slide}.csv` (HiVE-MIL): the patch-text pairs with the highest similarity after the graph, at 5x
  (coarse texts) and 20x (fine texts) for the predicted class, with level-0 coordinates and the text;
- `heatmaps/{slide}_{5x,20x}.png` (HiVE-MIL) when the slide and patch files are given: each patch's best similarity
  to the predicted class's texts, over the slide's overview, opened with the mpp recorded at patching.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from pipeline.device import resolve_device
from pipeline.errors import PipelineError, SlideError
from pipeline.formats import PathLike, read_patches, write_text_atomic
from pipeline.model.hivemil import HiveMIL
from pipeline.prompt_files import COARSE_PER_CLASS, FINE_PER_CLASS, TEXTS_PER_CLASS
from pipeline.training.checkpoints import load_checkpoint, method_of
from pipeline.training.data import FeatureStore, SlideBag, SlideFeatures

log = logging.getLogger(__name__)


@dataclass
class PatchTextScores:
    """Ensemble-mean similarity after the graph: 5x `[N, 4C]` and 20x `[N, 16, 12C]` (NaN: child not in graph)."""

    sim_5x: np.ndarray
    sim_20x: np.ndarray


def patch_text_scores(
    models: Sequence[HiveMIL], texts: Sequence[torch.Tensor], bag: SlideBag, device: torch.device
) -> PatchTextScores:
    """Image-text cosine similarities of the graph's output nodes, averaged over the models (folds)."""
    n5 = bag.x5.shape[0]
    acc5, acc20, count20 = None, None, None
    with torch.no_grad():
        for model, model_texts in zip(models, texts):
            out = model(*bag.on(device), model_texts)
            s5 = (out.nodes["img5"] @ out.nodes["txt5"].T).cpu().numpy()
            s20_nodes = (out.nodes["img20"] @ out.nodes["txt20"].T).cpu().numpy()
            s20 = np.zeros((n5, 16, s20_nodes.shape[1]))
            seen = np.zeros((n5, 16))
            parent, slot = out.graph.child_parent.cpu().numpy(), out.graph.child_slot.cpu().numpy()
            s20[parent, slot] = s20_nodes
            seen[parent, slot] = 1
            acc5 = s5 if acc5 is None else acc5 + s5
            acc20 = s20 if acc20 is None else acc20 + s20
            count20 = seen if count20 is None else count20 + seen
    with np.errstate(invalid="ignore", divide="ignore"):
        mean20 = acc20 / count20[..., None]
    mean20[count20 == 0] = np.nan
    return PatchTextScores(acc5 / len(models), mean20)


def top_pairs(
    scores: PatchTextScores, bag: SlideBag, texts: Sequence[str], classes: Sequence[str], cls: int, top_n: int
) -> pd.DataFrame:
    """The `top_n` most similar (patch, text) pairs of class `cls` at each scale, with coordinates and texts."""
    rows: list[dict[str, Any]] = []
    coarse = [texts[c * TEXTS_PER_CLASS + i] for c in range(len(classes)) for i in range(COARSE_PER_CLASS)]
    fine = [texts[c * TEXTS_PER_CLASS + COARSE_PER_CLASS + j] for c in range(len(classes)) for j in range(FINE_PER_CLASS)]
    cols5 = np.arange(cls * COARSE_PER_CLASS, (cls + 1) * COARSE_PER_CLASS)
    sub5 = scores.sim_5x[:, cols5]
    for rank, flat in enumerate(np.argsort(-sub5, axis=None, kind="stable")[:top_n]):
        row, j = np.unravel_index(flat, sub5.shape)
        x, y = bag.coords_5x[row]
        rows.append({"scale": "5x", "rank": rank + 1, "class": classes[cls], "patch_row": int(row), "child_slot": -1,
                     "x": int(x), "y": int(y), "text_index": int(cols5[j]), "text": coarse[cols5[j]],
                     "similarity": float(sub5[row, j])})
    cols20 = np.arange(cls * FINE_PER_CLASS, (cls + 1) * FINE_PER_CLASS)
    sub20 = np.nan_to_num(scores.sim_20x[:, :, cols20], nan=-np.inf)
    for rank, flat in enumerate(np.argsort(-sub20, axis=None, kind="stable")[:top_n]):
        row, slot, j = np.unravel_index(flat, sub20.shape)
        if not np.isfinite(sub20[row, slot, j]):
            break
        x, y = bag.coords_20x[row, slot]
        rows.append({"scale": "20x", "rank": rank + 1, "class": classes[cls], "patch_row": int(row),
                     "child_slot": int(slot), "x": int(x), "y": int(y), "text_index": int(cols20[j]),
                     "text": fine[cols20[j]], "similarity": float(sub20[row, slot, j])})
    return pd.DataFrame(rows)


def heatmap_overlay(
    thumbnail: np.ndarray,
    coords: np.ndarray,
    scores: np.ndarray,
    patch_size_level0: float,
    downsample: float,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend per-patch scores (min-max scaled, jet colours) onto an RGB thumbnail; patches without a score stay clear.

    `coords` are level-0 top-left corners, `downsample` is level-0 pixels per thumbnail pixel.
    """
    import matplotlib

    thumb = np.asarray(thumbnail, dtype=np.float32)
    if thumb.ndim != 3 or thumb.shape[2] != 3:
        raise ValueError(f"thumbnail must be HxWx3, got {thumb.shape}")
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    scores = np.asarray(scores, dtype=float).reshape(-1)
    if len(coords) != len(scores):
        raise ValueError(f"{len(coords)} coordinates but {len(scores)} scores")
    valid = np.isfinite(scores)
    heat = np.full(thumb.shape[:2], np.nan, dtype=np.float32)
    if valid.any():
        lo, hi = scores[valid].min(), scores[valid].max()
        norm = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
        side = max(1, int(round(patch_size_level0 / downsample)))
        h, w = heat.shape
        for (x, y), value, ok in zip(coords, norm, valid):
            if not ok:
                continue
            c0, r0 = int(x / downsample), int(y / downsample)
            c1, r1 = min(w, c0 + side), min(h, r0 + side)
            if c0 < w and r0 < h and c1 > 0 and r1 > 0:
                heat[max(r0, 0):r1, max(c0, 0):c1] = value
    colours = matplotlib.colormaps["jet"](np.nan_to_num(heat))[..., :3] * 255.0
    covered = np.isfinite(heat)[..., None]
    out = np.where(covered, (1 - alpha) * thumb + alpha * colours, thumb)
    return np.clip(out, 0, 255).astype(np.uint8)


def write_heatmaps(
    slide_path: PathLike, patches_h5: PathLike, slide_id: str, bag: SlideBag, scores: PatchTextScores, cls: int,
    out_dir: Path, overview_mpp: float = 8.0,
) -> None:
    """5x and 20x heatmaps of the predicted class's best text similarity over the slide's overview."""
    from pipeline.qc import write_png
    from pipeline.slide import open_slide, recorded_mpp

    grid = read_patches(patches_h5)
    with open_slide(slide_path, slide_id, mpp=recorded_mpp(grid.attrs, slide_id, patches_h5)) as slide:
        overview, downsample = slide.read_overview(overview_mpp, max_side=4096)
    s20 = float(grid.attrs["patch_size_level0_20x"])
    best5 = scores.sim_5x[:, cls * COARSE_PER_CLASS:(cls + 1) * COARSE_PER_CLASS].max(1)
    fine = scores.sim_20x[:, :, cls * FINE_PER_CLASS:(cls + 1) * FINE_PER_CLASS]
    with np.errstate(invalid="ignore"):
        best20 = np.where(np.isnan(fine).all(-1), np.nan, np.nanmax(np.nan_to_num(fine, nan=-np.inf), -1))
    write_png(out_dir / "heatmaps" / f"{slide_id}_5x.png", heatmap_overlay(overview, bag.coords_5x, best5, 4 * s20, downsample))
    write_png(out_dir / "heatmaps" / f"{slide_id}_20x.png",
              heatmap_overlay(overview, bag.coords_20x.reshape(-1, 2), best20.reshape(-1), s20, downsample))


@dataclass(frozen=True)
class SlideFiles:
    """A slide file and its patch file (the recorded mpp and patch sizes), for heatmaps."""

    slide: Path
    patches: Path


def predict_slides(
    *,
    checkpoints: Sequence[PathLike],
    features: Mapping[str, SlideFeatures],
    backbone_name: str,
    out_dir: PathLike,
    slide_files: Mapping[str, SlideFiles] | None = None,
    top_n: int = 10,
    device: str = "auto",
) -> pd.DataFrame:
    """Ensemble predictions for every slide in `features`; tables and (with `slide_files`) heatmaps."""
    if not checkpoints:
        raise PipelineError("predict: no checkpoints given")
    ckpts = [load_checkpoint(p, backbone=backbone_name) for p in checkpoints]
    first = ckpts[0]
    for path, ckpt in zip(checkpoints, ckpts):
        if ckpt["classes"] != first["classes"] or ckpt["method"] != first["method"]:
            raise PipelineError(
                f"predict: checkpoint {path} ({ckpt['method']}, classes {ckpt['classes']}) does not match "
                f"{checkpoints[0]} ({first['method']}, classes {first['classes']})"
            )
    if not features:
        raise PipelineError("predict: no slides with features given")
    classes, texts = list(first["classes"]), list(first["texts"])
    dev = resolve_device(device)
    methods = [method_of(c) for c in ckpts]
    models = [m.restore(c, dev) for m, c in zip(methods, ckpts)]
    with torch.no_grad():
        caches = [m.eval_cache(model) for m, model in zip(methods, models)]  # once per model, not per slide
    store = FeatureStore(features, cache_bytes=0)
    out = Path(out_dir)
    rows, unscored = [], []
    for sid in features:
        try:
            bag = store.get(sid)
        except SlideError as err:  # e.g. a slide without tissue: listed with its reason, the others still scored
            log.warning("%s", err)
            unscored.append({"slide_id": sid, "reason": err.reason})
            continue
        with torch.no_grad():
            probs = np.mean(
                [m.task.outputs(m.logits(model, bag, dev, cache)[0]) for m, model, cache in zip(methods, models, caches)],
                axis=0,
            )
        task = methods[0].task
        row = task.prediction_frame([sid], None, probs[None]).iloc[0].to_dict()
        row = {"slide_id": sid, **{k: v for k, v in row.items() if k != task.id_column}}  # survival: a slide's risk
        rows.append({**row, "n_models": len(models), "method": first["method"]})
        if all(isinstance(m, HiveMIL) for m in models):
            cls = classes.index(row["pred"])
            scores = patch_text_scores(models, caches, bag, dev)
            table = top_pairs(scores, bag, texts, classes, cls, top_n)
            write_text_atomic(out / "top_pairs" / f"{sid}.csv", table.to_csv(index=False, float_format="%.6g"))
            if slide_files and sid in slide_files:
                files = slide_files[sid]
                write_heatmaps(files.slide, files.patches, sid, bag, scores, cls, out)
        log.info("%s: %s", sid, ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                                          if k != "slide_id"))
    frame = pd.DataFrame(rows, columns=None if rows else ["slide_id", "pred"])
    write_text_atomic(out / "unscored.csv", pd.DataFrame(unscored, columns=["slide_id", "reason"]).to_csv(index=False))
    write_text_atomic(out / "predictions.csv", frame.to_csv(index=False, float_format="%.6g"))
    return frame
