"""Which torch device a stage runs on, and in which precision: one rule for extraction, pretraining, training and
prediction."""

from __future__ import annotations

import contextlib

import torch

from pipeline.errors import PipelineError

#: reduced precisions a model may run in on a GPU (BackboneCfg.precision); anything else, and the CPU, is fp32
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """"auto" -> the GPU when there is one, else the CPU; an unavailable GPU is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"device '{device}' requested but no CUDA GPU is available (use --device auto or cpu)")
    return dev


def run_precision(device: torch.device, precision: str) -> str:
    """The precision a forward pass really runs in (recorded in outputs): `precision` on a GPU, fp32 on the CPU."""
    return precision if device.type == "cuda" and precision in AUTOCAST_DTYPES else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """A context running a forward pass in `run_precision(device, precision)` (a no-op for fp32)."""
    used = run_precision(device, precision)
    if used == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[used])
