"""Before / after HLSS pretraining on the labelled cohort: kNN accuracy of the frozen features, and zero-shot
accuracy of the VLM's class texts.

HLSS is judged (as HiDisc) by cross-validated kNN accuracy of frozen 20x patch features at patch, slide and
patient level (pipeline.pretrain.knn). HiVE-MIL also needs the image features to stay aligned with the text tower,
so the same slides are scored zero-shot with each backbone's own prompt embeddings, by the `zeroshot` method's
classifier (pipeline.model.baselines.ZeroShotClassifier on each slide's 5x + hierarchical 20x bag).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.formats import PathLike, atomic_path, read_features, read_text_embeddings
from pipeline.labels import LabelTree
from pipeline.pretrain.knn import (
    DEFAULT_FOLDS,
    DEFAULT_K,
    DEFAULT_PATCHES_PER_SLIDE,
    DEFAULT_TEMPERATURE,
    knn_accuracy,
    sample_patch_rows,
)

if TYPE_CHECKING:
    from pipeline.training.data import SlideFeatures
    from pipeline.training.methods.zeroshot import ZeroShotSettings
    from pipeline.training.tasks import TaskType

log = logging.getLogger(__name__)

KNN, ZEROSHOT = "knn_accuracy", "zeroshot_accuracy"


@dataclass(frozen=True)
class BackboneFiles:
    """One backbone's inputs, by slide id: 20x patch features, the 5x + hierarchical pair, and its text embeddings."""

    name: str
    features_20x: dict[str, Path]
    bags: "dict[str, SlideFeatures]"
    text_embeddings: Path


def by_stem(files: Iterable[PathLike]) -> dict[str, Path]:
    """slide_id -> file, by file stem (as the training stage pairs files); a slide given twice is an error."""
    out: dict[str, Path] = {}
    for p in map(Path, files):
        if p.stem in out:
            raise PipelineError(f"slide '{p.stem}' is given twice: {out[p.stem]} and {p}")
        out[p.stem] = p
    return out


def backbone_files(
    name: str, files_20x: Iterable[PathLike], files_5x: Iterable[PathLike], files_hierarchical: Iterable[PathLike],
    text_embeddings: PathLike,
) -> BackboneFiles:
    """Pair one backbone's files by slide; a slide lacking its 5x or hierarchical partner is left out (warned)."""
    from pipeline.training.data import pair_feature_files

    x5, hier = by_stem(files_5x), by_stem(files_hierarchical)
    unpaired = sorted(set(x5) ^ set(hier))
    if unpaired:
        log.warning("%s: slide(s) %s have a 5x or a hierarchical file but not both; left out", name, unpaired)
    paired = sorted(set(x5) & set(hier))
    bags = pair_feature_files([x5[s] for s in paired], [hier[s] for s in paired])
    return BackboneFiles(name, by_stem(files_20x), bags, Path(text_embeddings))


def load_eval_task(
    task_type: str, name: str, dataset_csv: PathLike, prompts_json: PathLike | None, tree: LabelTree | None,
    text_embeddings: PathLike,
) -> "TaskType":
    """The task as training loads it; without a prompt file, its classes and texts come from a text-embeddings
    file (written by `text-embed` from that prompt file), mapped onto dataset.csv labels as the task type does."""
    from pipeline.training.methods import get_method
    from pipeline.training.tasks import get_task_type, load_task

    supported = get_method("zeroshot").task_types
    if task_type not in supported:
        raise PipelineError(f"hlss-eval: task '{name}' is of type '{task_type}'; zero-shot supports {list(supported)}")
    if prompts_json:
        return load_task(task_type, name, dataset_csv, prompts_json, tree)
    from pipeline.dataset import read_dataset

    emb = read_text_embeddings(text_embeddings)
    cls = get_task_type(task_type)
    classes = list(emb.classes)
    dataset = read_dataset(dataset_csv)
    labels = dataset["label"].map(cls._class_of(tree))
    mine = dataset.assign(label=labels)[labels.isin(classes)]
    if mine.empty:
        raise PipelineError(f"task '{name}': no slide of {dataset_csv} has one of the classes {classes} of "
                            f"{text_embeddings}")
    targets = {row.slide_id: classes.index(row.label) for row in mine.itertuples()}
    task = cls(name, classes, targets, [t for per_class in emb.texts for t in per_class], tree)
    task.check()
    return task


def slide_cases(dataset_csv: PathLike) -> dict[str, str]:
    """slide_id -> case_id from dataset.csv."""
    from pipeline.dataset import read_dataset

    dataset = read_dataset(dataset_csv)
    return dict(zip(dataset["slide_id"], dataset["case_id"]))


