"""Training hyperparameters: one dataclass, torch-free, whose defaults are the only home of every training default.

The `train` command builds its flags from these fields, the workflow turns config.yaml's `train:` section into
those flags (pipeline.wiring.flags), and a test checks that the config schema's defaults equal them. Defaults are
HiVE-MIL's paper values (HIVEMIL.md); the switches marked "reference" reproduce the public reference code, and
`reference` turns all of them on at once (pipeline.model.options.REFERENCE_SWITCHES).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pipeline.errors import PipelineError
from pipeline.model.options import (
    BEST_EPOCH_MODES,
    FILTER_STD_MODES,
    HIER_BLOCKS,
    HIER_MODES,
    LOGIT_SCALE_MODES,
    apply_reference,
)


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Everything that decides a training run; stored in every checkpoint."""

    epochs: int = _opt(50, "maximum epochs (one slide per step)")
    patience: int = _opt(10, "epochs without a lower validation error before stopping")
    lr: float = _opt(1e-4, "Adam learning rate")
    weight_decay: float = _opt(1e-5, "Adam weight decay")
    seed: int = _opt(1, "seed, reset before every fold and method (same seed -> same metrics on a CPU)")
    reference: bool = _opt(False, "every switch below as the public reference code (overrides them); default paper")
    best_epoch: str = _opt(
        "lowest_loss", "weights restored: of the lowest-error epochs the lowest validation loss; first: the first "
        "(reference)", choices=BEST_EPOCH_MODES
    )
    hier_attention: str = _opt(
        "edges", "edges: parent-child attention, linear memory (paper); dense: all pairs (reference)", choices=HIER_MODES
    )
    hier_block: str = _opt(
        "per_relation", "per_relation: q/k/v per relation, update h + attn + SAGE; shared: one attention per layer, "
        "update 2h + attn + SAGE (reference)", choices=HIER_BLOCKS
    )
    htcl_negatives: bool = _opt(True, "HTCL's other-class negative term (paper); off as the reference code")
    logit_scale: str = _opt(
        "exp", "exp: slide logits x exp(theta) (paper); raw: x theta (reference)", choices=LOGIT_SCALE_MODES
    )
    filter_at_eval: bool = _opt(False, "text-guided filtering at evaluation too (reference); default training only")
    normalize_inputs: bool = _opt(True, "L2-normalise features before filtering and as graph inputs; off: raw "
                                  "(reference)")
    keep_padded_children: bool = _opt(False, "all 16 child slots of a kept parent are 20x nodes, zeros too (reference)")
    filter_std: str = _opt(
        "population", "filtering threshold's std: population, or sample (reference)", choices=FILTER_STD_MODES
    )
    top_k_5x: int = _opt(2, "5x patches averaged per coarse text in the slide logits")
    top_k_20x: int = _opt(100, "20x patches averaged per fine text in the slide logits")
    n_ctx: int = _opt(16, "learnable prompt context vectors shared by all texts")
    num_layers: int = _opt(2, "HiVE-MIL graph layers")
    heads: int = _opt(2, "attention heads of the HiVE-MIL graph")
    abmil_hidden: int = _opt(256, "ABMIL hidden size")
    abmil_dropout: float = _opt(0.25, "ABMIL dropout")
    hmil_epochs: int = _opt(200, "HMIL epochs E (also the length of its alpha and temperature schedules; paper 200)")
    hmil_patience: int = _opt(200, "HMIL early-stopping patience (default: none within 200 epochs, as the public code)")
    hmil_batch_size: int = _opt(64, "HMIL slides per step (paper 64; its contrastive loss compares them)")
    hmil_hidden: int = _opt(256, "HMIL projection and coarse attention size (paper 256)")
    hmil_fine_attention_hidden: int = _opt(64, "HMIL fine-level attention size (paper 64)")
    hmil_attention_weight: float = _opt(1.0, "weight of HMIL's attention-matching loss (the code never adds it)")
    hmil_lr_patience: int = _opt(5, "HMIL plateau epochs before the learning rate drops x0.1 (paper 5)")
    survival_bins: int = _opt(4, "survival: time bins at the quartiles of uncensored times (MCAT 4); also the splits'")
    survival_alpha: float = _opt(0.0, "survival: weight of the uncensored-only term of the hazard NLL (MCAT 0)")
    survival_epochs: int = _opt(20, "survival: epochs, no early stopping (MCAT 20; the held-out fold is the test)")
    survival_batch_size: int = _opt(1, "survival: patients per step (MCAT: 1, gradients accumulated over 32)")
    survival_lr: float = _opt(2e-4, "survival: Adam learning rate (MCAT 2e-4)")
    hila_hidden: int = _opt(256, "HiLa instance-token size H")
    hila_heads: int = _opt(4, "HiLa cross-level propagation attention heads")
    hila_clp_layers: int = _opt(1, "HiLa cross-level propagation layers (region <-> its own children)")
    hila_dropout: float = _opt(0.25, "HiLa dropout")
    hila_ot_eps: float = _opt(0.1, "HiLa optimal prompt learning: Sinkhorn entropic regularisation (PLOT 0.1)")
    hila_ot_iters: int = _opt(100, "HiLa Sinkhorn iterations at most (PLOT 100)")
    hila_ot_tol: float = _opt(1e-5, "HiLa Sinkhorn stop threshold on the marginal error")
    hila_attr_temperature: float = _opt(0.1, "HiLa softmax temperature of the attribute weights")
    hila_mcl_temperature: float = _opt(0.1, "HiLa mutual contrastive learning temperature")
    hila_mcl_weight: float = _opt(0.1, "HiLa weight of the mutual contrastive loss")
    five_lr: float = _opt(3e-4, "FiVE Adam learning rate (ours: a few-shot fold has tens of steps; the reference's "
                                "3e-6, x10 for its fusion, runs for ~10,000)")
    five_prompts: int = _opt(16, "FiVE learnable query prompts beside the question prompts (reference 16)")
    five_n_ctx: int = _opt(8, "FiVE learnable context tokens of each query prompt and of the description texts")
    five_heads: int = _opt(8, "FiVE attention heads of both branches (reference: D / 64 = 8)")
    five_logit_scale: float = _opt(300.0, "FiVE's fixed logit scale on the cosines (reference 300)")
    five_batch_size: int = _opt(2, "FiVE slides per step (ours; the reference accumulates 8 slides' gradients, which "
                                   "would leave a 4-shot fold one step per epoch)")
    five_sample_ratio: float = _opt(0.25, "FiVE few-shot: share p of a slide's instances drawn per step (reference "
                                          "fine-tuning 0.25)")
    five_zeroshot_sample_ratio: float = _opt(1.0, "FiVE zero-shot protocol: share p drawn per step (reference 1.0)")
    five_max_instances: int = _opt(16384, "FiVE: at most T instances drawn per step (reference 16384)")
    five_eval_instances: str = _opt("all", "FiVE at evaluation: all instances, or evenly spaced ones (reference)",
                                    choices=("all", "spaced"))
    five_description_weight: float = _opt(1.0, "FiVE few-shot: weight of the report-description loss beside the "
                                               "class-description loss")
    five_grad_descriptions: int = _opt(96, "FiVE: descriptions per step encoded with gradient (reference 96); "
                                           "the others without")
    device: str = _opt("auto", "auto (GPU if present), cpu, cuda or cuda:N")
    cache_gb: float = _opt(4.0, "slide features kept in memory (GB)")

    def __post_init__(self) -> None:
        if self.reference:
            apply_reference(self)
        if min(self.epochs, self.patience, self.hmil_epochs, self.hmil_patience, self.hmil_batch_size,
               self.survival_epochs, self.survival_batch_size) < 1:
            raise PipelineError(
                f"train: epochs, patience and batch sizes must be >= 1 (got epochs {self.epochs}, patience "
                f"{self.patience}, hmil_epochs {self.hmil_epochs}, hmil_patience {self.hmil_patience}, "
                f"hmil_batch_size {self.hmil_batch_size}, survival_epochs {self.survival_epochs}, "
                f"survival_batch_size {self.survival_batch_size})"
            )
        if self.survival_bins < 2:
            raise PipelineError(f"train config: survival_bins must be >= 2, got {self.survival_bins}")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise PipelineError(f"train config: {f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}")
        if min(self.five_prompts, self.five_n_ctx, self.five_heads, self.five_batch_size, self.five_max_instances,
               self.five_grad_descriptions) < 1:
            raise PipelineError("train config: five_prompts, five_n_ctx, five_heads, five_batch_size, "
                                "five_max_instances and five_grad_descriptions must be >= 1")
        if self.five_lr <= 0 or self.five_logit_scale <= 0:
            raise PipelineError(f"train config: five_lr and five_logit_scale must be > 0, got {self.five_lr}, "
                                f"{self.five_logit_scale}")
        for name in ("five_sample_ratio", "five_zeroshot_sample_ratio"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise PipelineError(f"train config: {name} must be in (0, 1], got {getattr(self, name)}")
        if self.top_k_5x < 1 or self.top_k_20x < 1:
            raise PipelineError(f"train config: top-k must be >= 1, got 5x={self.top_k_5x}, 20x={self.top_k_20x}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PipelineError(f"train config: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def defaults() -> dict[str, Any]:
    """Every training default by field name (what the schema and the CLI must agree with)."""
    return TrainConfig().to_dict()
