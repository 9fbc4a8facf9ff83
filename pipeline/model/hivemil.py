"""HiVE-MIL: text-guided filtering, the hierarchical graph, slide logits and the hierarchical text loss.

Tensors in, tensors out (HIVEMIL.md). One slide per call: 5x features `[N, D]`, their 20x children
`[N, 16, D]` with a mask `[N, 16]`, and the text features of every class (4 coarse + 12 fine per class, in parent
order). The text side comes from a `PromptLearner` once per step, or is passed in precomputed (evaluation).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.baselines import topk_class_scores  # noqa: F401  (re-exported: the slide logits)
from pipeline.model.configs import HiveMILConfig  # noqa: F401  (re-exported: the model's hyperparameters)
from pipeline.model.graph import (
    HIER_RELATIONS,
    IMG5,
    IMG20,
    INTRA_RELATIONS,
    TXT5,
    TXT20,
    EdgeType,
    HierarchicalHeteroGNN,
    NodeType,
)
from pipeline.model.options import FILTER_STD_MODES, LOGIT_SCALE_MODES
from pipeline.prompt_files import COARSE_PER_CLASS, FINE_PER_CLASS, FINE_PER_COARSE, TEXTS_PER_CLASS


def score_scale(logit_scale: float, mode: str = "exp") -> float:
    """Multiplier of the class scores from a backbone's logit scale exp(theta): itself, or theta ("raw")."""
    if logit_scale <= 0:
        raise ValueError(f"logit scale must be > 0 (it is exp(theta)), got {logit_scale}")
    if mode not in LOGIT_SCALE_MODES:
        raise ValueError(f"logit_scale mode must be one of {LOGIT_SCALE_MODES}, got {mode!r}")
    return float(logit_scale) if mode == "exp" else math.log(logit_scale)


# --- text-guided dynamic filtering ----------------------------------------------------------------------------


def tgdf_keep(similarity: Tensor, alpha: float = 0.5, std: str = "population") -> Tensor:
    """Boolean `[N, T]`: entries at or above their column's mean + alpha * std after min-max normalisation.

    Each text's column is rescaled to [0, 1] over the patches, then thresholded by its own mean and standard
    deviation (population, or `std="sample"` as the reference code's `torch.std`), so every text keeps the patches
    that stand out for it, whatever its absolute similarity level. A constant column normalises to zeros and keeps
    everything (the reference code keeps nothing of it: a kept zero is no edge there).
    """
    if similarity.dim() != 2:
        raise ValueError(f"tgdf_keep expects a [patches, texts] matrix, got shape {tuple(similarity.shape)}")
    if similarity.size(0) == 0:
        return torch.zeros_like(similarity, dtype=torch.bool)
    low = similarity.min(dim=0, keepdim=True).values
    high = similarity.max(dim=0, keepdim=True).values
    norm = (similarity - low) / (high - low).clamp_min(1e-12)
    correction = FILTER_STD_MODES.index(std)  # population: 0, sample: 1
    if similarity.size(0) > correction:
        spread = norm.std(dim=0, correction=correction, keepdim=True)
    else:  # one patch: no spread (the reference code's sample std is NaN there and keeps nothing)
        spread = torch.zeros_like(low)
    threshold = norm.mean(dim=0, keepdim=True) + alpha * spread
    return norm >= threshold


class SlideGraph(NamedTuple):
    """The graph of one slide. `child_parent`/`child_slot` locate each 20x node in the `[N, 16]` input."""

    x_dict: dict[NodeType, Tensor]
    edge_index_dict: dict[EdgeType, Tensor]
    matched_5x: Tensor  # [N] bool: 5x patches with at least one kept text
    child_parent: Tensor  # [M] row of each 20x node's parent in x5
    child_slot: Tensor  # [M] slot (0-15) of each 20x node


