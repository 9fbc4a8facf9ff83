"""HiVE-MIL model and baselines: tensors in, tensors out (never slides or files)."""
