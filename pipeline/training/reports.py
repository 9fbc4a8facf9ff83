"""Result tables and plots: per-fold summaries, mean ± std per method, and comparisons across runs.

`summary.csv` (one row per fold) is written by each method's training job; `write_summary` turns the summaries of
one task / backbone / shot count into the files of `SummaryOutputs` (results, comparison table, the joined
summaries); `compare` puts every method, backbone and
shot count of a task side by side (`models/{task}/comparison.md`). Metric columns are the task type's (its `metrics`, given by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.figures import pyplot, save_figure
from pipeline.formats import PathLike, write_text_atomic
from pipeline.tables import markdown, write_csv  # noqa: F401  (write_csv: re-exported for the training run)

#: the columns that name a run; every summary and result row carries them.
RUN_KEYS = ("task", "backbone", "shots", "method")


def plot_curves(history: list[dict[str, float]], best_epoch: int, title: str, path: Path) -> None:
    """Training loss, validation loss and validation error per epoch, best epoch marked."""
    plt = pyplot()
    frame = pd.DataFrame(history)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(frame["epoch"], frame["train_loss"], label="train loss")
    ax.plot(frame["epoch"], frame["val_loss"], label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(frame["epoch"], frame["val_error"], color="tab:red", linestyle="--", label="val error")
    ax2.set_ylabel("val error")
    ax2.set_ylim(-0.02, 1.02)
    ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def plot_roc(predictions: pd.DataFrame, classes: list[str], title: str, path: Path) -> None:
    """Binary: one ROC curve per fold. Multi-class: one-vs-rest per class, test slides of all folds pooled."""
    from pipeline.metrics import binary_auc, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    y = predictions["label_index"].to_numpy()
    if len(classes) == 2:
        for fold, part in predictions.groupby("fold"):
            pos = part["label_index"].to_numpy() == 1
            score = part[f"prob_{classes[1]}"].to_numpy()
            fpr, tpr = roc_curve(pos, score)
            ax.plot(fpr, tpr, label=f"fold {fold} (AUC {binary_auc(pos, score):.3f})")
    else:
        for c, name in enumerate(classes):
            score = predictions[f"prob_{name}"].to_numpy()
            fpr, tpr = roc_curve(y == c, score)
            ax.plot(fpr, tpr, label=f"{name} vs rest (AUC {binary_auc(y == c, score):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def plot_confusion(true: Sequence[str], pred: Sequence[str], classes: list[str], title: str, path: Path) -> None:
    """Confusion matrix of the pooled test slides: counts, rows true class, columns predicted, row-shaded."""
    from pipeline.metrics import confusion_matrix

    plt = pyplot()
    index = {c: i for i, c in enumerate(classes)}
    counts = confusion_matrix([index[t] for t in true], [index[p] for p in pred], len(classes))
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = 1.2 + 0.55 * len(classes)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def aggregate(summary: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and population std over folds per run (task, backbone, shots, method): results.csv's rows."""
    rows = []
    keys = [k for k in RUN_KEYS if k in summary.columns]
    for values, part in summary.groupby(keys, sort=False):
        run = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        rows.append({**run, "stat": "mean", "folds": len(part), **part[list(metrics)].mean().to_dict()})
        rows.append({**run, "stat": "std", "folds": len(part), **part[list(metrics)].std(ddof=0).to_dict()})
    return pd.DataFrame(rows)


def comparison_table(results: pd.DataFrame, metrics: Mapping[str, str]) -> pd.DataFrame:
    """One row per run with "mean ± std" cells, from results.csv rows."""
    keys = [k for k in RUN_KEYS if k in results.columns]
    mean = results[results["stat"] == "mean"].set_index(keys)
    std = results[results["stat"] == "std"].set_index(keys)
    table = mean[["folds"]].copy()
    for m, header in metrics.items():
        table[header] = [f"{a:.3f} ± {b:.3f}" for a, b in zip(mean[m], std.loc[mean.index, m])]
    return table.reset_index()


def _read_all(paths: Iterable[PathLike], what: str) -> pd.DataFrame:
    frames = []
    for path in paths:
        if not Path(path).exists():
            raise PipelineError(f"{what}: {path} not found")
        frames.append(pd.read_csv(path))
    if not frames:
        raise PipelineError(f"{what}: no input files")
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class SummaryOutputs:
    """The files of one run's summary, as the caller names them (the workflow: its layout's paths)."""

    results: Path  # mean and population std over folds per method
    comparison: Path  # the methods side by side, markdown
    comparison_csv: Path  # the same table as CSV
    summary: Path  # every method's per-fold rows in one table

    @classmethod
    def in_folder(cls, out_dir: PathLike) -> "SummaryOutputs":
        """results.csv, comparison.md, comparison.csv and summary.csv in `out_dir` (library use: train_task)."""
        out = Path(out_dir)
        return cls(out / "results.csv", out / "comparison.md", out / "comparison.csv", out / "summary.csv")


def write_summary(summary_files: Sequence[PathLike], metrics: Mapping[str, str], outputs: SummaryOutputs,
                  title: str) -> pd.DataFrame:
    """The files of `outputs` for one task / backbone / run from its methods' summaries; returns the results.
    `metrics`: the task type's metric columns and their headers (TaskType.metrics)."""
    summary = _read_all(summary_files, "summarize")
    results = aggregate(summary, list(metrics))
    table = comparison_table(results, metrics).drop(columns=["task", "backbone", "shots"], errors="ignore")
    write_csv(outputs.summary, summary)
    write_csv(outputs.results, results)
    write_csv(outputs.comparison_csv, table)
    write_text_atomic(outputs.comparison, markdown(table, title))
    return results


def summarize(summary_files: Sequence[PathLike], metrics: Mapping[str, str], out_dir: PathLike,
              title: str) -> pd.DataFrame:
    """`write_summary` into `out_dir` under the usual names (SummaryOutputs.in_folder): a library convenience."""
    return write_summary(summary_files, metrics, SummaryOutputs.in_folder(out_dir), title)


def compare(results_files: Sequence[PathLike], metrics: Mapping[str, str], out_csv: PathLike, out_md: PathLike,
            title: str) -> pd.DataFrame:
    """Every method x backbone x shot count of a task side by side (the paper's Table 1 layout), mean ± std;
    `metrics`: the task type's metric columns and their headers."""
    results = _read_all(results_files, "compare")
    table = comparison_table(results, metrics).sort_values(["shots", "backbone"], kind="stable")
    table = table[["method", "backbone", "shots", "folds", *metrics.values()]]
    write_csv(out_csv, table)
    write_text_atomic(out_md, markdown(table, title))
    return table
