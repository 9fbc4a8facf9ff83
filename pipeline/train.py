"""Training and evaluation per fold: HiVE-MIL and its baselines in one loop, one results folder per shot count.

For every fold `splits_{k}.csv` and every method (HiVE-MIL, ABMIL on 5x, ABMIL on 20x, zero-shot), the seed is
reset, the model is trained one slide per step with Adam, early stopping watches the validation error (ties
broken by validation loss) with a patience, the best epoch's weights are restored, and the test slides are scored.
Outputs in `out_dir` (results/{task}/{backbone}/{shots}shot/):

- `checkpoints/{method}_fold{k}.pt`: state dict + metadata (backbone, classes, texts, config); load with
  `load_checkpoint`, which refuses another backbone or class set;
- `summary.csv`: one row per method and fold (ACC, AUC, macro-F1, best epoch);
- `results.csv`: mean and std (population, over folds) of ACC, AUC, macro-F1 per method;
- `comparison.csv` / `comparison.md`: one row per method, "mean ± std" cells, the table across methods;
- `predictions.csv`: per test slide, method and fold: label, prediction, class probabilities;
- `curves/{method}_fold{k}.csv` and `plots/curves_{method}_fold{k}.png`, `plots/roc_{method}.png`.

Features come from `features_dir` laid out as ours and HiVE-MIL's downloads are:
`{backbone}_5x/{slide}.h5` and `hierarchical_{backbone}_5x_20x/{slide}.h5` (mask optional).
"""

from __future__ import annotations

import copy
import io
import logging
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline import __version__
from pipeline.dataset import read_dataset
from pipeline.device import resolve_device
from pipeline.errors import PipelineError, SlideError
from pipeline.formats import PathLike, atomic_path, read_features, read_hierarchical, write_text_atomic
from pipeline.metrics import classification_metrics, roc_curve
from pipeline.model.baselines import ABMIL, ZeroShotClassifier
from pipeline.model.hivemil import HiveMIL, HiveMILConfig, score_scale
from pipeline.model.prompt_learner import PromptLearner, freeze
from pipeline.prompt_files import load_prompts
from pipeline.splits import read_split_csv

log = logging.getLogger(__name__)

METHODS = ("hivemil", "abmil_5x", "abmil_20x", "zeroshot")
CHECKPOINT_FORMAT = "hive-wsi-checkpoint/1"
METRICS = ("acc", "auc", "f1")


class CheckpointError(PipelineError):
    """A checkpoint cannot be used here (another backbone, class set, method or format)."""


