"""Reference rows for every result table: attention MIL on one scale, and zero-shot from the prompts alone.

Both take the same per-slide tensors as HiVE-MIL, so the training loop runs them unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.prompt_files import COARSE_PER_CLASS, FINE_PER_CLASS, TEXTS_PER_CLASS

SCALES = ("5x", "20x")


def topk_class_scores(images: Tensor, texts: Tensor, n_classes: int, k: int) -> Tensor:
    """Class scores `[C]`: per text, the mean of its k most similar patches; then the mean over a class's texts."""
    if images.size(0) == 0:
        return images.new_zeros(n_classes)
    similarity = images @ texts.T  # [N, C * m]
    top = similarity.topk(min(k, images.size(0)), dim=0).values.mean(dim=0)
    return top.view(n_classes, -1).mean(dim=1)


class ABMILOutput(NamedTuple):
    logits: Tensor  # [C]
    attention: Tensor  # [N] softmax weights over the bag's instances


def bag_of(x5: Tensor, x20: Tensor, mask: Tensor, scale: str) -> Tensor:
    """The instances of one scale: the 5x rows, or the masked-in 20x children flattened to `[M, D]`."""
    if scale == "5x":
        return x5
    if scale == "20x":
        return x20[mask.bool()]
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


class ABMIL(nn.Module):
    r"""Gated attention MIL (Ilse et al., 2018, https://arxiv.org/abs/1802.04712) on one scale's features.

    .. math::
        \mathbf{h}_n = \operatorname{ReLU}(\mathbf{W}_1 \mathbf{x}_n), \quad
        a_n = \operatorname{softmax}_n \big(\mathbf{w}^\top (\tanh(\mathbf{V}\mathbf{h}_n)
            \odot \sigma(\mathbf{U}\mathbf{h}_n))\big), \quad
        \text{logits} = \mathbf{W}_c \sum_n a_n \mathbf{h}_n

    Args:
        in_dim (int): Feature size D.
        n_classes (int): Number of classes.
        scale (str, optional): Which features to read, :obj:`"5x"` or :obj:`"20x"`. (default: :obj:`"5x"`)
        hidden (int, optional): Embedding size. (default: :obj:`256`)
        attention_dim (int, optional): Size of the gated attention branch. (default: :obj:`128`)
        dropout (float, optional): Dropout after the embedding. (default: :obj:`0.25`)

    Shapes:
        - **input:** x5 :math:`(N, D)`, x20 :math:`(N, 16, D)`, mask :math:`(N, 16)`
        - **output:** :class:`ABMILOutput` with logits :math:`(C,)` and attention :math:`(N,)` or :math:`(M,)`
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        scale: str = "5x",
        hidden: int = 256,
        attention_dim: int = 128,
        dropout: float = 0.25,
    ):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"'{type(self).__name__}': scale must be one of {SCALES}, got {scale!r}")
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.scale = scale
        self.hidden = hidden
        self.attention_dim = attention_dim
        self.dropout = dropout
        self.embed = nn.Linear(in_dim, hidden)
        self.attn_v = nn.Linear(hidden, attention_dim)
        self.attn_u = nn.Linear(hidden, attention_dim)
        self.attn_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden, n_classes)
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.embed, self.attn_v, self.attn_u, self.attn_w, self.classifier):
            lin.reset_parameters()

    def forward(self, x5: Tensor, x20: Tensor, mask: Tensor) -> ABMILOutput:
        bag = bag_of(x5, x20, mask, self.scale)
        if bag.size(0) == 0:
            raise ValueError(f"'{type(self).__name__}': the slide has no {self.scale} instances")
        h = self.drop(F.relu(self.embed(bag)))
        scores = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).squeeze(-1)
        attention = scores.softmax(dim=0)
        return ABMILOutput(self.classifier(attention @ h), attention)

    def loss(self, output: ABMILOutput, label: Tensor) -> Tensor:
        return F.cross_entropy(output.logits.unsqueeze(0), label.view(1))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.in_dim}, {self.n_classes}, scale={self.scale}, hidden={self.hidden}, "
            f"attention_dim={self.attention_dim}, dropout={self.dropout})"
        )


class ZeroShotOutput(NamedTuple):
    logits: Tensor  # [C]
    scores_5x: Tensor  # [C]
    scores_20x: Tensor  # [C]


class ZeroShotClassifier(nn.Module):
    r"""Zero-shot slide classification from the class descriptions alone (no training).

    The frozen text features of each class's descriptions score the frozen patch features with the same top-k
    rule as HiVE-MIL, without graph, filtering or learned context:

    .. math::
        \text{logits}_c = s\,\big(\operatorname{topk}_{k_5}(\hat{\mathbf{X}}^{5x}, \hat{\mathbf{T}}^{5x}_c)
            + \operatorname{topk}_{k_{20}}(\hat{\mathbf{X}}^{20x}, \hat{\mathbf{T}}^{20x}_c)\big)

    with unit-length rows :math:`\hat{\cdot}`.

    Args:
        texts (Tensor): Frozen text features :math:`(16C, D)` in prompt-file order.
        n_classes (int): Number of classes C.
        scale (float): Multiplier of the scores (the backbone's logit scale, see `score_scale`).
        top_k_5x (int, optional): Patches per coarse text. (default: :obj:`2`)
        top_k_20x (int, optional): Patches per fine text. (default: :obj:`100`)

    Shapes:
        - **input:** x5 :math:`(N, D)`, x20 :math:`(N, 16, D)`, mask :math:`(N, 16)`
        - **output:** :class:`ZeroShotOutput` with logits :math:`(C,)`
    """

    def __init__(self, texts: Tensor, n_classes: int, scale: float, top_k_5x: int = 2, top_k_20x: int = 100):
        super().__init__()
        if texts.size(0) != n_classes * TEXTS_PER_CLASS:
            raise ValueError(
                f"'{type(self).__name__}': {texts.size(0)} texts for {n_classes} classes; "
                f"expected {TEXTS_PER_CLASS} per class"
            )
        self.n_classes = n_classes
        self.scale = float(scale)
        self.top_k_5x = top_k_5x
        self.top_k_20x = top_k_20x
        per_class = F.normalize(texts.detach(), dim=-1).view(n_classes, TEXTS_PER_CLASS, -1)
        self.register_buffer("t5", per_class[:, :COARSE_PER_CLASS].reshape(n_classes * COARSE_PER_CLASS, -1))
        self.register_buffer("t20", per_class[:, COARSE_PER_CLASS:].reshape(n_classes * FINE_PER_CLASS, -1))

    def reset_parameters(self) -> None:
        """Nothing to reset: the classifier has no parameters."""

    def forward(self, x5: Tensor, x20: Tensor, mask: Tensor) -> ZeroShotOutput:
        s5 = topk_class_scores(F.normalize(x5, dim=-1), self.t5, self.n_classes, self.top_k_5x)
        children = F.normalize(x20[mask.bool()], dim=-1)
        s20 = topk_class_scores(children, self.t20, self.n_classes, self.top_k_20x)
        return ZeroShotOutput((s5 + s20) * self.scale, s5, s20)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_classes={self.n_classes}, scale={self.scale:.4g}, "
            f"top_k_5x={self.top_k_5x}, top_k_20x={self.top_k_20x})"
        )
