"""The training settings every method shares: one torch-free dataclass, the only home of their defaults.

A method's own hyperparameters live beside it (its `Settings` dataclass, pipeline.training.methods.*) and a task
type's in its module (pipeline.training.tasks.*); config.yaml sets them under `train.method_settings.<method>` and
a task's `settings:`. The `train` command builds its flags from these fields and the workflow turns config.yaml's
`train:` section into those flags (pipeline.settings.section_flags).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import PipelineError
from pipeline.model.options import BEST_EPOCH_MODES
from pipeline.settings import build, option


@dataclass
class TrainConfig:
    """Everything shared that decides a training run; stored in every checkpoint."""

    epochs: int = option(50, "maximum epochs (one slide per step)")
    patience: int = option(10, "epochs without a lower validation error before stopping")
    lr: float = option(1e-4, "Adam learning rate")
    weight_decay: float = option(1e-5, "Adam weight decay")
    seed: int = option(1, "seed, reset before every fold and method (same seed -> same metrics on a CPU)")
    best_epoch: str = option(
        "lowest_loss", "weights restored: of the lowest-error epochs the lowest validation loss; first: the first "
        "(HiVE-MIL's reference code; its `reference` setting implies it)", choices=BEST_EPOCH_MODES
    )
    device: str = option("auto", "auto (GPU if present), cpu, cuda or cuda:N")
    cache_gb: float = option(4.0, "slide features kept in memory (GB)")

    def __post_init__(self) -> None:
        if min(self.epochs, self.patience) < 1:
            raise PipelineError(f"train: epochs and patience must be >= 1 (got {self.epochs}, {self.patience})")
        if self.best_epoch not in BEST_EPOCH_MODES:
            raise PipelineError(f"train: best_epoch must be one of {list(BEST_EPOCH_MODES)}, got {self.best_epoch!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        return build(cls, values, "train config")


def defaults() -> dict[str, Any]:
    """Every shared training default by field name (what config.yaml's comments and the CLI must agree with)."""
    return TrainConfig().to_dict()
