"""kNN accuracy of frozen patch features at patch, slide and patient level (HiDisc's / HLSS's protocol).

The weighted kNN classifier is InstDisc's: on L2-normalised features, each of a query's k most cosine-similar
bank patches votes exp(similarity / temperature) for its own label. Slides and patients are scored by averaging
their patches' vote distributions. Folds are grouped by patient, so a query never finds a patch of its own patient
(or slide) in the bank: the number measures what the features know about the class, not the patient.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.seeding import slide_rng

log = logging.getLogger(__name__)

#: similarity entries computed at once (queries x bank); ~128 MB of float64 per chunk
_CHUNK_ENTRIES = 1 << 24
LEVELS = ("patch", "slide", "patient")

#: the protocol's defaults (HLSS: k 200, temperature 0.07), their one home: `evaluate_pretraining` and the
#: `hlss-eval` flags read them, and a test checks the config schema's pretrain.knn_* defaults against them.
DEFAULT_K = 200
DEFAULT_TEMPERATURE = 0.07
DEFAULT_FOLDS = 5
DEFAULT_PATCHES_PER_SLIDE = 200


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row (a blank patch) stays zero, so it is similar to nothing."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def knn_scores(
    bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, n_classes: int, k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
) -> np.ndarray:
    """Weighted-kNN class scores `[Q, C]` (rows sum to 1) of `queries` `[Q, D]` against `bank` `[B, D]`.

    k is clipped to the bank size. Weights are computed relative to each row's best similarity (exp((s - s_max) / T)),
    which the L1 normalisation cancels, so a small temperature cannot overflow.
    """
    bank_labels = np.asarray(bank_labels, dtype=np.int64).reshape(-1)
    if len(bank) == 0:
        raise PipelineError("kNN: the bank is empty")
    if len(bank_labels) != len(bank):
        raise PipelineError(f"kNN: {len(bank)} bank rows but {len(bank_labels)} labels")
    if bank_labels.min() < 0 or bank_labels.max() >= n_classes:
        raise PipelineError(f"kNN: bank labels must lie in [0, {n_classes}), got {sorted(set(bank_labels.tolist()))}")
    if temperature <= 0 or k < 1:
        raise PipelineError(f"kNN: need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    bank_n, query_n = _unit_rows(bank), _unit_rows(queries)
    k = min(int(k), len(bank_n))
    out = np.zeros((len(query_n), n_classes), dtype=np.float64)
    step = max(1, _CHUNK_ENTRIES // len(bank_n))
    for start in range(0, len(query_n), step):
        out[start:start + step] = _chunk_scores(bank_n, bank_labels, query_n[start:start + step], n_classes, k,
                                                temperature)
    return out


def _chunk_scores(
    bank: np.ndarray, labels: np.ndarray, queries: np.ndarray, n_classes: int, k: int, temperature: float
) -> np.ndarray:
    sim = (queries @ bank.T).astype(np.float64)  # [q, B]
    if k < sim.shape[1]:
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(sim.shape[1]), sim.shape)
    top_sim = np.take_along_axis(sim, top, axis=1)
    weights = np.exp((top_sim - top_sim.max(axis=1, keepdims=True)) / temperature)
    rows = np.repeat(np.arange(len(queries)), k)
    flat = rows * n_classes + labels[top].reshape(-1)
    scores = np.bincount(flat, weights=weights.reshape(-1), minlength=len(queries) * n_classes)
    scores = scores.reshape(len(queries), n_classes)
    return scores / scores.sum(axis=1, keepdims=True)


def patient_folds(case_ids: Sequence[str], labels: Sequence[int], n_folds: int, seed: int) -> np.ndarray:
    """Fold index per item (slide or patch), patient-grouped and class-stratified (StratifiedGroupKFold).

    Fewer folds are used (at least 2, with a warning) when the smallest class has fewer patients than `n_folds`,
    since each fold must hold out a patient of every class; under 2 patients in some class nothing can be split.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    case_ids = np.asarray(case_ids, dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    if len(case_ids) != len(labels) or not len(labels):
        raise PipelineError(f"kNN folds: {len(case_ids)} case ids for {len(labels)} labels")
    patients = {c: len(set(case_ids[labels == c])) for c in sorted(set(labels.tolist()))}
    fewest = min(patients.values())
    if len(patients) < 2 or fewest < 2:
        raise PipelineError(
            f"kNN folds: need at least 2 classes with at least 2 patients each to hold patients out; patients per "
            f"class {patients}"
        )
    folds = n_folds
    if fewest < n_folds:
        folds = max(2, fewest)
        log.warning("kNN folds: the smallest class has %d patients (per class %s): using %d folds instead of %d",
                    fewest, patients, folds, n_folds)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = np.full(len(labels), -1, dtype=np.int64)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups=case_ids)):
        out[held_out] = fold
    return out


