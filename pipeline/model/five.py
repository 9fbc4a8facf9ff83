"""FiVE: slide embeddings trained against fine-grained report descriptions through task-specific query prompts.

"Generalizable Whole Slide Image Classification with Fine-Grained Visual-Semantic Interaction" (CVPR 2024,
arXiv 2402.19326; public code ls1rius/WSI_FiVE). Tensors in, tensors out: the method
(pipeline.training.methods.five) feeds a slide's instances and its texts.

Following the paper and its code:

- TFS (task-specific fine-grained semantics): the queries are the task's question prompts plus a set of learnable
  prompts, all encoded by the text tower and L2-normalised;
- a cross-attention branch: the queries attend over the slide's instances (padding masked), an MLP follows with no
  residual, and the mean over the queries is p;
- a self-attention branch: the instances plus a sinusoidal encoding of their index ratio (index / instance count)
  go through one residual multi-head block, the input is added back, and the mean over the valid instances is g;
- the slide embedding s = Linear([p; g]) (2D -> D); logits are a fixed scale (300) times the cosine of s with each
  text (report descriptions in training, class descriptions at test);
- instance sampling: segment sampling of n = min(floor(M p), T) instances in training, a deterministic choice at
  evaluation;
- label augmentation: a random number k in [0, Q-1] of the Q fields is dropped (with their query prompts), fields
  answered "Unknown" go, the remaining fields of each description are shuffled and equal descriptions merged.

Ours: the text tower is the backbone's own, frozen (FiVE fine-tunes Bio_ClinicalBERT with LoRA): descriptions get a
shared learnable context (pipeline.model.prompt_learner.ContextTextEncoder) and each learnable query prompt its own;
the question prompts are encoded once, frozen. Padding is masked in the self-attention branch too (the reference
lets padding take part there); the index-ratio sinusoid has the standard per-pair frequencies (the reference's
exponent grows with every dimension); segments cover all M instances (the reference leaves the remainder of M / n
out); evaluation reads every instance by default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: FiVE's logit scale: a fixed 300 times the cosine (FiVE.py; its learnable CLIP temperature is unused)
LOGIT_SCALE = 300.0
EVAL_MODES = ("all", "spaced")


@dataclass
class FiVEConfig:
    """Hyperparameters of :class:`FiVE`.

    Attributes:
        heads: Attention heads of both branches; must divide the feature size D (reference: D // 64). (default: 8)
        logit_scale: Fixed multiplier of the cosines. (default: 300)
        mlp_ratio: Hidden size of the branches' MLPs, in multiples of D. (default: 4)
    """

    heads: int = 8
    logit_scale: float = LOGIT_SCALE
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if self.heads < 1 or self.mlp_ratio < 1:
            raise ValueError(f"heads and mlp_ratio must be >= 1, got {self.heads}, {self.mlp_ratio}")
        if self.logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {self.logit_scale}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- instances ----------------------------------------------------------------------------------------------------


def sample_count(m: int, ratio: float, cap: int) -> int:
    """n = min(floor(M ratio), cap), at least 1 (for M >= 1)."""
    if m < 1:
        return 0
    return max(1, min(int(m * ratio), cap, m))


def segment_sample(m: int, ratio: float, cap: int, generator: torch.Generator | None = None) -> Tensor:
    """Training instances: M split into n equal segments (n = `sample_count`), one instance drawn in each; sorted."""
    n = sample_count(m, ratio, cap)
    if n == m:
        return torch.arange(m)
    bounds = (torch.arange(n + 1, dtype=torch.float64) * m / n).floor().long()
    width = bounds[1:] - bounds[:-1]
    return bounds[:-1] + (torch.rand(n, generator=generator, dtype=torch.float64) * width).floor().long()


def evaluation_instances(m: int, mode: str, ratio: float, cap: int) -> Tensor:
    """Deterministic instances at evaluation: every one ("all"), or n evenly spaced ones, the centres of the
    training segments ("spaced", the reference's choice)."""
    if mode not in EVAL_MODES:
        raise ValueError(f"evaluation instances must be one of {EVAL_MODES}, got {mode!r}")
    if mode == "all":
        return torch.arange(m)
    n = sample_count(m, ratio, cap)
    return ((torch.arange(n, dtype=torch.float64) + 0.5) * m / n).floor().long()


def index_encoding(ratio: Tensor, dim: int) -> Tensor:
    """Sinusoidal encoding `[M, D]` of each instance's index ratio (index / instance count, in [0, 1))."""
    half = torch.arange(0, dim, 2, dtype=torch.float32, device=ratio.device)
    angle = ratio.float().unsqueeze(-1) / (10000.0 ** (half / dim))
    out = torch.zeros(*ratio.shape, dim, device=ratio.device)
    out[..., 0::2] = torch.sin(angle)
    out[..., 1::2] = torch.cos(angle[..., : dim // 2])
    return out


# --- label augmentation -------------------------------------------------------------------------------------------


def drop_fields(n_fields: int, generator: torch.Generator | None = None) -> list[int]:
    """The fields kept this step: k ~ U{0, ..., Q-1} of the Q fields dropped at random, so at least one stays."""
    if n_fields < 1:
        raise ValueError(f"drop_fields needs at least one field, got {n_fields}")
    k = int(torch.randint(0, n_fields, (1,), generator=generator))
    dropped = set(torch.randperm(n_fields, generator=generator)[:k].tolist())
    return [i for i in range(n_fields) if i not in dropped]


class AugmentedTargets(NamedTuple):
    texts: list[str]  # the step's unique descriptions
    targets: list[int | None]  # per description given: its index in `texts`, None when nothing of it is left


def augment_descriptions(
    parts: Sequence[Sequence[str]], generator: torch.Generator | None = None
) -> AugmentedTargets:
    """Each description's remaining phrases (kept fields that are not "Unknown", in field order) merged with equal
    ones, each unique description's phrases shuffled and joined by "; "; an empty description has no target."""
    from pipeline.descriptions.questions import SEPARATOR

    keys = [tuple(p) for p in parts]
    unique = list(dict.fromkeys(k for k in keys if k))
    texts = []
    for key in unique:
        order = torch.randperm(len(key), generator=generator).tolist()
        texts.append(SEPARATOR.join(key[i] for i in order))
    index = {k: i for i, k in enumerate(unique)}
    return AugmentedTargets(texts, [index[k] if k else None for k in keys])


# --- the model ----------------------------------------------------------------------------------------------------


def _mlp(dim: int, ratio: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim * ratio), nn.GELU(), nn.Linear(dim * ratio, dim))


class SelfAttentionBranch(nn.Module):
    r"""The instances among themselves: one residual pre-norm attention block on the position-encoded instances,
    the input added back, the mean over the valid instances.

    .. math::
        \mathbf{h} = \mathbf{x} + \mathbf{e}, \quad \mathbf{h} \leftarrow \mathbf{h} + \operatorname{MHA}(\operatorname{LN}(\mathbf{h})),
        \quad \mathbf{h} \leftarrow \mathbf{h} + \operatorname{MLP}(\operatorname{LN}(\mathbf{h})), \quad
        \mathbf{g} = \operatorname{mean}_{i \in \text{valid}}(\mathbf{h}_i + \mathbf{x}_i)

    Shapes:
        - **input:** x :math:`(B, M, D)`, encoding :math:`(B, M, D)`, valid :math:`(B, M)` bool
        - **output:** g :math:`(B, D)`
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, encoding: Tensor, valid: Tensor) -> Tensor:
        h = x + encoding
        n = self.norm_attn(h)
        h = h + self.attn(n, n, n, key_padding_mask=~valid, need_weights=False)[0]
        h = h + self.mlp(self.norm_mlp(h))
        out = (h + x) * valid.unsqueeze(-1)
        return out.sum(1) / valid.sum(1, keepdim=True).clamp_min(1)


class CrossAttentionBranch(nn.Module):
    r"""TFS: the query prompts attend over the valid instances; an MLP follows with no residual (the reference's),
    and the queries are averaged.

    .. math::
        \mathbf{a} = \operatorname{softmax}\big(\operatorname{LN}_q(\mathbf{Q}) \operatorname{LN}(\mathbf{x} +
            \mathbf{e})^\top / \sqrt{d}\big), \quad
        \mathbf{p} = \operatorname{mean}_l \operatorname{MLP}(\operatorname{LN}(\mathbf{a} \mathbf{V}))_l

    Shapes:
        - **input:** x :math:`(B, M, D)`, encoding :math:`(B, M, D)`, valid :math:`(B, M)`, queries :math:`(L, D)`
        - **output:** p :math:`(B, D)`, the attention :math:`(B, L, M)` (mean over heads; 0 on padding) and each
          query's output :math:`(B, L, D)` (p is their mean)
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm_query = nn.LayerNorm(dim)
        self.norm_key = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, encoding: Tensor, valid: Tensor, queries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = self.norm_key(x + encoding)
        q = self.norm_query(queries.to(x.dtype)).unsqueeze(0).expand(x.size(0), -1, -1)
        out, weights = self.attn(q, k, k, key_padding_mask=~valid, need_weights=True, average_attn_weights=True)
        per_query = self.mlp(self.norm_mlp(out))
        return per_query.mean(1), weights, per_query


class FiVEOutput(NamedTuple):
    slide: Tensor  # [D] the slide embedding s ([B, D] for a batch)
    attention: Tensor  # [L, M] each query's attention over the instances ([B, L, M])
    query_outputs: Tensor  # [L, D] each query's cross-attention output, whose mean is p ([B, L, D])


class FiVE(nn.Module):
    r"""The slide side of FiVE: both branches and their fusion, and the fixed-scale cosine logits.

    .. math::
        \mathbf{s} = \mathbf{W}[\mathbf{p}; \mathbf{g}] + \mathbf{b}, \qquad
        \text{logit}_j = 300 \cos(\mathbf{s}, \mathbf{t}_j)

    One slide's instances `[M, D]`, or a batch of slides padded to one length `[B, M, D]` with `valid` marking
    the real instances (padding changes nothing). The text side is held, not used, here: `queries` (a module
    returning the query prompts `[L, D]` for the kept fields) and `descriptions` (a module encoding a list of
    texts), so one state dict holds every trained weight.

    Args:
        dim (int): Feature size D of the instances and the texts.
        config (FiVEConfig): Hyperparameters.
        queries (nn.Module, optional): `queries(kept_fields) -> [L, D]`.
        descriptions (nn.Module, optional): `descriptions(texts) -> [T, D]`.

    Shapes:
        - **input:** x :math:`([B,] M, D)`, ratio :math:`([B,] M)` index ratios, valid :math:`([B,] M)` bool,
          queries :math:`(L, D)`
        - **output:** :class:`FiVEOutput` with the slide embedding :math:`([B,] D)` and attention :math:`([B,] L, M)`
    """

    def __init__(self, dim: int, config: FiVEConfig | None = None, queries: nn.Module | None = None,
                 descriptions: nn.Module | None = None):
        super().__init__()
        self.dim = dim
        self.config = config or FiVEConfig()
        if dim % self.config.heads:
            raise ValueError(f"'{type(self).__name__}': heads ({self.config.heads}) must divide the feature size {dim}")
        self.self_branch = SelfAttentionBranch(dim, self.config.heads, self.config.mlp_ratio)
        self.cross_branch = CrossAttentionBranch(dim, self.config.heads, self.config.mlp_ratio)
        self.fuse = nn.Linear(2 * dim, dim)
        self.queries = queries
        self.descriptions = descriptions

    def forward(self, x: Tensor, ratio: Tensor, valid: Tensor, queries: Tensor) -> FiVEOutput:
        single = x.dim() == 2
        if single:
            x, ratio, valid = x.unsqueeze(0), ratio.unsqueeze(0), valid.unsqueeze(0)
        if x.dim() != 3 or x.size(-1) != self.dim:
            raise ValueError(f"'{type(self).__name__}': instances must be [M, {self.dim}] or [B, M, {self.dim}], "
                             f"got {tuple(x.shape)}")
        if not bool(valid.any(1).all()):
            raise ValueError(f"'{type(self).__name__}': a slide has no valid instance")
        encoding = index_encoding(ratio, self.dim).to(x.dtype)
        x = x.masked_fill(~valid.unsqueeze(-1), 0.0)  # padding carries nothing, whatever it held
        g = self.self_branch(x, encoding, valid)
        p, attention, per_query = self.cross_branch(x, encoding, valid, F.normalize(queries, dim=-1))
        slide = self.fuse(torch.cat([p, g], dim=-1))
        out = FiVEOutput(slide, attention, per_query)
        return FiVEOutput(*(t[0] for t in out)) if single else out

    def query_pull(self, query_outputs: Tensor, text: Tensor) -> Tensor:
        """How far each query moves the slide embedding towards a text `[L]`: its share of s through the fusion
        (s is linear in the queries' mean output), projected on the unit text."""
        share = query_outputs @ self.fuse.weight[:, : self.dim].T / query_outputs.size(-2)
        return share @ F.normalize(text, dim=-1)

    def logits(self, slide: Tensor, texts: Tensor) -> Tensor:
        """Fixed-scale cosines of the slide embedding(s) `[D]` or `[B, D]` with each text: `[T]` or `[B, T]`."""
        return self.config.logit_scale * (F.normalize(slide, dim=-1) @ F.normalize(texts, dim=-1).T)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dim}, heads={self.config.heads}, logit_scale={self.config.logit_scale:g})"


def pad_instances(bags: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Slides of different sizes as one padded batch: instances `[B, M, D]`, ratios `[B, M]`, valid `[B, M]`."""
    m = max(len(x) for x, _ in bags)
    x0 = bags[0][0]
    x = x0.new_zeros(len(bags), m, x0.size(1))
    ratio = x0.new_zeros(len(bags), m)
    valid = torch.zeros(len(bags), m, dtype=torch.bool, device=x0.device)
    for i, (xi, ri) in enumerate(bags):
        x[i, : len(xi)], ratio[i, : len(xi)], valid[i, : len(xi)] = xi, ri.to(ratio.dtype), True
    return x, ratio, valid


class TFSQueries(nn.Module):
    """The query prompts: the task's question prompts (encoded once, frozen; a buffer) for the kept fields, then
    the learnable prompts, L2-normalised.

    Shapes:
        - **input:** the kept fields' indices (None: all)
        - **output:** queries :math:`(Q_{kept} + P, D)`
    """

    def __init__(self, question_features: Tensor, learnable: nn.Module):
        super().__init__()
        self.register_buffer("question_features", question_features.detach().clone().float())
        self.learnable = learnable

    @property
    def n_questions(self) -> int:
        return int(self.question_features.size(0))

    def forward(self, kept: Sequence[int] | None = None) -> Tensor:
        questions = self.question_features if kept is None else self.question_features[list(kept)]
        learned = self.learnable().to(questions.dtype)
        return F.normalize(torch.cat([questions, learned]), dim=-1)


class FixedDescriptions(nn.Module):
    """Stands in for the description encoder of a trained model (prediction, no text tower): it returns the stored
    features of the texts it was given (the class descriptions) and refuses any other text."""

    def __init__(self, texts: Sequence[str], features: Tensor):
        super().__init__()
        if len(texts) != features.size(0):
            raise ValueError(f"{len(texts)} texts but {features.size(0)} feature rows")
        self.texts = list(texts)
        self.register_buffer("features", features.detach().clone())

    def forward(self, texts: Sequence[str]) -> Tensor:
        missing = [t for t in texts if t not in self.texts]
        if missing:
            raise ValueError(f"a restored FiVE model only scores its class descriptions; not {missing[:2]}")
        return self.features[[self.texts.index(t) for t in texts]]


def cross_entropy(logits: Tensor, targets: Sequence[int]) -> Tensor:
    """Mean cross-entropy of logits `[B, T]` against target indices (one per row)."""
    return F.cross_entropy(logits, torch.tensor(list(targets), device=logits.device))
