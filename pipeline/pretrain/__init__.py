"""HLSS pretraining: language-tied hierarchical self-supervision of the patch encoder (a residual adapter on the
VLM's image tower, trained on the cohort's own patient / slide / patch hierarchy), yielding backbone `{vlm}_hlss`.

This package's top level imports no torch (the workflow reads it while building the DAG)."""

#: the hierarchy levels, in the order of HLSS's three heads.
LEVELS = ("patch", "slide", "patient")