def sample_patch_rows(slide_id: str, n_rows: int, patches_per_slide: int, seed: int) -> np.ndarray:
    """Sorted row indices of the patches a slide contributes: all if it has few enough (or `patches_per_slide` <= 0),
    else a sample drawn by `slide_rng(seed, slide_id)`, so two backbones' files with the same rows give the same
    patches."""
    if patches_per_slide <= 0 or n_rows <= patches_per_slide:
        return np.arange(n_rows)
    rng = slide_rng(seed, slide_id)
    return np.sort(rng.choice(n_rows, size=patches_per_slide, replace=False))


def knn_accuracy(
    patch_features: Mapping[str, np.ndarray],
    slide_case: Mapping[str, str],
    slide_label: Mapping[str, int],
    n_classes: int,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    patches_per_slide: int = DEFAULT_PATCHES_PER_SLIDE,
) -> dict[str, float]:
    """Cross-validated weighted-kNN accuracy at patch, slide and patient level.

    Protocol: each slide contributes `sample_patch_rows(slide_id, n, patches_per_slide, seed)` of its patches
    (`patch_features[slide]` `[n, D]`). Slides are assigned to `patient_folds` (grouped by `slide_case`, stratified
    by `slide_label`). For each fold the bank is every other fold's patches, labelled with their slide's label,
    and the fold's patches are the queries (`knn_scores` with `k`, `temperature`). Patch prediction: the argmax
    of its scores; slide prediction: the argmax of the mean of its patches' scores; patient prediction: the argmax
    of the mean over all its patches on all its slides (a patient whose slides carry different labels counts once
    per label, over that label's slides). Accuracy is the fraction correct over all items, each held out once.

    Returns `patch`, `slide`, `patient` (accuracies), `n_patch`, `n_slide`, `n_patient` and `folds` (used).
    """
    slides = sorted(s for s in patch_features if len(patch_features[s]))
    empty = sorted(set(patch_features) - set(slides))
    if empty:
        log.warning("kNN: slide(s) %s have no patches and are left out", empty)
    unknown = [s for s in slides if s not in slide_case or s not in slide_label]
    if unknown:
        raise PipelineError(f"kNN: slide(s) {unknown[:10]} have features but no case id or label")
    feats, slide_of = [], []
    for i, sid in enumerate(slides):
        rows = sample_patch_rows(sid, len(patch_features[sid]), patches_per_slide, seed)
        feats.append(np.asarray(patch_features[sid], dtype=np.float32)[rows])
        slide_of.append(np.full(len(rows), i))
    x, slide_of = np.concatenate(feats), np.concatenate(slide_of)
    slide_y = np.array([int(slide_label[s]) for s in slides])
    cases = [slide_case[s] for s in slides]
    slide_fold = patient_folds(cases, slide_y, folds, seed)
    patch_y, patch_fold = slide_y[slide_of], slide_fold[slide_of]

    scores = np.zeros((len(x), n_classes))
    for fold in range(int(slide_fold.max()) + 1):
        held = patch_fold == fold
        scores[held] = knn_scores(x[~held], patch_y[~held], x[held], n_classes, k, temperature)

    patient_of = _patient_index(cases, slide_y)[slide_of]
    result = {
        "patch": float(np.mean(scores.argmax(1) == patch_y)),
        "slide": _pooled_accuracy(scores, slide_of, patch_y),
        "patient": _pooled_accuracy(scores, patient_of, patch_y),
        "n_patch": float(len(x)), "n_slide": float(len(slides)), "n_patient": float(patient_of.max() + 1),
        "folds": float(slide_fold.max() + 1),
    }
    return result


def _patient_index(cases: Sequence[str], labels: np.ndarray) -> np.ndarray:
    """Per slide, the index of its (patient, label) item."""
    keys: dict[tuple[str, int], int] = {}
    return np.array([keys.setdefault((c, int(y)), len(keys)) for c, y in zip(cases, labels)])


def _pooled_accuracy(scores: np.ndarray, group: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the argmax of each group's mean score row, against the group's (single) label."""
    n = int(group.max()) + 1
    sums = np.zeros((n, scores.shape[1]))
    np.add.at(sums, group, scores)
    counts = np.bincount(group, minlength=n)[:, None]
    truth = np.zeros(n, dtype=np.int64)
    truth[group] = labels
    return float(np.mean((sums / counts).argmax(1) == truth))
