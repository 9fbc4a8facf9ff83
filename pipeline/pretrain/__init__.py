"""HLSS pretraining: language-tied hierarchical self-supervision of the patch encoder (a residual adapter on the
VLM's image tower, trained on the cohort's own patient / slide / patch hierarchy), yielding backbone `{vlm}_hlss`."""
