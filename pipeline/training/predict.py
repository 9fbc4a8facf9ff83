"""Predict new, unlabeled slides with trained checkpoints, and show what drove each prediction.

The checkpoints of one method's results folder (one per fold, same method, backbone and classes) form an ensemble
whose outputs are averaged. No backbone is built: checkpoints carry what their model needs (HiVE-MIL, HiLa: their
learned prompts' text features). Every method explains itself through `Method.explain` (pipeline.explain.scores),
so every method gets the same files, where `PredictOutputs` says (the workflow: predictions/{task}/{backbone}/{run}/
{method}/ of its layout):

- `predictions`: slide_id, predicted class, one probability column per class, number of models (survival: the
  slide's risk and survival function, each slide a bag of its own; per-patient risks of the cohort are the
  out-of-fold predictions in models/{task}/{backbone}/cv{k}/{method}/predictions.csv);
- `unscored`: slides that could not be scored, with the reason;
- per slide in the `explanations` folders: top patches, QuPath overlays and heatmaps (when the slide and patch files
  are given), and small copies of the first slides' heatmaps in the gallery (the Snakemake report's): see
  pipeline.explain.slide_outputs.
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
from pipeline.explain.scores import mean_scores
from pipeline.explain.slide_outputs import ExplanationFolders, HeatmapOptions, write_slide_explanations
from pipeline.formats import PathLike, write_text_atomic
from pipeline.training.checkpoints import load_checkpoint, method_of
from pipeline.training.data import FeatureStore, SlideFeatures

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideFiles:
    """A slide file and its patch file (the recorded mpp and patch sizes), for heatmaps."""

    slide: Path
    patches: Path


@dataclass(frozen=True)
class PredictOutputs:
    """Every file and folder prediction writes, as the caller names them."""

    predictions: Path
    unscored: Path
    explanations: ExplanationFolders

    @classmethod
    def in_folder(cls, out_dir: PathLike) -> "PredictOutputs":
        """predictions.csv, unscored.csv and the explanation folders in `out_dir` (library use)."""
        out = Path(out_dir)
        return cls(out / "predictions.csv", out / "unscored.csv", ExplanationFolders.in_folder(out))


def predict_slides(
    *,
    checkpoints: Sequence[PathLike],
    features: Mapping[str, SlideFeatures],
    backbone_name: str,
    outputs: PredictOutputs,
    slide_files: Mapping[str, SlideFiles] | None = None,
    top_n: int = 10,
    device: str = "auto",
    heatmap_px: int = 1500,
    heatmap_grid: bool = False,
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
    classes = list(first["classes"])
    heatmap_options = HeatmapOptions(long_side=heatmap_px, grid=heatmap_grid, top_n=top_n)
    dev = resolve_device(device)
    methods = [method_of(c) for c in ckpts]
    models = [m.restore(c, dev) for m, c in zip(methods, ckpts)]
    with torch.no_grad():
        caches = [m.eval_cache(model) for m, model in zip(methods, models)]  # once per model, not per slide
    store = FeatureStore(features, cache_bytes=0)
    outputs.explanations.make()  # the rule's folder outputs, even with no slide file
    rows, unscored = [], []
    in_gallery = 0
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
        target = classes.index(row["pred"]) if "pred" in row else None  # survival: a risk, no class
        with torch.no_grad():
            scores = mean_scores([m.explain(model, bag, dev, cache, target)
                                  for m, model, cache in zip(methods, models, caches)])
        files = (slide_files or {}).get(sid)
        drawn = write_slide_explanations(
            scores, slide_id=sid, coords_5x=bag.coords_5x, coords_20x=bag.coords_20x, mask=bag.mask.numpy(),
            folders=outputs.explanations, headline=headline(sid, first["method"], row),
            meta={"method": first["method"], "task": first["task"]}, slide_file=files.slide if files else None,
            patches_h5=files.patches if files else None, options=heatmap_options,
            gallery=in_gallery < heatmap_options.gallery_slides,
        )
        in_gallery += drawn
        log.info("%s: %s", sid, ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                                          if k != "slide_id"))
    frame = pd.DataFrame(rows, columns=None if rows else ["slide_id", "pred"])
    unscored_frame = pd.DataFrame(unscored, columns=["slide_id", "reason"])
    write_text_atomic(outputs.unscored, unscored_frame.to_csv(index=False))
    write_text_atomic(outputs.predictions, frame.to_csv(index=False, float_format="%.6g"))
    return frame


def headline(slide_id: str, method: str, row: Mapping[str, Any]) -> str:
    """A heatmap's title: the slide, the method and what it predicted."""
    if "pred" in row:
        return f"{slide_id} · {method} · predicted {row['pred']} (p = {row['prob_' + row['pred']]:.2f})"
    return f"{slide_id} · {method} · risk {row['risk']:.3f}"
