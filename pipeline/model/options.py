"""The model switches' choices, torch-free, so the CLI, the config schema and the training defaults can name them
without importing torch (the model modules import them from here)."""

#: hierarchical attention of the HiVE-MIL graph: parent-child edges only (paper) or all pairs (reference code).
HIER_MODES = ("edges", "dense")
#: slide-logit multiplier: exp(theta) of the backbone (paper) or theta itself (reference code).
LOGIT_SCALE_MODES = ("exp", "raw")
