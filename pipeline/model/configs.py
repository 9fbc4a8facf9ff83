"""The models' hyperparameters as torch-free dataclasses: their defaults' one home.

The model modules take them as their `config`; the training methods subclass them as their settings (adding what
training needs, e.g. the prompt context length), so `train.method_settings.<method>` in config.yaml, the `train`
command and `python -m pipeline methods --settings NAME` all read the defaults and help from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline.model.options import (
    FILTER_STD_MODES,
    HIER_BLOCKS,
    HIER_MODES,
    LOGIT_SCALE_MODES,
    apply_reference,
)
from pipeline.settings import option


@dataclass
class HiveMILConfig:
    """HiVE-MIL's hyperparameters and the switches for the reference code's departures from the paper (HIVEMIL.md).

    `reference=True` sets every switch to the reference code's value (pipeline.model.options.REFERENCE_SWITCHES),
    whatever the others say; each switch alone moves one departure.
    """

    num_layers: int = option(2, "HiVE-MIL graph layers")
    heads: int = option(2, "attention heads of the HiVE-MIL graph")
    alpha: float = option(0.5, "TGDF: keep entries >= column mean + alpha x column std")
    top_k_5x: int = option(2, "5x patches averaged per coarse text in the slide logits (all if fewer)")
    top_k_20x: int = option(100, "20x patches averaged per fine text in the slide logits")
    htcl_weight: float = option(0.5, "weight of the hierarchical text contrastive loss")
    reference: bool = option(False, "every switch below as the public reference code (overrides them), and the "
                             "first lowest-error epoch restored; default: the paper")
    hier_attention: str = option("edges", "edges: attention only between a node and its own parent/children, "
                                 "memory linear in patches (paper); dense: all pairs (reference)", choices=HIER_MODES)
    hier_block: str = option("per_relation", "per_relation: q/k/v per relation, update h + attention + SAGE; shared: "
                             "one attention per layer, update 2h + attention + SAGE (reference)", choices=HIER_BLOCKS)
    htcl_negatives: bool = option(True, "HTCL's other-class negative term (paper); off: always zero (reference)")
    logit_scale: str = option("exp", "exp: slide logits x exp(theta) of the backbone (paper); raw: x theta "
                              "(reference)", choices=LOGIT_SCALE_MODES)
    filter_at_eval: bool = option(False, "text-guided filtering at evaluation too (reference); default training only")
    normalize_inputs: bool = option(True, "L2-normalise features before filtering and as graph inputs; off: raw "
                                    "(reference)")
    keep_padded_children: bool = option(False, "all 16 child slots of a kept parent are 20x nodes, missing ones as "
                                        "zero vectors (reference)")
    filter_std: str = option("population", "the filtering threshold's std: population, or sample (reference)",
                             choices=FILTER_STD_MODES)

    def __post_init__(self) -> None:
        if self.reference:
            apply_reference(self)
        if self.hier_attention not in HIER_MODES:
            raise ValueError(f"hier_attention must be one of {HIER_MODES}, got {self.hier_attention!r}")
        if self.hier_block not in HIER_BLOCKS:
            raise ValueError(f"hier_block must be one of {HIER_BLOCKS}, got {self.hier_block!r}")
        if self.logit_scale not in LOGIT_SCALE_MODES:
            raise ValueError(f"logit_scale must be one of {LOGIT_SCALE_MODES}, got {self.logit_scale!r}")
        if self.filter_std not in FILTER_STD_MODES:
            raise ValueError(f"filter_std must be one of {FILTER_STD_MODES}, got {self.filter_std!r}")
        if self.top_k_5x < 1 or self.top_k_20x < 1:
            raise ValueError(f"top-k must be >= 1, got 5x={self.top_k_5x}, 20x={self.top_k_20x}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HiLaConfig:
    """Hyperparameters of HiLa (pipeline.model.hila; all ours: the abstract gives none)."""

    hidden: int = option(256, "token size H of both levels")
    heads: int = option(4, "heads of the cross-level propagation (a region attends to its own children); must "
                        "divide hidden")
    clp_layers: int = option(1, "bidirectional cross-level propagation layers (0 turns CLP off)")
    dropout: float = option(0.25, "dropout after the projections, on the CLP messages and before the head")
    ot_eps: float = option(0.1, "optimal prompt learning: Sinkhorn entropic regularisation, kernel exp(-cost / eps) "
                           "(PLOT 0.1)")
    ot_iters: int = option(100, "Sinkhorn iterations at most (PLOT 100)")
    ot_tol: float = option(1e-5, "Sinkhorn stops once the prompt-side marginal error's 2-norm is below it (1e-5 "
                           "bounds each prompt's relative error by 1e-3 for up to 100 prompts)")
    attr_temperature: float = option(0.1, "temperature of the softmax that weights a level's attribute tokens")
    mcl_temperature: float = option(0.1, "mutual contrastive learning temperature")
    mcl_weight: float = option(0.1, "loss = hazard NLL + this x mutual contrastive loss")

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.heads < 1 or self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a positive multiple of heads ({self.heads})")
        if self.clp_layers < 0:
            raise ValueError(f"clp_layers must be >= 0, got {self.clp_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.ot_iters < 1:
            raise ValueError(f"ot_iters must be >= 1, got {self.ot_iters}")
        for name in ("ot_eps", "ot_tol", "attr_temperature", "mcl_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.mcl_weight < 0:
            raise ValueError(f"mcl_weight must be >= 0, got {self.mcl_weight}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
