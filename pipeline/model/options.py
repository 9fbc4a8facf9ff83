"""The model switches' choices and the reference-code preset, torch-free, so the CLI, the config schema and the
training defaults can name them without importing torch (the model modules import them from here)."""

from __future__ import annotations

from typing import Any

#: hierarchical attention of the HiVE-MIL graph: parent-child edges only (paper) or all pairs (reference code).
HIER_MODES = ("edges", "dense")
#: the hierarchical attention block: per-relation q/k/v with the update h + attention + SAGE (ours), or the
#: reference code's one multi-head attention per layer shared by all relations, update 2h + attention + SAGE.
HIER_BLOCKS = ("per_relation", "shared")
#: slide-logit multiplier: exp(theta) of the backbone (paper) or theta itself (reference code).
LOGIT_SCALE_MODES = ("exp", "raw")
#: the standard deviation in the filtering threshold: population (ours) or sample (the reference code's torch.std).
FILTER_STD_MODES = ("population", "sample")
#: which epoch's weights are restored: among the lowest-error epochs the lowest validation loss (ours), or the
#: first lowest-error epoch (the reference code's CLAM early stopping).
BEST_EPOCH_MODES = ("lowest_loss", "first")

#: `reference: true` sets each of these switches to the public reference code's behaviour (HIVEMIL.md, issue 13);
#: the defaults (the paper's method) are in pipeline.training.config and HiveMILConfig.
REFERENCE_SWITCHES: dict[str, Any] = {
    "hier_attention": "dense",
    "hier_block": "shared",
    "htcl_negatives": False,
    "logit_scale": "raw",
    "filter_at_eval": True,
    "normalize_inputs": False,
    "keep_padded_children": True,
    "filter_std": "sample",
    "best_epoch": "first",
}


def apply_reference(config: Any) -> None:
    """Set every reference switch that `config` (a dataclass) has to the reference code's value, in place."""
    for name, value in REFERENCE_SWITCHES.items():
        if hasattr(config, name):
            setattr(config, name, value)