@dataclass
class TrainConfig:
    """Everything that decides a run; stored in every checkpoint. Defaults are the paper's (HIVEMIL.md)."""

    methods: tuple[str, ...] = METHODS
    epochs: int = 50
    patience: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-5
    seed: int = 1
    hier_attention: str = "edges"
    htcl_negatives: bool = True
    logit_scale: str = "exp"
    filter_at_eval: bool = False
    top_k_5x: int = 2
    top_k_20x: int = 100
    n_ctx: int = 16
    num_layers: int = 2
    heads: int = 2
    abmil_hidden: int = 256
    abmil_dropout: float = 0.25
    device: str = "auto"
    cache_gb: float = 4.0

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise PipelineError(f"train: unknown method(s) {unknown or '(none given)'}; choose from {list(METHODS)}")
        if self.epochs < 1 or self.patience < 1:
            raise PipelineError(f"train: epochs and patience must be >= 1 (got {self.epochs}, {self.patience})")
        self.hivemil_config()  # validates the switches

    def hivemil_config(self) -> HiveMILConfig:
        try:
            return HiveMILConfig(
                num_layers=self.num_layers,
                heads=self.heads,
                top_k_5x=self.top_k_5x,
                top_k_20x=self.top_k_20x,
                hier_attention=self.hier_attention,
                htcl_negatives=self.htcl_negatives,
                logit_scale=self.logit_scale,
                filter_at_eval=self.filter_at_eval,
            )
        except ValueError as err:
            raise PipelineError(f"train config: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["methods"] = list(self.methods)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PipelineError(f"train config: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def seed_everything(seed: int) -> None:
    """Same seed, same run: Python, numpy and torch generators (CPU runs are then bit-identical)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --- data ----------------------------------------------------------------------------------------------------


@dataclass
class SlideBag:
    """One slide's features: 5x `[N, D]`, children `[N, 16, D]`, mask `[N, 16]`, and their level-0 coords."""

    slide_id: str
    x5: Tensor
    x20: Tensor
    mask: Tensor
    coords_5x: np.ndarray
    coords_20x: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.x5.numel() * 4 + self.x20.numel() * 4 + self.mask.numel()


def feature_paths(features_dir: PathLike, backbone: str, slide_id: str) -> tuple[Path, Path]:
    """The 5x file and the hierarchical file of a slide (our layout = HiVE-MIL's download layout)."""
    root = Path(features_dir)
    return (
        root / f"{backbone}_5x" / f"{slide_id}.h5",
        root / f"hierarchical_{backbone}_5x_20x" / f"{slide_id}.h5",
    )


def load_slide(features_dir: PathLike, backbone: str, slide_id: str) -> SlideBag:
    """Read and check one slide's features; a missing mask (HiVE-MIL's files) means "non-zero children"."""
    path5, path_h = feature_paths(features_dir, backbone, slide_id)
    for path in (path5, path_h):
        if not path.exists():
            raise SlideError(slide_id, f"feature file {path} not found")
    x5, coords5, _ = read_features(path5)
    x20, coords20, mask, _ = read_hierarchical(path_h)
    if x5.ndim != 2 or x20.ndim != 3:
        raise SlideError(slide_id, f"features must be [N, D] and [N, 16, D]; got {x5.shape} ({path5}), {x20.shape} ({path_h})")
    if x20.shape[0] != x5.shape[0] or x20.shape[2] != x5.shape[1]:
        raise SlideError(
            slide_id, f"5x features {x5.shape} ({path5}) and hierarchical features {x20.shape} ({path_h}) do not "
            "match row for row"
        )
    if x5.shape[0] == 0:
        raise SlideError(slide_id, f"no patches in {path5}")
    if mask is None:
        mask = np.any(x20 != 0, axis=-1)
    if mask.shape != x20.shape[:2]:
        raise SlideError(slide_id, f"mask {mask.shape} does not match features {x20.shape} in {path_h}")
    return SlideBag(
        slide_id,
        torch.from_numpy(np.ascontiguousarray(x5, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(x20, dtype=np.float32)),
        torch.from_numpy(np.asarray(mask, dtype=bool)),
        np.asarray(coords5),
        np.asarray(coords20),
    )


class FeatureStore:
    """Loads slides on demand and keeps them in memory up to a byte budget (few-shot sets fit; test sets may not)."""

    def __init__(self, features_dir: PathLike, backbone: str, cache_bytes: float = 4e9):
        self.features_dir = Path(features_dir)
        self.backbone = backbone
        self.cache_bytes = cache_bytes
        self._cache: dict[str, SlideBag] = {}
        self._used = 0

    def get(self, slide_id: str) -> SlideBag:
        if slide_id in self._cache:
            return self._cache[slide_id]
        bag = load_slide(self.features_dir, self.backbone, slide_id)
        if self._used + bag.nbytes <= self.cache_bytes:
            self._cache[slide_id] = bag
            self._used += bag.nbytes
        return bag


def to_device(bag: SlideBag, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    return bag.x5.to(device), bag.x20.to(device), bag.mask.to(device)


@dataclass
class Task:
    """Labels and texts of one classification task: class order comes from the prompt file."""

    classes: list[str]
    labels: dict[str, int]  # slide_id -> class index
    texts: list[str]  # 16 per class, prompt-file order


def load_task(dataset_csv: PathLike, prompts_json: PathLike) -> Task:
    """dataset.csv labels mapped onto the prompt file's classes (the class order is the prompt file's)."""
    dataset = read_dataset(dataset_csv)
    prompts = load_prompts(prompts_json)
    classes = prompts.labels
    unknown = sorted(set(dataset["label"]) - set(classes))
    if unknown:
        raise PipelineError(
            f"dataset {dataset_csv}: label(s) {unknown} have no prompts in {prompts_json} (classes: {classes})"
        )
    labels = {row.slide_id: classes.index(row.label) for row in dataset.itertuples()}
    texts = [t for c in prompts.classes for t in c.texts()]
    return Task(classes, labels, texts)


def fold_files(splits_dir: PathLike, folds: Sequence[int] | None = None) -> dict[int, Path]:
    """`splits_{k}.csv` files of a split folder, by fold number."""
    splits_dir = Path(splits_dir)
    found = {int(p.stem.split("_")[1]): p for p in splits_dir.glob("splits_*.csv") if p.stem.split("_")[1].isdigit()}
    if folds is not None:
        missing = [k for k in folds if k not in found]
        if missing:
            raise PipelineError(f"split folder {splits_dir}: no splits_{{k}}.csv for fold(s) {missing}")
        found = {k: found[k] for k in folds}
    if not found:
        raise PipelineError(f"split folder {splits_dir}: no splits_{{k}}.csv files")
    return dict(sorted(found.items()))


# --- models --------------------------------------------------------------------------------------------------


def frozen_text_features(backbone: Any, texts: Sequence[str], device: torch.device) -> Tensor:
    """Text features of the raw prompts (no learned context), for the zero-shot baseline."""
    with torch.no_grad():
        return backbone.encode_text(backbone.tokenize(list(texts)).to(device)).float()


def build_model(
    method: str, n_classes: int, backbone: Any, texts: Sequence[str], cfg: TrainConfig, device: torch.device
) -> nn.Module:
    """A fresh model of `method` on `device` (HiVE-MIL's prompt learner reads the frozen backbone)."""
    dim = int(backbone.embed_dim)
    if method == "hivemil":
        learner = PromptLearner(backbone, texts, n_ctx=cfg.n_ctx).to(device)
        model: nn.Module = HiveMIL(dim, n_classes, float(backbone.logit_scale), cfg.hivemil_config(), learner)
    elif method in ("abmil_5x", "abmil_20x"):
        model = ABMIL(dim, n_classes, scale=method.split("_")[1], hidden=cfg.abmil_hidden, dropout=cfg.abmil_dropout)
    elif method == "zeroshot":
        model = ZeroShotClassifier(
            frozen_text_features(backbone, texts, device),
            n_classes,
            score_scale(float(backbone.logit_scale), cfg.logit_scale),
            cfg.top_k_5x,
            cfg.top_k_20x,
        )
    else:
        raise PipelineError(f"unknown method {method!r}; choose from {list(METHODS)}")
    return model.to(device)


def is_trainable(model: nn.Module) -> bool:
    return any(p.requires_grad for p in model.parameters())


def slide_logits(model: nn.Module, bag: SlideBag, device: torch.device, texts: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Logits `[C]` and the model's auxiliary loss (HTCL * lambda for HiVE-MIL, else 0) for one slide."""
    x5, x20, mask = to_device(bag, device)
    if isinstance(model, HiveMIL):
        out = model(x5, x20, mask, texts)
        return out.logits, model.config.htcl_weight * out.htcl
    out = model(x5, x20, mask)
    return out.logits, out.logits.new_zeros(())


@dataclass
class Evaluation:
    probs: np.ndarray  # [N, C]
    loss: float  # mean cross-entropy
    error: float  # 1 - accuracy


def evaluate(model: nn.Module, bags: Iterable[SlideBag], labels: Sequence[int] | None, device: torch.device) -> Evaluation:
    """Class probabilities for each slide (and CE loss / error when labels are given), without gradients."""
    model.eval()
    probs, losses = [], []
    with torch.no_grad():
        texts = model.encode_texts() if isinstance(model, HiveMIL) else None
        for i, bag in enumerate(bags):
            logits, _ = slide_logits(model, bag, device, texts)
            probs.append(logits.float().softmax(-1).cpu().numpy())
            if labels is not None:
                losses.append(F.cross_entropy(logits.unsqueeze(0), torch.tensor([labels[i]], device=device)).item())
    p = np.stack(probs) if probs else np.zeros((0, 0))
    if labels is None or not len(labels):
        return Evaluation(p, float("nan"), float("nan"))
    error = float(np.mean(p.argmax(1) != np.asarray(labels)))
    return Evaluation(p, float(np.mean(losses)), error)


class EarlyStopping:
    """Stop when the validation error has not improved for `patience` epochs; keep the best weights.

    Stopping follows the error alone (as HIVEMIL.md and the CLAM-derived reference code do), so a plateau of
    equal errors ends training. Which weights are kept is decided by (error, loss): among the epochs with the
    lowest error, the one with the lowest validation loss, rather than simply the first.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best_key: tuple[float, float] | None = None
        self.best_epoch = -1
        self.best_state: dict[str, Tensor] | None = None
        self.best_error: float | None = None
        self.epochs_without_improvement = 0

    def step(self, epoch: int, error: float, loss: float, model: nn.Module) -> bool:
        """Record an epoch; return True when training should stop."""
        if self.best_key is None or (error, loss) < self.best_key:
            self.best_key = (error, loss)
            self.best_epoch = epoch
            self.best_state = copy.deepcopy(model.state_dict())
        if self.best_error is None or error < self.best_error:
            self.best_error = error
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return self.epochs_without_improvement >= self.patience


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int


def fit(
    model: nn.Module,
    train: Sequence[tuple[SlideBag, int]],
    val: Sequence[tuple[SlideBag, int]],
    cfg: TrainConfig,
    device: torch.device,
    name: str = "",
) -> FitResult:
    """Train one slide per step; restore the weights of the best validation epoch before returning."""
    if not is_trainable(model):
        return FitResult([], -1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    stopper = EarlyStopping(cfg.patience)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(train), generator=order_gen).tolist():
            bag, label = train[idx]
            optimizer.zero_grad(set_to_none=True)
            logits, aux = slide_logits(model, bag, device)
            loss = F.cross_entropy(logits.unsqueeze(0), torch.tensor([label], device=device)) + aux
            loss.backward()
            optimizer.step()
            total += loss.item()
        row = {"epoch": epoch, "train_loss": total / max(len(train), 1)}
        if val:
            ev = evaluate(model, [b for b, _ in val], [y for _, y in val], device)
            row.update(val_loss=ev.loss, val_error=ev.error)
            stop = stopper.step(epoch, ev.error, ev.loss, model)
        else:  # no validation slides: keep the last epoch
            row.update(val_loss=float("nan"), val_error=float("nan"))
            stop = stopper.step(epoch, -epoch, 0.0, model)
        history.append(row)
        log.info("%s epoch %d: train loss %.4f, val loss %.4f, val error %.3f", name, epoch, row["train_loss"],
                 row["val_loss"], row["val_error"])
        if stop:
            log.info("%s: early stop at epoch %d (best %d)", name, epoch, stopper.best_epoch)
            break
    assert stopper.best_state is not None  # at least one epoch ran (epochs >= 1)
    model.load_state_dict(stopper.best_state)
    return FitResult(history, stopper.best_epoch)


# --- checkpoints ---------------------------------------------------------------------------------------------


def save_checkpoint(
    path: PathLike, model: nn.Module, method: str, backbone: str, task: Task, cfg: TrainConfig, extra: dict[str, Any]
) -> None:
    """State dict (context + graph, no backbone weights) and what is needed to rebuild and check the model."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "hive_wsi_version": __version__,
        "method": method,
        "backbone": backbone,
        "classes": list(task.classes),
        "texts": list(task.texts),
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(
    path: PathLike, backbone: str | None = None, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Load with `weights_only=True`; refuse a checkpoint of another backbone or class set, naming both."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a bad file
        raise CheckpointError(f"checkpoint {path}: cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a hive-wsi checkpoint (format {CHECKPOINT_FORMAT})")
    if backbone is not None and ckpt["backbone"] != backbone:
        raise CheckpointError(
            f"checkpoint {path} was trained on backbone '{ckpt['backbone']}' features, not '{backbone}'"
        )
    if classes is not None and list(ckpt["classes"]) != list(classes):
        raise CheckpointError(
            f"checkpoint {path} was trained on classes {ckpt['classes']}, not {list(classes)}"
        )
    return ckpt


def restore_model(ckpt: dict[str, Any], backbone: Any, device: torch.device) -> nn.Module:
    """Rebuild a checkpoint's model on a frozen backbone and load its weights."""
    cfg = TrainConfig.from_dict(ckpt["config"])
    texts = ckpt["texts"]
    model = build_model(ckpt["method"], len(ckpt["classes"]), backbone, texts, cfg, device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model


# --- outputs -------------------------------------------------------------------------------------------------


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text_atomic(path, frame.to_csv(index=False, float_format="%.6g"))


def _save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def plot_curves(history: list[dict[str, float]], best_epoch: int, title: str, path: Path) -> None:
    """Training loss, validation loss and validation error per epoch, best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    _save_figure(fig, path)


def plot_roc(predictions: pd.DataFrame, classes: list[str], title: str, path: Path) -> None:
    """Binary: one ROC curve per fold. Multi-class: one-vs-rest per class, test slides of all folds pooled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.metrics import binary_auc

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
    _save_figure(fig, path)


def aggregate(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """results.csv (mean and population std over folds per method) and the "mean ± std" comparison table."""
    rows, comparison = [], []
    for method, part in summary.groupby("method", sort=False):
        mean = part[list(METRICS)].mean()
        std = part[list(METRICS)].std(ddof=0)
        rows.append({"method": method, "stat": "mean", **mean.to_dict()})
        rows.append({"method": method, "stat": "std", **std.to_dict()})
        comparison.append(
            {"method": method, "folds": len(part), **{m: f"{mean[m]:.3f} ± {std[m]:.3f}" for m in METRICS}}
        )
    return pd.DataFrame(rows), pd.DataFrame(comparison)


def comparison_markdown(comparison: pd.DataFrame, title: str) -> str:
    header = "| method | folds | ACC | AUC | macro-F1 |\n|---|---|---|---|---|\n"
    body = "".join(f"| {r.method} | {r.folds} | {r.acc} | {r.auc} | {r.f1} |\n" for r in comparison.itertuples())
    return f"# {title}\n\n{header}{body}"


# --- the loop ------------------------------------------------------------------------------------------------


def train_task(
    *,
    dataset_csv: PathLike,
    splits_dir: PathLike,
    prompts_json: PathLike,
    features_dir: PathLike,
    backbone_name: str,
    out_dir: PathLike,
    backbone: Any = None,
    weights: str | None = None,
    tokenizer: str | None = None,
    config: TrainConfig | None = None,
    folds: Sequence[int] | None = None,
    title: str = "",
) -> pd.DataFrame:
    """Train and evaluate every method on every fold; write all outputs to `out_dir`; return the summary.

    `backbone` may be passed in (tests, notebooks); otherwise it is created from the registry with `weights`.
    """
    cfg = config or TrainConfig()
    out = Path(out_dir)
    device = resolve_device(cfg.device)
    task = load_task(dataset_csv, prompts_json)
    if backbone is None:
        from pipeline.features import create_backbone

        backbone = create_backbone(backbone_name, weights=weights, tokenizer=tokenizer)
    backbone = freeze(backbone).to(device)
    store = FeatureStore(features_dir, backbone_name, cfg.cache_gb * 1e9)
    title = title or f"{out.parent.parent.name}/{backbone_name}/{out.name}"
    summary_rows: list[dict[str, Any]] = []
    prediction_frames: list[pd.DataFrame] = []
    for fold, split_file in fold_files(splits_dir, folds).items():
        split = read_split_csv(split_file)
        parts = {}
        for name, ids in split.partitions().items():
            missing = [s for s in ids if s not in task.labels]
            if missing:
                raise PipelineError(f"{split_file}: {name} slide(s) {missing[:5]} are not in {dataset_csv}")
            parts[name] = [(store.get(s), task.labels[s]) for s in ids] if name != "test" else list(ids)
        if not parts["train"]:
            raise PipelineError(f"{split_file}: no training slides")
        for method in cfg.methods:
            seed_everything(cfg.seed)
            model = build_model(method, len(task.classes), backbone, task.texts, cfg, device)
            name = f"{method} fold {fold}"
            result = fit(model, parts["train"], parts["val"], cfg, device, name)
            test_ids = parts["test"]
            test_labels = [task.labels[s] for s in test_ids]
            ev = evaluate(model, (store.get(s) for s in test_ids), test_labels, device)
            metrics = classification_metrics(np.asarray(test_labels), ev.probs) if test_ids else dict.fromkeys(METRICS, float("nan"))
            log.info("%s: test %s", name, {k: round(v, 4) for k, v in metrics.items()})
            summary_rows.append(
                {
                    "method": method,
                    "fold": fold,
                    **metrics,
                    "best_epoch": result.best_epoch,
                    "epochs_run": len(result.history),
                    "n_train": len(parts["train"]),
                    "n_val": len(parts["val"]),
                    "n_test": len(test_ids),
                }
            )
            save_checkpoint(
                out / "checkpoints" / f"{method}_fold{fold}.pt", model, method, backbone_name, task, cfg,
                {"fold": fold, "best_epoch": result.best_epoch, "metrics": metrics},
            )
            if result.history:
                _write_csv(out / "curves" / f"{method}_fold{fold}.csv", pd.DataFrame(result.history))
                plot_curves(result.history, result.best_epoch, f"{title}: {name}",
                            out / "plots" / f"curves_{method}_fold{fold}.png")
            frame = pd.DataFrame(
                {
                    "method": method,
                    "fold": fold,
                    "slide_id": test_ids,
                    "label": [task.classes[y] for y in test_labels],
                    "label_index": test_labels,
                    "pred": [task.classes[i] for i in ev.probs.argmax(1)] if test_ids else [],
                }
            )
            for c, cls in enumerate(task.classes):
                frame[f"prob_{cls}"] = ev.probs[:, c] if test_ids else []
            prediction_frames.append(frame)
    summary = pd.DataFrame(summary_rows)
    predictions = pd.concat(prediction_frames, ignore_index=True)
    results, comparison = aggregate(summary)
    _write_csv(out / "summary.csv", summary)
    _write_csv(out / "results.csv", results)
    _write_csv(out / "predictions.csv", predictions)
    _write_csv(out / "comparison.csv", comparison)
    write_text_atomic(out / "comparison.md", comparison_markdown(comparison, title))
    for method, part in predictions.groupby("method", sort=False):
        if len(part) and part["label_index"].nunique() > 1:
            plot_roc(part, task.classes, f"{title}: {method}", out / "plots" / f"roc_{method}.png")
    return summary
