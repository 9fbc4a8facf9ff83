"""Train and evaluate one registered method on every fold of one task / backbone / shot count.

Per fold: the seed is reset, the method's model is built, trained by the shared loop with early stopping, the best
epoch restored and the test slides scored. Every output is an explicit path of a `TrainOutputs` (the workflow's
come from pipeline.wiring.layout, models/{task}/{backbone}/{run}/{method}/...):

- `checkpoints`: one per fold (pipeline.training.checkpoints);
- `summary`: one row per fold (task, backbone, shots, method, fold, the task's metrics, best epoch, sizes);
- `predictions`: per test slide and fold: label, prediction, class probabilities (survival: per test patient,
  event, time, bin, risk and the survival function);
- `attributes`: per test patient the top attributes per level with their weights (methods with attribute prompts:
  HiLa, prompt_risk; a header-only table for the others);
- `curves`: a folder of `fold{k}.csv` (trainable methods); `plots`: a folder of `curves_fold{k}.png` and the task
  type's plots (`roc_{method}.png` and `confusion_*`, or survival's `km_{method}.png`).

Every input is an explicit file: the split files, the feature files, the prompt file and the text embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.formats import PathLike, read_text_embeddings
from pipeline.splits import read_split_csv
from pipeline.training.checkpoints import save_checkpoint
from pipeline.training.config import TrainConfig
from pipeline.training.data import FeatureStore, SlideFeatures
from pipeline.training.loop import evaluate, fit, seed_everything
from pipeline.training.methods import get_method
from pipeline.training.methods.base import Method, Resources
from pipeline.training.reports import plot_curves, write_csv
from pipeline.training.tasks import TaskType

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutputs:
    """Where one method's training writes: every file and folder named by the caller."""

    summary: Path
    predictions: Path
    attributes: Path
    checkpoints: tuple[Path, ...]  # one per fold, in fold order
    curves: Path  # folder of fold{k}.csv
    plots: Path  # folder of PNGs

    @classmethod
    def in_folder(cls, out_dir: PathLike, folds: Sequence[int]) -> "TrainOutputs":
        """The workflow's names (pipeline.wiring.layout) inside one method's folder, for library use."""
        out = Path(out_dir)
        return cls(out / "summary.csv", out / "predictions.csv", out / "attributes.csv",
                   tuple(out / "checkpoints" / f"fold{k}.pt" for k in folds), out / "curves", out / "plots")


def fold_of(split_file: PathLike) -> int:
    """The fold number of `splits_{k}.csv` (HiVE-MIL's naming)."""
    stem = Path(split_file).stem
    prefix, _, number = stem.partition("_")
    if prefix != "splits" or not number.isdigit():
        raise PipelineError(f"split file {split_file}: expected a name splits_{{k}}.csv")
    return int(number)


def text_features_for(task: TaskType, path: PathLike) -> tuple[torch.Tensor, float]:
    """The task's prompt embeddings `[16C, D]` from a text-embeddings file, checked against the task's texts."""
    emb = read_text_embeddings(path)
    texts = [t for per_class in emb.texts for t in per_class]
    if list(emb.classes) != list(task.classes) or texts != list(task.texts):
        raise PipelineError(
            f"text embeddings {path} were made from other prompts (classes {emb.classes}) than task '{task.name}' "
            f"uses (classes {task.classes}); rerun the text_embeddings rule"
        )
    flat = torch.from_numpy(emb.embeddings.reshape(len(texts), -1).copy())
    return flat, float(emb.attrs["logit_scale"])


def make_resources(
    embed_dim: int, device: torch.device, task: TaskType, text_embeddings: PathLike | None, backbone: Any,
    backbone_name: str, weights: str | None, tokenizer: str | None, descriptions: Any = None,
) -> Resources:
    """What the methods may use; the backbone is built only if a method asks for its text tower."""
    from pipeline.model.prompt_learner import freeze

    def build_backbone() -> Any:
        found = backbone
        if found is None:
            from pipeline.features import create_backbone

            found = create_backbone(backbone_name, weights=weights, tokenizer=tokenizer)
        found = freeze(found).to(device)
        if int(found.embed_dim) != embed_dim:
            raise PipelineError(f"backbone '{backbone_name}' has embed_dim {found.embed_dim}, the features {embed_dim}")
        return found

    res = Resources(embed_dim=embed_dim, device=device, backbone_factory=build_backbone, descriptions=descriptions)
    if text_embeddings:
        res.text_features, res.logit_scale = text_features_for(task, text_embeddings)
        res.text_features = res.text_features.to(device)
    elif backbone is not None:  # library use without the file: encode the raw prompts with the given backbone
        bb = res.backbone("zeroshot")
        with torch.no_grad():
            res.text_features = bb.encode_text(bb.tokenize(list(task.texts)).to(device)).float()
    return res