def fine_to_coarse(n_classes: int) -> Tensor:
    """Index of each fine text's coarse parent: fine j of class c -> coarse 4c + j // 3."""
    fine = torch.arange(n_classes * FINE_PER_CLASS)
    cls, j = fine // FINE_PER_CLASS, fine % FINE_PER_CLASS
    return cls * COARSE_PER_CLASS + j // FINE_PER_COARSE


def build_slide_graph(
    x5: Tensor,
    x20: Tensor,
    mask: Tensor,
    t5: Tensor,
    t20: Tensor,
    filtering: bool,
    alpha: float = 0.5,
    normalize: bool = True,
    keep_padded: bool = False,
    std: str = "population",
) -> SlideGraph:
    """Nodes and edges of one slide: TGDF (or all pairs when `filtering` is off) plus parent-child links.

    Inputs are L2-normalised here (`normalize`) so that the filtering similarities are cosines and image and text
    nodes start on the same scale; the reference code filters and builds its graph on the raw features. With
    filtering on, only the masked-in children of matched 5x patches become 20x nodes; `keep_padded` (the reference
    code) makes all 16 slots of those parents nodes, the missing children as zero vectors.
    """
    n5, slots, dim = x20.shape
    if x5.shape != (n5, dim) or mask.shape != (n5, slots):
        raise ValueError(
            f"shape mismatch: x5 {tuple(x5.shape)}, x20 {tuple(x20.shape)}, mask {tuple(mask.shape)}; "
            "expected [N, D], [N, 16, D], [N, 16]"
        )
    n_classes = t5.size(0) // COARSE_PER_CLASS
    if t5.size(0) != n_classes * COARSE_PER_CLASS or t20.size(0) != n_classes * FINE_PER_CLASS:
        raise ValueError(
            f"text features: {t5.size(0)} coarse and {t20.size(0)} fine; expected 4 and 12 per class"
        )
    device = x5.device
    mask = mask.to(device=device, dtype=torch.bool)
    if normalize:
        x5, t5, t20 = F.normalize(x5, dim=-1), F.normalize(t5, dim=-1), F.normalize(t20, dim=-1)
    with torch.no_grad():
        if filtering:
            keep5 = tgdf_keep(x5 @ t5.T, alpha, std)
        else:
            keep5 = torch.ones(n5, t5.size(0), dtype=torch.bool, device=device)
    matched = keep5.any(dim=1)
    slots = torch.ones_like(mask) if keep_padded else mask
    child_parent, child_slot = (slots & matched.unsqueeze(1)).nonzero(as_tuple=True)
    x20_nodes = x20[child_parent, child_slot]
    if keep_padded:  # a missing child is a zero vector, whatever its row holds
        x20_nodes = x20_nodes * mask[child_parent, child_slot].unsqueeze(1).to(x20_nodes.dtype)
    if normalize:
        x20_nodes = F.normalize(x20_nodes, dim=-1)
    with torch.no_grad():
        if filtering:
            keep20 = tgdf_keep(x20_nodes @ t20.T, alpha, std)
        else:
            keep20 = torch.ones(x20_nodes.size(0), t20.size(0), dtype=torch.bool, device=device)
    img5_txt5 = keep5.nonzero().T  # rows: image, text
    img20_txt20 = keep20.nonzero().T
    child = torch.arange(x20_nodes.size(0), device=device)
    txt_child = torch.arange(t20.size(0), device=device)
    txt_parent = fine_to_coarse(n_classes).to(device)
    edges: dict[EdgeType, Tensor] = {
        INTRA_RELATIONS[0]: img5_txt5,
        INTRA_RELATIONS[1]: img5_txt5.flip(0),
        INTRA_RELATIONS[2]: img20_txt20,
        INTRA_RELATIONS[3]: img20_txt20.flip(0),
        HIER_RELATIONS[0]: torch.stack([child, child_parent]),
        HIER_RELATIONS[1]: torch.stack([child_parent, child]),
        HIER_RELATIONS[2]: torch.stack([txt_child, txt_parent]),
        HIER_RELATIONS[3]: torch.stack([txt_parent, txt_child]),
    }
    x_dict = {IMG5: x5, TXT5: t5, IMG20: x20_nodes, TXT20: t20}
    return SlideGraph(x_dict, edges, matched, child_parent, child_slot)


