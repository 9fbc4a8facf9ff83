"""The shared fit / evaluate loop: Adam, one slide (or the method's batch) per step, early stopping on the task's
stopping error.

It knows a method only through `Method.logits` / `Method.eval_cache` and a task only through its loss, outputs and
stopping error, so every registered method on every task type trains the same way.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.model.options import BEST_EPOCH_MODES
from pipeline.seeding import seed_everything  # noqa: F401  (re-exported: the training run seeds with it)
from pipeline.training.config import TrainConfig
from pipeline.training.data import SlideBag
from pipeline.training.methods.base import Method

log = logging.getLogger(__name__)


def is_trainable(model: nn.Module) -> bool:
    return any(p.requires_grad for p in model.parameters())


@dataclass
class Evaluation:
    outputs: np.ndarray  # [N, C] what the task makes of the logits (class probabilities)
    loss: float  # mean task loss
    error: float  # the task's stopping error


def evaluate(
    method: Method, model: nn.Module, bags: Iterable[SlideBag], targets: Sequence[int] | None, device: torch.device
) -> Evaluation:
    """Outputs for each slide (and loss / stopping error when targets are given), without gradients."""
    task = method.task
    model.eval()
    outputs, losses = [], []
    with torch.no_grad():
        cache = method.eval_cache(model)
        for i, bag in enumerate(bags):
            logits, _ = method.logits(model, bag, device, cache)
            outputs.append(task.outputs(logits))
            if targets is not None:
                losses.append(task.loss(logits, targets[i]).item())
    out = np.stack(outputs) if outputs else np.zeros((0, len(task.classes)))
    if targets is None or not len(targets):
        return Evaluation(out, float("nan"), float("nan"))
    return Evaluation(out, float(np.mean(losses)), task.stopping_error(out, targets))


class EarlyStopping:
    """Stop when the validation error has not improved for `patience` epochs; keep the best weights.

    Stopping follows the error alone (as HIVEMIL.md and the CLAM-derived reference code do), so a plateau of
    equal errors ends training. Which weights are kept: with `best_epoch="lowest_loss"` (default) among the epochs
    with the lowest error the one with the lowest validation loss, since few-shot validation errors tie often;
    with `"first"` the first lowest-error epoch, as the reference code keeps it.
    """

    def __init__(self, patience: int, best_epoch: str = "lowest_loss"):
        if best_epoch not in BEST_EPOCH_MODES:
            raise ValueError(f"best_epoch must be one of {BEST_EPOCH_MODES}, got {best_epoch!r}")
        self.patience = patience
        self.by_loss = best_epoch == "lowest_loss"
        self.best_key: tuple[float, float] | None = None
        self.best_epoch = -1
        self.best_state: dict[str, Tensor] | None = None
        self.best_error: float | None = None
        self.epochs_without_improvement = 0

    def step(self, epoch: int, error: float, loss: float, model: nn.Module) -> bool:
        """Record an epoch; return True when training should stop."""
        key = (error, loss if self.by_loss else 0.0)
        if self.best_key is None or key < self.best_key:
            self.best_key = key
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
    method: Method,
    model: nn.Module,
    train: Sequence[tuple[SlideBag, Any]],
    val: Sequence[tuple[SlideBag, Any]],
    cfg: TrainConfig,
    device: torch.device,
    name: str = "",
) -> FitResult:
    """Train in steps of the method's batch (one slide for most); restore the best validation epoch's weights.

    The method sets the epochs, patience, batch and any learning-rate schedule (HMIL: 64 slides, plateau decay).
    """
    if not is_trainable(model):
        return FitResult([], -1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=method.learning_rate(), weight_decay=cfg.weight_decay)
    scheduler = method.lr_scheduler(optimizer)
    epochs, batch_size = method.max_epochs(), method.train_batch_size()
    stopper = EarlyStopping(method.patience(), method.best_epoch())
    order_gen = torch.Generator().manual_seed(cfg.seed)
    method.prepare(model, train)
    select = bool(val) and method.selects_on_validation()
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        model.train()
        total = 0.0
        order = torch.randperm(len(train), generator=order_gen).tolist()
        for start in range(0, len(order), batch_size):
            batch = [train[i] for i in order[start : start + batch_size]]
            optimizer.zero_grad(set_to_none=True)
            loss = method.training_loss(model, batch, device, epoch, epochs)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        row = {"epoch": epoch, "train_loss": total / max(len(train), 1)}
        if select:
            ev = evaluate(method, model, [b for b, _ in val], [y for _, y in val], device)
            row.update(val_loss=ev.loss, val_error=ev.error)
            stop = stopper.step(epoch, ev.error, ev.loss, model)
            if scheduler is not None:
                scheduler.step(ev.loss)
        else:  # no validation slides, or a method that must not choose by them: keep the last epoch
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
