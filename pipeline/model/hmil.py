"""HMIL (Jin et al., IEEE TMI 2025): coarse and fine slide classes from one bag, with class-wise attention.

Architecture and losses from the paper and its public code (github.com/ChengJin-git/HMIL):
per-level instance projections (h_c = MLP(x), h_f = Linear(h_c)), class-wise gated attention per level (one
attention row per class, softmax over the instances), class-row bag embeddings scored by a head shared by the
rows, and four couplings between the levels: the bag alignment loss, the attention-matching loss, a supervised
contrastive loss on the fine bag embeddings with a cosine temperature schedule, and the curriculum weight alpha.

Where the public code departs from the paper we follow the paper: the gated attention is built with its actual
arguments (the code's constructor call raises a TypeError), the attention-matching loss is added to the total (the
code computes and only logs it), the alignment loss is a negative log-likelihood of the summed fine probabilities
(the code feeds probabilities to a cross-entropy that expects logits), and the contrastive loss is not divided by
the batch size a second time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClassGatedAttention(nn.Module):
    """Gated attention (Ilse et al. 2018) with one output row per class: `A = softmax_N(w(tanh(Vh) * sigmoid(Uh)))`."""

    def __init__(self, dim: int, hidden: int, n_classes: int):
        super().__init__()
        self.tanh_branch = nn.Linear(dim, hidden)
        self.gate_branch = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, n_classes)

    def forward(self, h: Tensor) -> Tensor:
        """Instances `[N, D]` -> attention `[C, N]`, each row summing to 1 over the instances."""
        gated = torch.tanh(self.tanh_branch(h)) * torch.sigmoid(self.gate_branch(h))
        return self.score(gated).transpose(0, 1).softmax(dim=-1)


@dataclass
class HMILOutput:
    coarse_logits: Tensor  # [C_c]
    fine_logits: Tensor  # [C_f]
    coarse_attention: Tensor  # [C_c, N]
    fine_attention: Tensor  # [C_f, N]
    fine_bags: Tensor  # [C_f, H] one bag embedding per fine class row


class HMIL(nn.Module):
    """Coarse level on `h_c = MLP(x)` (size D), fine level on `h_f = Linear(h_c)` (size `hidden`)."""

    def __init__(self, dim: int, n_coarse: int, n_fine: int, hidden: int = 256, fine_attention_hidden: int = 64):
        super().__init__()
        self.coarse_projection = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.fine_projection = nn.Linear(dim, hidden)
        self.coarse_attention = ClassGatedAttention(dim, hidden, n_coarse)
        self.fine_attention = ClassGatedAttention(hidden, fine_attention_hidden, n_fine)
        self.coarse_head = nn.Linear(dim, 1)  # shared by the class rows: classes differ by where they attend
        self.fine_head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> HMILOutput:
        h_c = self.coarse_projection(x)
        h_f = self.fine_projection(h_c)
        a_c, a_f = self.coarse_attention(h_c), self.fine_attention(h_f)
        bags_c, bags_f = a_c @ h_c, a_f @ h_f
        return HMILOutput(self.coarse_head(bags_c).squeeze(-1), self.fine_head(bags_f).squeeze(-1), a_c, a_f, bags_f)


def curriculum_alpha(epoch: int, epochs: int) -> float:
    """alpha = 1 - (e/E)^2: the coarse loss weighs fully at the start and fades out by the last epoch."""
    return 1.0 - (epoch / epochs) ** 2


def supcon_temperature(epoch: int, epochs: int, low: float = 0.1, high: float = 1.0) -> float:
    """tau_e = low + (high - low) (1 + cos(2 pi e / E)) / 2: from `high` down to `low` at E/2 and back."""
    return low + (high - low) * (1.0 + math.cos(2.0 * math.pi * epoch / epochs)) / 2.0


def coarse_log_probabilities(fine_logits: Tensor, parent: Sequence[int], n_coarse: int) -> Tensor:
    """log of the fine probabilities summed per coarse class, `[B, C_f] -> [B, C_c]` (stable via logsumexp)."""
    log_p = fine_logits.log_softmax(dim=-1)
    index = torch.as_tensor(parent, device=fine_logits.device)
    return torch.stack([torch.logsumexp(log_p[:, index == k], dim=-1) for k in range(n_coarse)], dim=-1)


def bag_alignment_loss(fine_logits: Tensor, coarse_targets: Tensor, parent: Sequence[int], n_coarse: int) -> Tensor:
    """Negative log-likelihood of the coarse label under the fine prediction's summed probabilities."""
    return F.nll_loss(coarse_log_probabilities(fine_logits, parent, n_coarse), coarse_targets)


def attention_matching_loss(coarse_attention: Tensor, fine_attention: Tensor, parent: Sequence[int]) -> Tensor:
    """mean_k (1 - cos(A_c[k], sum of A_f[j] over the fine children j of k)): both levels look at the same places."""
    index = torch.as_tensor(parent, device=fine_attention.device)
    children = torch.stack([fine_attention[index == k].sum(0) for k in range(coarse_attention.shape[0])])
    return (1.0 - F.cosine_similarity(coarse_attention, children, dim=-1)).mean()


def supervised_contrastive_loss(features: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """SupCon (Khosla et al. 2020) over `features [B, V, D]` (V views per sample, L2-normalised here).

    Every view is an anchor; its positives are the other views of its sample and all views of samples with the
    same label. An anchor without positives (one view of a singleton class) is left out; the loss stays finite.
    """
    b, v, _ = features.shape
    flat = F.normalize(features, dim=-1).reshape(b * v, -1)
    owner = labels.repeat_interleave(v)
    logits = flat @ flat.T / temperature
    self_mask = torch.eye(b * v, dtype=torch.bool, device=flat.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (owner[:, None] == owner[None, :]) & ~self_mask
    n_pos = positive.sum(1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return features.new_zeros(())
    mean_log_prob_pos = log_prob.masked_fill(~positive, 0.0).sum(1)[has_pos] / n_pos[has_pos]
    return -mean_log_prob_pos.mean()
