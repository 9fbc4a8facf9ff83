"""Which torch device a stage runs on: one rule for extraction, training and prediction."""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError


def resolve_device(device: str) -> torch.device:
    """"auto" -> the GPU when there is one, else the CPU; an unavailable GPU is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"device '{device}' requested but no CUDA GPU is available (use --device auto or cpu)")
    return dev
