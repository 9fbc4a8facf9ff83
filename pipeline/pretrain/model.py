"""What HLSS trains: a residual adapter after the VLM's image tower, and one projection head per hierarchy level.

The adapter's residual is relative to the tower's output norm and starts at zero, so before any step `{vlm}_hlss`
embeds exactly as its VLM does (and keeps its image-text alignment); what pretraining moves is visible as a change
from that. Each head is a linear map D -> A_level whose rows start as the level's attribute text embeddings
(HLSS's initialisation), centred on their mean: a VLM's texts share a large common direction (cosine 0.6-0.9
between attributes), and rows that are nearly parallel make a rank-one head whose outputs are the same for every
image. Head outputs are standardised over the batch before the contrastive loss (a BatchNorm without parameters,
as SimCLR-style heads use): without it the first optimiser steps shift every embedding the same way and the
contrast collapses to its uniform value, log(N - 1), and stays there. The heads serve only the loss; extraction
uses tower and adapter.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.pretrain import LEVELS


class ResidualAdapter(nn.Module):
    r"""An embedding plus a learned correction scaled by its own norm.

    .. math:: \mathbf{e} = \mathbf{f} + \lVert\mathbf{f}\rVert\, W_2\,\mathrm{GELU}(W_1 \hat{\mathbf{f}} + b_1) + b_2

    with :math:`\hat{\mathbf{f}} = \mathbf{f} / \lVert\mathbf{f}\rVert`. The scale makes the adapter indifferent
    to how large the tower's raw outputs are (CLIP's are not normalised, CONCH's are). `up` starts at zero: the
    adapter is the identity until it is trained.

    Args:
        dim (int): Embedding size D.
        hidden (int): Bottleneck size.

    Shapes:
        - **input:** :math:`(B, D)` - **output:** :math:`(B, D)`
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, f: Tensor) -> Tensor:
        norm = f.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return f + norm * self.up(F.gelu(self.down(f / norm)))


def _standardise(h: Tensor) -> Tensor:
    """Centre and scale each output over the batch (a BatchNorm without parameters)."""
    if h.shape[0] < 2:
        return h
    return (h - h.mean(dim=0, keepdim=True)) / h.std(dim=0, keepdim=True).clamp_min(1e-6)


class LevelHeads(nn.Module):
    """One linear head per level, initialised to that level's attribute text embeddings, centred (no bias).

    Args:
        attribute_embeddings: level -> [A_level, D] unit-norm rows.

    Shapes:
        - **input:** normalised embeddings :math:`(B, D)` - **output:** level -> unit-norm :math:`(B, A_{level})`
    """

    def __init__(self, attribute_embeddings: dict[str, np.ndarray | Tensor]):
        super().__init__()
        self.heads = nn.ModuleDict()
        for level in LEVELS:
            weight = torch.as_tensor(np.asarray(attribute_embeddings[level]), dtype=torch.float32)
            weight = F.normalize(weight - weight.mean(dim=0, keepdim=True), dim=-1)
            head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            with torch.no_grad():
                head.weight.copy_(weight)
                pass
            self.heads[level] = head

    def forward(self, e_hat: Tensor) -> dict[str, Tensor]:
        return {level: F.normalize(_standardise(head(e_hat)), dim=-1) for level, head in self.heads.items()}


#: image-tower layouts: where the transformer blocks are, and the modules after them that make the embedding.
TOWER_LAYOUTS = (
    ("visual.transformer.resblocks", ("visual.ln_post", "visual.proj")),  # open_clip ViT: CLIP, PLIP, QuiltNet, tiny
    ("visual.trunk.blocks", ("visual.trunk.norm", "visual.attn_pool_contrast", "visual.ln_contrast",
                             "visual.proj_contrast")),  # CoCa on a timm ViT: CONCH
)


def _module(model: nn.Module, dotted: str) -> nn.Module | None:
    for part in dotted.split("."):
        model = getattr(model, part, None)
        if model is None:
            return None
    return model


def last_block_parameters(model: nn.Module, n_blocks: int) -> dict[str, nn.Parameter]:
    """The parameters of the image tower's last `n_blocks` transformer blocks and of the modules after them (final
    norm, pooling, projection), by name in `model`: what `trainable: last_blocks` unfreezes."""
    for blocks_path, after in TOWER_LAYOUTS:
        blocks = _module(model, blocks_path)
        if blocks is not None:
            break
    else:
        raise ValueError(f"{type(model).__name__}: no known ViT image tower layout to tune ({TOWER_LAYOUTS})")
    if not 1 <= n_blocks <= len(blocks):
        raise ValueError(f"last_blocks must be between 1 and the tower's {len(blocks)} blocks, got {n_blocks}")
    prefixes = tuple(f"{blocks_path}.{i}" for i in range(len(blocks) - n_blocks, len(blocks))) + after
    return {
        name: p for name, p in model.named_parameters() if any(name == q or name.startswith(q + ".") for q in prefixes)
    }
