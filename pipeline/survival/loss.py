"""The discrete-hazard survival loss (as in MCAT / Patch-GCN / PORPOISE) and what follows from the per-bin logits.

A model outputs one logit per time bin k; h_k = sigmoid(logit_k) is the hazard, the probability of dying in bin k
having survived the bins before, and S_k = prod_{j<=k} (1 - h_j) is the probability of surviving past the end of
bin k. With S_{-1} = 1, a patient whose death was observed in bin y contributes -log S_{y-1} - log h_y (alive
through the bins before y, died in y), a patient censored in bin y contributes -log S_y (alive past bin y; the
censoring convention of MCAT's nll_loss). `alpha` weighs the uncensored term up:
loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)


def _per_patient(value: Tensor | int, batch: int, dtype: torch.dtype, device: torch.device, name: str) -> Tensor:
    """`value` (an int or a tensor of one per patient) as a [batch] tensor; one value for a batch of one."""
    out = torch.as_tensor(value, device=device).reshape(-1).to(dtype)
    if out.numel() != batch:
        raise ValueError(f"{name}: {out.numel()} value(s) for a batch of {batch}")
    return out


def nll_discrete_hazard(
    logits: Tensor, bin: Tensor | int, event: Tensor | int, alpha: float = 0.0, eps: float = 1e-7
) -> Tensor:
    """Mean negative log-likelihood of the discrete-hazard model over the batch.

    logits: [B, K] (or [K] for one patient) per-bin hazard logits; bin: the patient's time bin in [0, K); event:
    1 = death observed, 0 = censored. Probabilities are clamped to `eps` before the logs, so a saturated hazard
    gives a large but finite loss.
    """
    if logits.dim() == 1:
        logits = logits.unsqueeze(0)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, K] or [K], got shape {tuple(logits.shape)}")
    batch, n_bins = logits.shape
    y = _per_patient(bin, batch, torch.long, logits.device, "bin")
    observed = _per_patient(event, batch, logits.dtype, logits.device, "event")
    if bool(((y < 0) | (y >= n_bins)).any()):
        raise ValueError(f"bin must be in [0, {n_bins}), got {y.tolist()}")
    if bool(((observed != 0) & (observed != 1)).any()):
        raise ValueError(f"event must be 0 or 1, got {observed.tolist()}")
    censored = 1 - observed

    hazard = torch.sigmoid(logits)
    surv = torch.cumprod(1 - hazard, dim=1)
    surv_padded = torch.cat([torch.ones_like(surv[:, :1]), surv], dim=1)  # column j = S_{j-1}, S_{-1} = 1
    rows = y.unsqueeze(1)
    surv_before = surv_padded.gather(1, rows).squeeze(1).clamp(min=eps)  # S_{y-1}
    surv_through = surv_padded.gather(1, rows + 1).squeeze(1).clamp(min=eps)  # S_y
    hazard_at = hazard.gather(1, rows).squeeze(1).clamp(min=eps)  # h_y

    uncensored_loss = -(1 - censored) * (torch.log(surv_before) + torch.log(hazard_at))
    censored_loss = -censored * torch.log(surv_through)
    loss = (1 - alpha) * (censored_loss + uncensored_loss) + alpha * uncensored_loss
    return loss.mean()


def survival_function(logits: Tensor) -> Tensor:
    """S_k = prod_{j<=k} (1 - sigmoid(logit_j)) over the last dimension: the probability of surviving past bin k."""
    return torch.cumprod(1 - torch.sigmoid(logits), dim=-1)


def risk_from_survival(surv: ArrayOrTensor) -> ArrayOrTensor:
    """Risk score -sum_k S_k (minus the expected number of bins survived): higher means earlier death, the
    orientation the C-index expects."""
    return -surv.sum(-1)