# --- slide logits and the hierarchical text contrastive loss ------------------------------------------------------


def htcl_loss(t5: Tensor, t20: Tensor, n_classes: int, negatives: bool = True) -> Tensor:
    r"""Hierarchical text contrastive loss.

    For coarse text :math:`i` with anchor :math:`\mathbf{a}_i` = mean of its three fine texts:
    :math:`\mathcal{L} = \frac{1}{4C}\sum_i -\log\sigma(\cos(\mathbf{a}_i, \mathbf{t}^{5x}_i) - n_i)`, where
    :math:`n_i` is the mean cosine of :math:`\mathbf{a}_i` to the anchors of the other classes (0 when
    `negatives` is off, as in the reference code, or when there is only one class).
    """
    anchors = F.normalize(t20.view(n_classes * COARSE_PER_CLASS, FINE_PER_COARSE, -1).mean(dim=1), dim=-1)
    positive = (anchors * F.normalize(t5, dim=-1)).sum(dim=-1)
    negative = torch.zeros_like(positive)
    if negatives and n_classes > 1:
        cls = torch.arange(n_classes, device=t5.device).repeat_interleave(COARSE_PER_CLASS)
        other = (cls.unsqueeze(0) != cls.unsqueeze(1)).to(anchors.dtype)
        negative = ((anchors @ anchors.T) * other).sum(dim=1) / other.sum(dim=1)
    return -F.logsigmoid(positive - negative).mean()


class HiveMILOutput(NamedTuple):
    """What one forward pass yields; `graph`/`nodes` feed the interpretability tables."""

    logits: Tensor  # [C]
    htcl: Tensor  # scalar
    scores_5x: Tensor  # [C] unscaled 5x class scores
    scores_20x: Tensor  # [C] unscaled 20x class scores
    graph: SlideGraph
    nodes: dict[NodeType, Tensor]  # graph outputs, unit rows