def common_slides(task: "TaskType", before: BackboneFiles, after: BackboneFiles) -> list[str]:
    """The task's slides with every file on both sides; the others are named in a warning and left out."""
    wanted = sorted(task.targets)
    have = [set(side.features_20x) & set(side.bags) for side in (before, after)]
    kept = [s for s in wanted if s in have[0] and s in have[1]]
    for side, present in zip((before, after), have):
        missing = sorted(set(wanted) - present)
        if missing:
            log.warning("task '%s': %d slide(s) lack %s features (failed extraction?) and are left out: %s",
                        task.name, len(missing), side.name, missing)
    if not kept:
        raise PipelineError(f"task '{task.name}': no slide has features from both '{before.name}' and '{after.name}'")
    return kept


def paired_patches(
    slides: Sequence[str], before: BackboneFiles, after: BackboneFiles, patches_per_slide: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each slide's sampled 20x patch features on both sides: the same rows, after checking the files' coords agree.

    Only rows non-blank (non-zero) on both sides are eligible; the sample (`sample_patch_rows`) is drawn here, one
    slide at a time, so a cohort's full 20x features never sit in memory together.
    """
    out_b: dict[str, np.ndarray] = {}
    out_a: dict[str, np.ndarray] = {}
    for sid in slides:
        xb, cb, _ = read_features(before.features_20x[sid])
        xa, ca, _ = read_features(after.features_20x[sid])
        if cb.shape != ca.shape or not np.array_equal(cb, ca):
            raise PipelineError(
                f"slide '{sid}': the 20x coords of {before.features_20x[sid]} ({before.name}) and "
                f"{after.features_20x[sid]} ({after.name}) differ; both must come from the same patches.h5"
            )
        if xb.ndim != 2 or xa.ndim != 2:
            raise PipelineError(f"slide '{sid}': 20x features must be [N, D]; got {xb.shape} and {xa.shape}")
        eligible = np.flatnonzero(np.any(xb != 0, axis=1) & np.any(xa != 0, axis=1))
        rows = eligible[sample_patch_rows(sid, len(eligible), patches_per_slide, seed)]
        out_b[sid], out_a[sid] = xb[rows], xa[rows]
    return out_b, out_a


def zeroshot_probabilities(
    task: "TaskType", side: BackboneFiles, slides: Sequence[str], config: "ZeroShotSettings"
) -> np.ndarray:
    """Softmax of the `zeroshot` method's slide logits `[S, C]` with this backbone's text embeddings."""
    import torch

    from pipeline.model.baselines import ZeroShotClassifier
    from pipeline.model.hivemil import score_scale
    from pipeline.training.data import load_slide
    from pipeline.training.run import text_features_for

    texts, logit_scale = text_features_for(task, side.text_embeddings)
    model = ZeroShotClassifier(texts.float(), len(task.classes), score_scale(logit_scale, config.logit_scale),
                               config.top_k_5x, config.top_k_20x).eval()
    out = np.zeros((len(slides), len(task.classes)))
    with torch.no_grad():
        for i, sid in enumerate(slides):
            bag = load_slide(sid, side.bags[sid])
            if bag.embed_dim != texts.shape[1]:
                raise PipelineError(f"slide '{sid}': {side.name} features are {bag.embed_dim}-d, its text embeddings "
                                    f"{side.text_embeddings} {texts.shape[1]}-d")
            out[i] = model(bag.x5, bag.x20, bag.mask).logits.float().softmax(-1).numpy()
    return out


def zeroshot_accuracy(probs: np.ndarray, labels: np.ndarray, cases: Sequence[str]) -> dict[str, float]:
    """Slide accuracy (argmax of its probabilities) and patient accuracy (argmax of the mean of its slides'
    probabilities; a patient with slides of two labels counts once per label)."""
    keys: dict[tuple[str, int], int] = {}
    patient = np.array([keys.setdefault((c, int(y)), len(keys)) for c, y in zip(cases, labels)])
    sums = np.zeros((len(keys), probs.shape[1]))
    np.add.at(sums, patient, probs)
    truth = np.array([y for _, y in keys])
    return {
        "slide": float(np.mean(probs.argmax(1) == labels)),
        "patient": float(np.mean(sums.argmax(1) == truth)),
        "n_slide": float(len(labels)), "n_patient": float(len(keys)),
    }


def evaluate_pretraining(
    task: "TaskType",
    slide_case: Mapping[str, str],
    before: BackboneFiles,
    after: BackboneFiles,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    patches_per_slide: int = DEFAULT_PATCHES_PER_SLIDE,
    config: "ZeroShotSettings | None" = None,
) -> pd.DataFrame:
    """One task's before/after table: kNN accuracy (patch, slide, patient) and zero-shot accuracy (slide, patient).

    Labels are the task's targets (a hierarchical task's fine labels, as the `zeroshot` method predicts). Both
    backbones see the same slides (those with every file on both sides), the same sampled 20x patches and the same
    patient folds. Zero-shot uses `config`'s top-k and logit-scale settings (the zeroshot method's defaults if None); a
    patient's zero-shot prediction is the argmax of the mean of its slides' softmax probabilities. Columns: task,
    metric, level, n, `{before.name}`, `{after.name}`, change (after - before); the settings are in `df.attrs`.
    """
    from pipeline.training.methods.zeroshot import ZeroShotSettings

    if before.name == after.name:
        raise PipelineError(f"hlss-eval: the two backbones must differ, both are '{before.name}'")
    config = config or ZeroShotSettings()
    slides = common_slides(task, before, after)
    no_case = [s for s in slides if s not in slide_case]
    if no_case:
        raise PipelineError(f"task '{task.name}': slide(s) {no_case[:10]} have no case id in the dataset")
    labels = np.array([task.targets[s] for s in slides])
    cases = [slide_case[s] for s in slides]
    n_classes = len(task.classes)

    feats_b, feats_a = paired_patches(slides, before, after, patches_per_slide, seed)
    # sampled once, above, on the rows both sides can use: kNN takes every row it is given (patches_per_slide 0)
    knn_args = dict(folds=folds, seed=seed, k=k, temperature=temperature, patches_per_slide=0)
    targets = dict(zip(slides, labels.tolist()))
    knn = [knn_accuracy(f, slide_case, targets, n_classes, **knn_args) for f in (feats_b, feats_a)]
    zs = [zeroshot_accuracy(zeroshot_probabilities(task, side, slides, config), labels, cases)
          for side in (before, after)]

    rows = [(KNN, level, knn) for level in ("patch", "slide", "patient")]
    rows += [(ZEROSHOT, level, zs) for level in ("slide", "patient")]
    table = pd.DataFrame([
        {"task": task.name, "metric": metric, "level": level, "n": int(res[0][f"n_{level}"]),
         before.name: res[0][level], after.name: res[1][level], "change": res[1][level] - res[0][level]}
        for metric, level, res in rows
    ])
    table.attrs.update(k=k, temperature=temperature, folds=int(knn[0]["folds"]), patches_per_slide=patches_per_slide,
                       seed=seed, before=before.name, after=after.name, top_k_5x=config.top_k_5x,
                       top_k_20x=config.top_k_20x)
    return table


def protocol_paragraph(settings: Mapping[str, object]) -> str:
    """What the table measured, for the markdown header."""
    s = dict(settings)
    return (
        f"Frozen features of `{s.get('before', 'before')}` (before HLSS pretraining) and `{s.get('after', 'after')}` "
        f"(after) on the labelled cohort. kNN accuracy: weighted kNN (cosine similarity, k = {s.get('k')}, "
        f"weights exp(sim / {s.get('temperature')})) on up to {s.get('patches_per_slide')} sampled 20x patches per "
        f"slide (the same patches for both backbones, seed {s.get('seed')}), {s.get('folds')}-fold cross-validation "
        "with patients grouped (no patient in both bank and queries); slide and patient predictions are the argmax of "
        "their patches' mean kNN scores. Zero-shot accuracy: the `zeroshot` method's top-k patch-text scores "
        f"(top-k {s.get('top_k_5x')} at 5x, {s.get('top_k_20x')} at 20x) with each backbone's own prompt "
        "embeddings; a patient's prediction is the argmax of its slides' mean class probabilities. change = after "
        "- before."
    )


def write_evaluation(
    df: pd.DataFrame, csv_path: PathLike, md_path: PathLike, title: str, settings: Mapping[str, object] | None = None
) -> None:
    """The table as csv (full precision) and markdown (3 decimals, headed by the protocol), written atomically.

    `settings` (k, folds, ...) default to `df.attrs`, as `evaluate_pretraining` leaves them."""
    from pipeline.tables import markdown

    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False)
    shown = df.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].map(lambda v: f"{v:.3f}")
    head, _, table = markdown(shown, title).partition("\n\n")
    paragraph = protocol_paragraph(df.attrs if settings is None else settings)
    with atomic_path(md_path) as tmp:
        tmp.write_text(f"{head}\n\n{paragraph}\n\n{table}")
