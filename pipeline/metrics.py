"""Slide-level classification metrics (accuracy, macro-F1, AUC, ROC curves, label-tree levels) in numpy.

Definitions follow HIVEMIL.md: binary AUC from the positive-class probability; multi-class AUC is the unweighted
mean of the one-vs-rest AUCs; macro-F1 averages the per-class F1 over the classes present in the labels or the
predictions (scikit-learn's convention), with 0 for a class that is never predicted.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(y_true):
        return float("nan")
    scores = []
    for c in np.union1d(y_true, y_pred):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic (ties count one half); NaN with one class only."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=float)
    sorted_scores = score[order]
    # average ranks over ties
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """AUC for `probs` [N, C]: positive-class column when C == 2, else the mean one-vs-rest AUC."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=float)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"probs must be [N, C] with N = {len(y_true)}, got {probs.shape}")
    if probs.shape[1] == 2:
        return binary_auc(y_true == 1, probs[:, 1])
    aucs = [binary_auc(y_true == c, probs[:, c]) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def roc_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="mergesort")
    pos_sorted = positive[order]
    distinct = np.r_[np.nonzero(np.diff(score[order]))[0], len(score) - 1]
    tps = np.cumsum(pos_sorted)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = max(int(positive.sum()), 1), max(int((~positive).sum()), 1)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """ACC, AUC and macro-F1 of class probabilities `[N, C]` against integer labels."""
    probs = np.asarray(probs, dtype=float)
    y_pred = probs.argmax(axis=1)
    return {"acc": accuracy(y_true, y_pred), "auc": roc_auc(y_true, probs), "f1": macro_f1(y_true, y_pred)}


def hierarchical_metrics(
    fine_true: np.ndarray, fine_probs: np.ndarray, coarse_probs: np.ndarray, coarse_pred: np.ndarray,
    parent: np.ndarray,
) -> dict[str, float]:
    """ACC / AUC / macro-F1 at the fine and the coarse level, and hierarchical consistency.

    `parent[j]` is the coarse class of fine class j; coarse truth is the parent of the fine truth. The coarse AUC
    ranks `coarse_probs`, the coarse ACC and F1 use `coarse_pred` (a flat method's is the parent of its fine
    prediction). Consistency is the share of slides whose fine prediction lies under their coarse prediction.
    """
    fine_true = np.asarray(fine_true)
    parent = np.asarray(parent)
    fine = classification_metrics(fine_true, fine_probs)
    coarse_true = parent[fine_true]
    coarse_pred = np.asarray(coarse_pred)
    fine_pred = np.asarray(fine_probs).argmax(axis=1)
    return {
        "acc_coarse": accuracy(coarse_true, coarse_pred),
        "auc_coarse": roc_auc(coarse_true, np.asarray(coarse_probs, dtype=float)),
        "f1_coarse": macro_f1(coarse_true, coarse_pred),
        **fine,
        "consistency": float(np.mean(parent[fine_pred] == coarse_pred)),
    }


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts `[C, C]`: rows are true classes, columns predicted ones."""
    out = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(out, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return out
