"""HLSS pretraining settings: one torch-free dataclass, the only home of every pretraining default.

The `pretrain` command builds its flags from these fields and the workflow passes config.yaml's `pretrain:`
section as those flags (a test checks that the config schema's defaults equal these). HLSS trained 32 patients x
2 slides x 2 patches x 2 views for 40k iterations on a GPU; the defaults here are sized for a workstation GPU and
the demo overrides them to minutes on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import PipelineError
from pipeline.settings import option as _opt

TRAINABLE = ("adapter", "last_blocks")
#: fields whose flag is not the plain `--field-name`: `seed` is --pretrain-seed, since --seed seeds the VLM's weights
FLAG_NAMES = {"seed": "--pretrain-seed"}


@dataclass
class PretrainConfig:
    """Everything that decides a pretraining run; stored in its checkpoint (and its resumable state)."""

    steps: int = _opt(3000, "optimisation steps")
    patients_per_step: int = _opt(16, "patients per batch")
    slides_per_patient: int = _opt(2, "slides drawn per patient (repeated when a patient has fewer)")
    patches_per_slide: int = _opt(2, "tiles drawn per slide")
    views: int = _opt(2, "augmented views per tile (the patch-level positives)")
    lr: float = _opt(1e-3, "AdamW learning rate (cosine decay after a linear warmup)")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    warmup: float = _opt(0.1, "fraction of the steps with a linear learning-rate warmup")
    temperature: float = _opt(0.07, "supervised contrastive temperature (HLSS, HiDisc: 0.07)")
    align_weight: float = _opt(1.0, "weight of the text-alignment term against the contrastive terms")
    align_temperature: float = _opt(0.02, "softmax temperature over embedding dimensions in the text alignment")
    adapter_hidden: int = _opt(256, "bottleneck size of the residual adapter")
    trainable: str = _opt("adapter", "adapter: only adapter and heads train; last_blocks: the tower's last blocks "
                          "too", choices=TRAINABLE)
    last_blocks: int = _opt(1, "tower blocks tuned when trainable is last_blocks")
    checkpoint_every: int = _opt(100, "steps between resumable state saves")
    seed: int = _opt(0, "seed of the adapter's initialisation and of every batch")

    def __post_init__(self) -> None:
        problems = []
        for name in ("steps", "patients_per_step", "slides_per_patient", "patches_per_slide", "adapter_hidden",
                     "last_blocks", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.patients_per_step < 2:
            problems.append("patients_per_step must be at least 2 (patients are each other's negatives)")
        if self.views < 2:
            problems.append(f"views must be at least 2 (the patch level's positives), got {self.views}")
        if not 0 <= self.warmup < 1:
            problems.append(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        for name in ("lr", "temperature", "align_temperature"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.trainable not in TRAINABLE:
            problems.append(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if problems:
            raise PipelineError("pretraining settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resumable_from(self, other: dict[str, Any]) -> bool:
        """A saved state continues this run when everything but the save interval is the same."""
        mine = {k: v for k, v in self.to_dict().items() if k != "checkpoint_every"}
        theirs = {k: v for k, v in other.items() if k != "checkpoint_every"}
        return mine == theirs