class HiveMIL(nn.Module):
    r"""HiVE-MIL slide classifier on frozen patch features and (prompt-learned) text features.

    .. math::
        \mathbf{Z} = \operatorname{GNN}(\operatorname{TGDF}(\mathbf{X}^{5x}, \mathbf{X}^{20x}, \mathbf{T})), \quad
        \text{logits}_c = s\,\big(\operatorname{topk}_{k_5}(\mathbf{Z}^{5x}, \mathbf{T}^{5x}_c)
            + \operatorname{topk}_{k_{20}}(\mathbf{Z}^{20x}, \mathbf{T}^{20x}_c)\big), \quad
        \mathcal{L} = \operatorname{CE} + \lambda\,\mathcal{L}_{HTCL}

    where :math:`s` is the backbone's logit scale: :math:`e^{\theta}` with `logit_scale="exp"` (the paper), the
    raw temperature parameter :math:`\theta` with `"raw"` (the reference code, about 4.6 for trained CLIP models).

    Args:
        embed_dim (int): Feature size D of images and texts (graph width).
        n_classes (int): Number of classes C.
        logit_scale (float): The backbone's logit scale :math:`e^{\theta}` (about 100 for trained CLIP models),
            as `Backbone.logit_scale` reports it.
        config (HiveMILConfig, optional): Hyperparameters and switches.
        text_encoder (nn.Module, optional): A module whose call returns the text features `[C * 16, D]` in the
            prompt file's order (a :class:`~pipeline.model.prompt_learner.PromptLearner`); without it, `forward` needs
            `texts`.

    Shapes:
        - **input:** x5 :math:`(N, D)`, x20 :math:`(N, 16, D)`, mask :math:`(N, 16)`, optional texts
          :math:`(16C, D)`
        - **output:** :class:`HiveMILOutput` with logits :math:`(C,)`
    """

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        logit_scale: float,
        config: HiveMILConfig | None = None,
        text_encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.n_classes = n_classes
        self.config = config or HiveMILConfig()
        self.logit_scale_value = float(logit_scale)
        self.text_encoder = text_encoder
        self.gnn = HierarchicalHeteroGNN(
            embed_dim, self.config.num_layers, self.config.heads, self.config.hier_attention, self.config.hier_block
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.gnn.reset_parameters()
        if self.text_encoder is not None and hasattr(self.text_encoder, "reset_parameters"):
            self.text_encoder.reset_parameters()

    @property
    def scale(self) -> float:
        """Multiplier of the class scores: exp(theta) (paper) or theta itself (reference code)."""
        return score_scale(self.logit_scale_value, self.config.logit_scale)

    def encode_texts(self) -> Tensor:
        """Text features `[16C, D]`; call once per step and pass to `forward` to share across scales."""
        if self.text_encoder is None:
            raise ValueError("HiveMIL has no text encoder: pass `texts` to forward()")
        return self.text_encoder()

    def split_texts(self, texts: Tensor) -> tuple[Tensor, Tensor]:
        """Coarse `[4C, D]` and fine `[12C, D]` texts from the prompt-file order (4 coarse then 12 fine per class)."""
        per_class = texts.view(self.n_classes, TEXTS_PER_CLASS, -1)
        t5 = per_class[:, :COARSE_PER_CLASS].reshape(-1, texts.size(-1))
        t20 = per_class[:, COARSE_PER_CLASS:].reshape(-1, texts.size(-1))
        return t5, t20

    def forward(self, x5: Tensor, x20: Tensor, mask: Tensor, texts: Tensor | None = None) -> HiveMILOutput:
        if texts is None:
            texts = self.encode_texts()
        if texts.shape != (self.n_classes * TEXTS_PER_CLASS, self.embed_dim):
            raise ValueError(
                f"texts must be [{self.n_classes * TEXTS_PER_CLASS}, {self.embed_dim}], got {tuple(texts.shape)}"
            )
        t5, t20 = self.split_texts(texts)
        filtering = self.training or self.config.filter_at_eval
        c = self.config
        graph = build_slide_graph(x5, x20, mask, t5, t20, filtering, c.alpha, c.normalize_inputs,
                                  c.keep_padded_children, c.filter_std)
        nodes = self.gnn(graph.x_dict, graph.edge_index_dict)
        s5 = topk_class_scores(nodes[IMG5], nodes[TXT5], self.n_classes, self.config.top_k_5x)
        s20 = topk_class_scores(nodes[IMG20], nodes[TXT20], self.n_classes, self.config.top_k_20x)
        logits = (s5 + s20) * self.scale
        htcl = htcl_loss(nodes[TXT5], nodes[TXT20], self.n_classes, self.config.htcl_negatives)
        return HiveMILOutput(logits, htcl, s5, s20, graph, nodes)

    def loss(self, output: HiveMILOutput, label: Tensor) -> Tensor:
        """Cross-entropy on the slide logits plus lambda * HTCL."""
        ce = F.cross_entropy(output.logits.unsqueeze(0), label.view(1))
        return ce + self.config.htcl_weight * output.htcl

    def __repr__(self) -> str:
        c = self.config
        default = HiveMILConfig()
        more = "".join(f", {k}={getattr(c, k)}" for k in ("hier_block", "normalize_inputs", "keep_padded_children",
                                                            "filter_std") if getattr(c, k) != getattr(default, k))
        return (
            f"{type(self).__name__}({self.embed_dim}, n_classes={self.n_classes}, "
            f"hier_attention={c.hier_attention}, htcl_negatives={c.htcl_negatives}, "
            f"logit_scale={c.logit_scale}, filter_at_eval={c.filter_at_eval}{more})"
        )
