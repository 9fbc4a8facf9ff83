"""The HLSS checkpoint: what turns a VLM into backbone `{vlm}_hlss`, and nothing of the VLM itself.

It holds the adapter, the three heads, the image-tower blocks it tuned (`trainable: last_blocks`), the attribute texts
the heads were built from, the pretraining settings, and the VLM it was trained on: its name and the weights it had
(label, sha256, seed for random ones). Loading checks all of that, so features are never made by an adapter on a
VLM it was not trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.errors import PipelineError
from pipeline.formats import PathLike, atomic_path

FORMAT = "hive-wsi/hlss-checkpoint-1"
REQUIRED = ("format", "vlm", "vlm_weights", "vlm_weights_sha256", "vlm_weights_seed", "embed_dim", "adapter_hidden",
            "adapter", "heads", "tower", "trainable", "attributes", "settings", "step")


class HlssCheckpointError(PipelineError):
    """An HLSS checkpoint cannot be read, or does not belong to the backbone it is loaded into."""


def save_hlss_checkpoint(dest: PathLike, payload: dict[str, Any]) -> None:
    """Write atomically (a killed job never leaves a half checkpoint that looks finished)."""
    missing = [k for k in REQUIRED if k not in payload and k != "format"]
    if missing:
        raise ValueError(f"HLSS checkpoint {dest}: missing {missing}")
    with atomic_path(dest) as tmp:
        torch.save({**payload, "format": FORMAT}, tmp)


def load_hlss_checkpoint(path: PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a missing, truncated or foreign file all end here
        raise HlssCheckpointError(f"cannot read HLSS checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise HlssCheckpointError(
            f"{path} is not an HLSS checkpoint (format {found!r}, expected {FORMAT!r}); a {{vlm}}_hlss backbone's "
            "weights are the file the pretrain stage writes (results/pretrain/{vlm}_hlss/hlss.pt)"
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise HlssCheckpointError(f"HLSS checkpoint {path} lacks {missing}")
    return ckpt
