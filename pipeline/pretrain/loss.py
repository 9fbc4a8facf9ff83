"""HLSS's objective: hierarchical supervised contrast (L_HVC) plus a differentiable level-wise text alignment (L_HA).

L_HVC is HiDisc's: at each level, a supervised contrastive loss whose positives are the other views of the same
patient, slide or patch. L_HA pulls each image embedding towards the attribute text nearest to it at each level:
the symmetric KL divergence between the embedding and that text embedding, each read as a distribution over the
D dimensions (softmax at a temperature). HLSS's public code computes L_HA from detached values (`.item()`), so there
it trains nothing; here it is a tensor in the graph and trains the adapter (and tuned tower blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.pretrain import LEVELS


def supervised_contrastive(z: Tensor, groups: Tensor, temperature: float = 0.07) -> Tensor:
    r"""SupCon (Khosla et al.) over a batch: each anchor's mean log-probability of its positives.

    .. math:: \mathcal{L} = -\frac{1}{N}\sum_i \frac{1}{|P(i)|}\sum_{p \in P(i)}
        \log \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \neq i} \exp(z_i \cdot z_a / \tau)}

    Args:
        z: unit-norm embeddings (N, A).
        groups: (N,) group id of each row; rows sharing an id are positives. Every group needs two rows or more.
        temperature: tau (HiDisc and HLSS: 0.07).
    """
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    positives = (groups[:, None] == groups[None, :]) & ~eye
    if not bool(positives.any(dim=1).all()):
        raise ValueError("every group needs at least two rows (views) for a contrastive loss")
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    mean_positive = log_prob.masked_fill(~positives, 0.0).sum(dim=1) / positives.sum(dim=1)
    return -mean_positive.mean()


def text_alignment(e_hat: Tensor, attributes: Tensor, temperature: float) -> Tensor:
    """Symmetric KL between softmax(e / t) and softmax(a* / t) over the D dimensions, a* the attribute embedding
    nearest each unit-norm embedding e (cosine); mean over the batch.

    The choice of a* is discrete (no gradient through it, as in HLSS); the gradient flows through e.

    Args:
        e_hat: (N, D) unit-norm image embeddings.
        attributes: (A, D) unit-norm attribute text embeddings of one level.
        temperature: softmax temperature over dimensions (unit vectors have entries of order 1/sqrt(D)).
    """
    nearest = attributes[(e_hat.detach() @ attributes.T).argmax(dim=1)]
    log_p = F.log_softmax(e_hat / temperature, dim=-1)
    log_q = F.log_softmax(nearest / temperature, dim=-1)
    kl_pq = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    kl_qp = (log_q.exp() * (log_q - log_p)).sum(dim=-1)
    return (0.5 * (kl_pq + kl_qp)).mean()


@dataclass(frozen=True)
class HlssLoss:
    """L = sum_l SupCon_l + align_weight * sum_l L_HA_l, with the per-term values for the loss curve."""

    temperature: float = 0.07
    align_weight: float = 1.0
    align_temperature: float = 0.02

    def __call__(
        self,
        projections: dict[str, Tensor],
        e_hat: Tensor,
        groups: dict[str, Tensor],
        attributes: dict[str, Tensor],
    ) -> tuple[Tensor, dict[str, float]]:
        terms: dict[str, Tensor] = {}
        for level in LEVELS:
            terms[f"contrast_{level}"] = supervised_contrastive(projections[level], groups[level], self.temperature)
            terms[f"align_{level}"] = text_alignment(e_hat, attributes[level], self.align_temperature)
        contrast = sum(terms[f"contrast_{level}"] for level in LEVELS)
        align = sum(terms[f"align_{level}"] for level in LEVELS)
        total = contrast + self.align_weight * align
        return total, {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