def train_method(
    *,
    task: TaskType,
    method: str,
    split_files: Sequence[PathLike],
    features: Mapping[str, SlideFeatures],
    backbone_name: str,
    out_dir: PathLike | None = None,
    outputs: TrainOutputs | None = None,
    shots: int | None = None,
    text_embeddings: PathLike | None = None,
    backbone: Any = None,
    weights: str | None = None,
    tokenizer: str | None = None,
    config: TrainConfig | None = None,
    title: str = "",
    descriptions: Any = None,
    settings: Any = None,
) -> pd.DataFrame:
    """Train and evaluate `method` on every fold; write `outputs` (or, for library use, the workflow's names inside
    `out_dir`); return the per-fold summary.

    `backbone` may be passed in (tests, notebooks); otherwise it is built from the registry with `weights`, and only
    if the method reads the text tower. `descriptions` (pipeline.descriptions.table.FineGrainedLabels) are the
    question set and the slides' report descriptions, for methods that read them (FiVE). `settings` are the
    method's own (its Settings, or a mapping of some of its fields; the rest default).
    """
    cfg = config or TrainConfig()
    runner: Method = get_method(method)(cfg, task, settings)
    device = resolve_device(cfg.device)
    store = task.bags(FeatureStore(features, cfg.cache_gb * 1e9))  # slides, or a survival task's patients
    run = task.runs.run_name(shots, len(split_files))
    title = title or f"{task.name}/{backbone_name}/{run}/{method}"
    folds = sorted(((fold_of(f), Path(f)) for f in split_files), key=lambda item: item[0])
    if not folds:
        raise PipelineError(f"train {title}: no split files given")
    out = outputs or TrainOutputs.in_folder(_required(out_dir, "out_dir or outputs"), [k for k, _ in folds])
    if len(out.checkpoints) != len(folds):
        raise PipelineError(f"train {title}: {len(out.checkpoints)} checkpoint paths for {len(folds)} split files")
    checkpoint_of = {fold: path for (fold, _), path in zip(folds, out.checkpoints)}
    resources: Resources | None = None
    summary_rows: list[dict[str, Any]] = []
    frames: list[pd.DataFrame] = []
    attributes: list[dict[str, Any]] = []
    for fold, split_file in folds:
        split = read_split_csv(split_file)
        where = str(split_file)
        parts = {name: list(ids) for name, ids in split.partitions().items()}
        for name, ids in parts.items():
            missing = [s for s in ids if s not in task.targets or s not in store]
            if missing:
                raise PipelineError(
                    f"{split_file}: {name} {task.id_column.removesuffix('_id')}(s) {missing[:5]} have no label or no "
                    "feature files"
                )
        if not parts["train"]:
            raise PipelineError(f"{split_file}: no training {task.id_column.removesuffix('_id')}s")
        train = [(store.get(s), task.target(s, where)) for s in parts["train"]]
        val = [(store.get(s), task.target(s, where)) for s in parts["val"]]
        if resources is None:
            resources = make_resources(train[0][0].embed_dim, device, task, text_embeddings, backbone, backbone_name,
                                       weights, tokenizer, descriptions)
            if "text_tower" in runner.inputs:  # built before the seed reset, so model init draws the same numbers
                resources.backbone(method)
        seed_everything(cfg.seed)
        model = runner.build(resources)
        name = f"{method} fold {fold}"
        result = fit(runner, model, train, val, cfg, device, name)
        test_ids = parts["test"]
        test_targets = [task.target(s, where) for s in test_ids]
        ev = evaluate(runner, model, (store.get(s) for s in test_ids), test_targets, device)
        metrics = task.score(test_targets, ev.outputs)
        log.info("%s: test %s", name, {k: round(v, 4) for k, v in metrics.items()})
        summary_rows.append(
            {"task": task.name, "backbone": backbone_name, "shots": "cv" if task.runs.cross_validated else shots,
             "method": method, "fold": fold, **metrics,
             "best_epoch": result.best_epoch, "epochs_run": len(result.history), "n_train": len(train),
             "n_val": len(val), "n_test": len(test_ids)}
        )
        save_checkpoint(
            checkpoint_of[fold], runner, model, backbone_name, resources.embed_dim,
            resources.logit_scale, {"fold": fold, "shots": shots, "best_epoch": result.best_epoch, "metrics": metrics},
        )
        if result.history:
            write_csv(out.curves / f"fold{fold}.csv", pd.DataFrame(result.history))
            plot_curves(result.history, result.best_epoch, f"{title}: fold {fold}", out.plots / f"curves_fold{fold}.png")
        frame = task.prediction_frame(test_ids, test_targets, ev.outputs)
        frame.insert(0, "fold", fold)
        frame.insert(0, "method", method)
        frames.append(frame)
        with torch.no_grad():
            attributes += [{"method": method, "fold": fold, task.id_column: s, **row}
                           for s in test_ids for row in runner.top_attributes(model, store.get(s), device)]
    summary = pd.DataFrame(summary_rows)
    predictions = pd.concat(frames, ignore_index=True)
    write_csv(out.summary, summary)
    write_csv(out.predictions, predictions)
    columns = ["method", "fold", task.id_column, "level", "rank", "attribute", "weight"]
    write_csv(out.attributes, pd.DataFrame(attributes) if attributes else pd.DataFrame(columns=columns))
    for folder in (out.plots, out.curves):  # the rule's folders, even for a method without curves or plots
        folder.mkdir(parents=True, exist_ok=True)
    task.plots(predictions, title, out.plots, method)
    return summary


def _required(value: Any, what: str) -> Any:
    if value is None:
        raise PipelineError(f"train: give {what}")
    return value


def train_task(
    *, methods: Sequence[str], out_dir: PathLike, task: TaskType, backbone_name: str, shots: int | None = None,
    method_settings: Mapping[str, Any] | None = None, **kwargs: Any,
) -> pd.DataFrame:
    """Every method into `out_dir/{method}/`, then `results.csv` and `comparison.md` in `out_dir` (library use).

    `method_settings`: method name -> its settings (as config.yaml's `train.method_settings`)."""
    from pipeline.training.reports import summarize

    out = Path(out_dir)
    settings = method_settings or {}
    summaries = [
        train_method(task=task, method=m, out_dir=out / m, backbone_name=backbone_name, shots=shots,
                     settings=settings.get(m), **kwargs)
        for m in methods
    ]
    summarize([out / m / "summary.csv" for m in methods], task.metrics, out,
              f"{task.name}/{backbone_name}/{shots}shot")
    return pd.concat(summaries, ignore_index=True)
