"""HiLa: survival prediction from region- and patch-level features aligned to survival-attribute prompts.

"Hierarchical Vision-Language Collaboration for Cancer Survival Prediction" (arXiv 2507.04613). The paper has no
public code, so only its abstract is followed; everything below the level of the abstract is our reading.

From the abstract:

- patch- and region-level features of a pretrained vision-language extractor, one set of survival-attribute
  prompts per level;
- Optimal Prompt Learning (OPL): the prompts are aligned to the visual features by optimal transport rather than
  by the cosine similarity of a single prompt;
- Cross-Level Propagation (CLP): the two levels interact;
- Mutual Contrastive Learning (MCL): the two levels are kept consistent.

Ours (the team's design, not the paper's):

- the levels are the repo's 5x regions `[N, D]` and their 4 x 4 children at 20x `[N, 16, D]` (mask `[N, 16]`);
  tokens are `Linear -> GELU -> Dropout` projections of each to `hidden` (:class:`HiLaConfig`);
- CLP runs along the parent-child links only (memory and time linear in the number of patches): each region
  attends over its own valid children (multi-head, residual + LayerNorm), then every child adds a linear message
  from its updated parent (residual + LayerNorm); `clp_layers` such bidirectional layers;
- OPL is entropic optimal transport (Sinkhorn, POT's log-domain solver) between a level's instances and its K
  prompts with uniform marginals, on the cost :math:`1 - \\cos` in the joint image-text space (the input features,
  not the tokens); the plan is a constant (no gradient); a prompt's score is the transport-weighted cosine and its
  attribute token the transport-weighted mean of the CLP-updated tokens;
- a level's embedding pools the attribute tokens with a softmax over the prompt scores; the hazard head is a
  linear layer on the two level embeddings (discrete-time hazards over `n_bins` time bins);
- MCL is a symmetric InfoNCE between the two levels' attribute tokens (positive: the same attribute at the other
  level; negatives: the other attributes), so it works with one patient per step. The model returns it both raw
  (`mcl`) and weighted (`aux = mcl_weight * mcl`); the training loop adds `aux` to the survival loss.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.configs import HiLaConfig  # noqa: F401  (re-exported: the model's hyperparameters)

CHILDREN = 16  # 4 x 4 children at 20x per 5x region


# --- optimal prompt learning ---------------------------------------------------------------------------------------


def sinkhorn_plan(cost: Tensor, eps: float = 0.1, iters: int = 100, tol: float = 1e-5) -> Tensor:
    r"""Entropic transport plan `[M, K]` between M instances and K prompts with uniform marginals (no gradient).

    .. math::
        \mathbf{T} = \operatorname*{arg\,min}_{\mathbf{T} \in \Pi(\mathbf{a}, \mathbf{b})}
            \langle \mathbf{T}, \mathbf{C} \rangle - \varepsilon H(\mathbf{T}), \quad
        a_i = \frac{1}{M}, \quad b_k = \frac{1}{K}

    solved by POT's log-domain Sinkhorn (`ot.sinkhorn(..., method="sinkhorn_log")`, the only call into POT), at
    most `iters` iterations, stopping once :math:`\lVert \mathbf{T}^\top \mathbf{1} - \mathbf{b} \rVert_2 < `
    `tol`; the rows meet :math:`\mathbf{a}` exactly after every iteration. Computed in at least float32 and
    returned in the cost's dtype. An empty side gives an empty plan.
    """
    import ot

    if cost.dim() != 2:
        raise ValueError(f"sinkhorn_plan expects a [M, K] cost, got shape {tuple(cost.shape)}")
    m, k = cost.shape
    if m == 0 or k == 0:
        return cost.new_zeros(m, k).detach()
    with torch.no_grad():
        c = cost.detach()
        work = c if c.dtype in (torch.float32, torch.float64) else c.float()
        a = work.new_full((m,), 1.0 / m)
        b = work.new_full((k,), 1.0 / k)
        plan = ot.sinkhorn(a, b, work, eps, method="sinkhorn_log", numItermax=iters, stopThr=tol, warn=False)
    return plan.to(cost.dtype)


class LevelAlignment(NamedTuple):
    """OPL of one level: prompt scores, attribute tokens and the plan they come from."""

    scores: Tensor  # [K] transport-weighted cosines s_k
    tokens: Tensor  # [K, H] attribute tokens z_k (zeros when tokens were not given)
    plan: Tensor  # [M, K]


def optimal_prompt_alignment(
    x: Tensor, texts: Tensor, tokens: Tensor | None = None, eps: float = 0.1, iters: int = 100, tol: float = 1e-5
) -> LevelAlignment:
    r"""Align K prompts to M instances of one level by optimal transport in the joint image-text space.

    .. math::
        C_{ik} = 1 - \cos(\mathbf{x}_i, \mathbf{t}_k), \quad \mathbf{T} = \operatorname{Sinkhorn}(\mathbf{C}), \quad
        s_k = K \sum_i T_{ik} (1 - C_{ik}), \quad \mathbf{z}_k = K \sum_i T_{ik} \mathbf{h}_i

    Each column of :math:`K\mathbf{T}` sums to one, so :math:`s_k` is a weighted mean cosine of prompt k and
    :math:`\mathbf{z}_k` a weighted mean token. The plan carries no gradient; :math:`s_k` carries it to the texts
    (and so to a prompt learner's context) and to `x`, :math:`\mathbf{z}_k` to the tokens. With no instances
    (M = 0) the scores and tokens are zeros.

    Args:
        x (Tensor): Instance features :math:`(M, D)` in the joint space.
        texts (Tensor): Prompt features :math:`(K, D)`.
        tokens (Tensor, optional): Instance tokens :math:`(M, H)` to pool into attribute tokens.
    """
    k = texts.size(0)
    if x.dim() != 2 or texts.dim() != 2 or x.size(1) != texts.size(1):
        raise ValueError(f"features {tuple(x.shape)} and texts {tuple(texts.shape)} must be [M, D] and [K, D]")
    width = tokens.size(-1) if tokens is not None else 0
    if x.size(0) == 0:
        empty = x.new_zeros(0, k)
        return LevelAlignment(x.new_zeros(k), x.new_zeros(k, width), empty)
    cos = F.normalize(x, dim=-1) @ F.normalize(texts, dim=-1).T  # [M, K]
    plan = sinkhorn_plan(1.0 - cos, eps, iters, tol)
    scores = k * (plan * cos).sum(dim=0)
    z = k * plan.T @ tokens if tokens is not None else x.new_zeros(k, 0)
    return LevelAlignment(scores, z, plan)


def mutual_contrastive_loss(z_patch: Tensor, z_region: Tensor, temperature: float = 0.1) -> Tensor:
    r"""Symmetric InfoNCE between the two levels' attribute tokens `[K, H]` (the same attribute is the positive).

    .. math::
        \ell_{kj} = \frac{\hat{\mathbf{z}}^{p\top}_k \hat{\mathbf{z}}^{r}_j}{\tau}, \quad
        \mathcal{L}_{MCL} = \frac{1}{2K} \sum_k \Big(-\log \operatorname{softmax}_j(\ell_{kj})_{j=k}
            - \log \operatorname{softmax}_j(\ell_{jk})_{j=k}\Big)

    with unit-length rows :math:`\hat{\cdot}`.
    """
    if z_patch.shape != z_region.shape or z_patch.dim() != 2:
        raise ValueError(f"attribute tokens must both be [K, H], got {tuple(z_patch.shape)}, {tuple(z_region.shape)}")
    logits = F.normalize(z_patch, dim=-1) @ F.normalize(z_region, dim=-1).T / temperature
    target = torch.arange(logits.size(0), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def valid_children(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Parent row and slot `[M]` of every valid child (mask True), in flat order `n * 16 + j`."""
    return mask.bool().nonzero(as_tuple=True)


# --- cross-level propagation -----------------------------------------------------------------------------------------


class CrossLevelPropagation(nn.Module):
    r"""One bidirectional CLP layer along the parent-child links: region <- its children, then child <- its parent.

    .. math::
        \alpha_{nj} = \operatorname{softmax}_{j \in \mathcal{C}(n)}
            \frac{(\mathbf{W}_q \mathbf{h}^{r}_n)^\top \mathbf{W}_k \mathbf{h}^{p}_{nj}}{\sqrt{d}}, \quad
        \mathbf{h}^{r}_n \leftarrow \operatorname{LN}\Big(\mathbf{h}^{r}_n
            + \mathbf{W}_o \sum_{j \in \mathcal{C}(n)} \alpha_{nj} \mathbf{W}_v \mathbf{h}^{p}_{nj}\Big), \quad
        \mathbf{h}^{p}_{nj} \leftarrow \operatorname{LN}(\mathbf{h}^{p}_{nj} + \mathbf{W}_m \mathbf{h}^{r}_n)

    per head (d = H / heads), where :math:`\mathcal{C}(n)` are the valid children of region n. A region without
    valid children gets no message (only the LayerNorm). Work and memory are :math:`O(16 N H)`.

    Args:
        hidden (int): Token size H.
        heads (int, optional): Attention heads. (default: :obj:`4`)
        dropout (float, optional): Dropout on both messages. (default: :obj:`0.0`)

    Shapes:
        - **input:** region tokens :math:`(N, H)`, child tokens :math:`(N, 16, H)`, mask :math:`(N, 16)`
        - **output:** updated region tokens :math:`(N, H)` and child tokens :math:`(N, 16, H)`
    """

    def __init__(self, hidden: int, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"'{type(self).__name__}': hidden ({hidden}) must be a multiple of heads ({heads})")
        self.hidden = hidden
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.message = nn.Linear(hidden, hidden)
        self.norm_region = nn.LayerNorm(hidden)
        self.norm_patch = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.query, self.key, self.value, self.out, self.message, self.norm_region, self.norm_patch):
            module.reset_parameters()

    def forward(self, h5: Tensor, h20: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        n, slots, _ = h20.shape
        heads, d = self.heads, self.hidden // self.heads
        q = self.query(h5).view(n, heads, d)
        k = self.key(h20).view(n, slots, heads, d)
        v = self.value(h20).view(n, slots, heads, d)
        scores = torch.einsum("nhd,nshd->nhs", q, k) / math.sqrt(d)
        has_child = mask.any(dim=1)
        # masked slots get -inf; a region with no valid child gets finite scores (its message is zeroed below)
        scores = scores.masked_fill(~(mask | ~has_child[:, None])[:, None, :], float("-inf"))
        message = torch.einsum("nhs,nshd->nhd", scores.softmax(dim=-1), v).reshape(n, self.hidden)
        message = self.out(message) * has_child[:, None].to(message.dtype)
        h5 = self.norm_region(h5 + self.drop(message))
        h20 = self.norm_patch(h20 + self.drop(self.message(h5)).unsqueeze(1))
        return h5, h20

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hidden}, heads={self.heads})"


# --- the model -------------------------------------------------------------------------------------------------------


class HiLaOutput(NamedTuple):
    """One forward pass; the attribute weights name a patient's top prompts, the plans where they were found."""

    logits: Tensor  # [n_bins] discrete-time hazard logits
    aux: Tensor  # scalar, mcl_weight * mcl: add to the survival loss
    mcl: Tensor  # scalar, the unweighted mutual contrastive loss
    attr_weights_region: Tensor  # [K] softmax over the region prompts
    attr_weights_patch: Tensor  # [K] softmax over the patch prompts
    plan_region: Tensor  # [N, K]
    plan_patch: Tensor  # [M, K] over the valid children
    patch_index: Tensor  # [M] flat index n * 16 + j of each valid child


class HiLa(nn.Module):
    r"""HiLa survival model on frozen region/patch features and (prompt-learned) survival-attribute texts.

    .. math::
        \mathbf{h}^{r}, \mathbf{h}^{p} = \operatorname{CLP}(\phi_r(\mathbf{X}^{5x}), \phi_p(\mathbf{X}^{20x})), \quad
        (\mathbf{s}^{l}, \mathbf{Z}^{l}) = \operatorname{OPL}(\mathbf{X}^{l}, \mathbf{T}^{l}, \mathbf{h}^{l}), \quad
        \mathbf{e}^{l} = \sum_k \operatorname{softmax}_k(\mathbf{s}^{l} / \tau_a)_k\, \mathbf{z}^{l}_k

    .. math::
        \text{logits} = \mathbf{W}\,[\mathbf{e}^{r} \,\Vert\, \mathbf{e}^{p}] + \mathbf{b}, \quad
        \text{aux} = \lambda\, \mathcal{L}_{MCL}(\mathbf{Z}^{p}, \mathbf{Z}^{r})

    with :math:`\phi = \operatorname{Dropout}(\operatorname{GELU}(\operatorname{Linear}(\cdot)))`, OPL as in
    :func:`optimal_prompt_alignment` (patch level over the valid children only) and
    :math:`\mathcal{L}_{MCL}` as in :func:`mutual_contrastive_loss`. A patient with no valid child at all has a
    zero patch embedding and no MCL term.

    Args:
        embed_dim (int): Feature size D of images and texts (the joint image-text space).
        n_bins (int): Number of discrete survival time bins.
        config (HiLaConfig, optional): Hyperparameters.
        region_text_encoder (nn.Module, optional): A module whose call returns the region prompts' features
            `[K, D]` (a :class:`~pipeline.model.prompt_learner.PromptLearner` in training, a
            :class:`~pipeline.model.prompt_learner.FixedTexts` at prediction).
        patch_text_encoder (nn.Module, optional): The same for the patch prompts (same K). Without both encoders,
            `forward` needs `texts`.

    Shapes:
        - **input:** x5 :math:`(N, D)`, x20 :math:`(N, 16, D)`, mask :math:`(N, 16)`, optional texts: a pair
          (region :math:`(K, D)`, patch :math:`(K, D)`)
        - **output:** :class:`HiLaOutput` with logits :math:`(n_{bins},)`
    """

    def __init__(
        self,
        embed_dim: int,
        n_bins: int,
        config: HiLaConfig | None = None,
        region_text_encoder: nn.Module | None = None,
        patch_text_encoder: nn.Module | None = None,
    ):
        super().__init__()
        if n_bins < 1:
            raise ValueError(f"'{type(self).__name__}': n_bins must be >= 1, got {n_bins}")
        self.embed_dim = embed_dim
        self.n_bins = n_bins
        self.config = c = config or HiLaConfig()
        self.region_text_encoder = region_text_encoder
        self.patch_text_encoder = patch_text_encoder
        self.proj_region = nn.Linear(embed_dim, c.hidden)
        self.proj_patch = nn.Linear(embed_dim, c.hidden)
        self.clp = nn.ModuleList(CrossLevelPropagation(c.hidden, c.heads, c.dropout) for _ in range(c.clp_layers))
        self.head = nn.Linear(2 * c.hidden, n_bins)
        self.drop = nn.Dropout(c.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.proj_region, self.proj_patch, self.head, *self.clp):
            module.reset_parameters()
        for encoder in (self.region_text_encoder, self.patch_text_encoder):
            if encoder is not None and hasattr(encoder, "reset_parameters"):
                encoder.reset_parameters()

    def encode_texts(self) -> tuple[Tensor, Tensor]:
        """Region and patch prompt features, each `[K, D]`; call once per pass and hand them to `forward`."""
        if self.region_text_encoder is None or self.patch_text_encoder is None:
            raise ValueError("HiLa has no text encoders: pass `texts` to forward()")
        return self.region_text_encoder(), self.patch_text_encoder()

    def forward(
        self, x5: Tensor, x20: Tensor, mask: Tensor, texts: tuple[Tensor, Tensor] | None = None
    ) -> HiLaOutput:
        n, slots, dim = x20.shape
        if x5.shape != (n, dim) or mask.shape != (n, slots) or dim != self.embed_dim:
            raise ValueError(
                f"shape mismatch: x5 {tuple(x5.shape)}, x20 {tuple(x20.shape)}, mask {tuple(mask.shape)}; "
                f"expected [N, {self.embed_dim}], [N, {CHILDREN}, {self.embed_dim}], [N, {CHILDREN}]"
            )
        t_region, t_patch = self.encode_texts() if texts is None else texts
        if t_region.dim() != 2 or t_region.shape != t_patch.shape or t_region.size(1) != self.embed_dim:
            raise ValueError(
                f"texts must be two [K, {self.embed_dim}] tensors with the same K, "
                f"got {tuple(t_region.shape)} and {tuple(t_patch.shape)}"
            )
        c = self.config
        mask = mask.to(device=x20.device, dtype=torch.bool)
        x20 = torch.where(mask.unsqueeze(-1), x20, torch.zeros((), dtype=x20.dtype, device=x20.device))
        h5 = self.drop(F.gelu(self.proj_region(x5)))
        h20 = self.drop(F.gelu(self.proj_patch(x20)))
        for layer in self.clp:
            h5, h20 = layer(h5, h20, mask)
        parent, slot = valid_children(mask)
        ot_args = (c.ot_eps, c.ot_iters, c.ot_tol)
        region = optimal_prompt_alignment(x5, t_region, h5, *ot_args)
        patch = optimal_prompt_alignment(x20[parent, slot], t_patch, h20[parent, slot], *ot_args)
        w_region = (region.scores / c.attr_temperature).softmax(dim=0)
        w_patch = (patch.scores / c.attr_temperature).softmax(dim=0)
        e = torch.cat([w_region @ region.tokens, w_patch @ patch.tokens])
        logits = self.head(self.drop(e))
        if parent.numel():
            mcl = mutual_contrastive_loss(patch.tokens, region.tokens, c.mcl_temperature)
        else:
            mcl = logits.new_zeros(())
        return HiLaOutput(
            logits, c.mcl_weight * mcl, mcl, w_region, w_patch, region.plan, patch.plan, parent * slots + slot
        )

    def __repr__(self) -> str:
        c = self.config
        return (
            f"{type(self).__name__}({self.embed_dim}, n_bins={self.n_bins}, hidden={c.hidden}, heads={c.heads}, "
            f"clp_layers={c.clp_layers}, ot_eps={c.ot_eps}, mcl_weight={c.mcl_weight})"
        )


def prompt_risk(
    x5: Tensor,
    x20: Tensor,
    mask: Tensor,
    texts_region: Tensor,
    texts_patch: Tensor,
    signs_region: Tensor,
    signs_patch: Tensor,
    cfg: HiLaConfig | None = None,
) -> Tensor:
    r"""Training-free risk from the prompts alone: the same OPL scores, no learned parts.

    .. math::
        \text{risk} = \frac{1}{|\mathcal{L}|} \sum_{l \in \mathcal{L}} \sum_k \sigma^{l}_k\, s^{l}_k

    with :math:`\sigma_k = +1` for a prompt describing a worse prognosis and :math:`-1` for a better one, over
    the levels :math:`\mathcal{L}` that have instances (a patient without valid children is scored on its regions).
    Returns a scalar tensor; a higher value predicts a shorter survival.
    """
    region, patch, _ = prompt_alignments(x5, x20, mask, texts_region, texts_patch, cfg)
    return _signed_risk(region.scores, patch.scores if patch is not None else None, signs_region, signs_patch)


def prompt_alignments(
    x5: Tensor, x20: Tensor, mask: Tensor, texts_region: Tensor, texts_patch: Tensor, cfg: HiLaConfig | None = None
) -> tuple[LevelAlignment, LevelAlignment | None, Tensor]:
    """Each level's OPL without tokens (patch: None without a valid child), and the valid children's flat index
    `n * 16 + j` (the rows of the patch plan)."""
    cfg = cfg or HiLaConfig()
    ot_args = (cfg.ot_eps, cfg.ot_iters, cfg.ot_tol)
    parent, slot = valid_children(mask)
    region = optimal_prompt_alignment(x5, texts_region, None, *ot_args)
    index = parent * mask.size(1) + slot
    if not parent.numel():
        return region, None, index
    return region, optimal_prompt_alignment(x20[parent, slot], texts_patch, None, *ot_args), index


def _signed_risk(region: Tensor, patch: Tensor | None, signs_region: Tensor, signs_patch: Tensor) -> Tensor:
    """Mean over the levels with instances of sum_k sign_k * s_k."""
    levels = [(region, signs_region)] + ([(patch, signs_patch)] if patch is not None else [])
    risks = [(torch.as_tensor(signs, dtype=s.dtype, device=s.device) * s).sum() for s, signs in levels]
    return torch.stack(risks).mean()


class PromptRiskOutput(NamedTuple):
    logits: Tensor  # [n_bins]: the risk as a constant hazard logit per bin (keeps its order, see PromptRisk)
    aux: Tensor  # scalar 0: nothing to train
    risk: Tensor  # scalar, higher = worse
    scores_region: Tensor  # [K] transport-weighted similarity of each region prompt
    scores_patch: Tensor  # [K] the same at the patch level (zeros without valid children)
    plan_region: Tensor  # [N, K] the transport plans the scores come from (as HiLaOutput's)
    plan_patch: Tensor  # [M, K] over the valid children (M = 0 without any)
    patch_index: Tensor  # [M] flat index n * 16 + j of each valid child


class PromptRisk(nn.Module):
    r"""The training-free baseline as a model: :func:`prompt_risk` over frozen attribute prompt features.

    The survival task reads hazard logits, so the risk :math:`r` is returned as the same logit in every bin:
    :math:`S_k = (1 - \sigma(r))^{k+1}` decreases with :math:`r` in every bin, so the task's risk
    :math:`-\sum_k S_k` orders patients exactly as :math:`r` does (the C-index is :math:`r`'s; the survival curve
    itself is not calibrated, which the integrated Brier score shows).

    Args:
        texts (Tensor): Attribute prompt features :math:`(2K, D)`, region prompts first.
        signs (Tensor): :math:`(2K,)`, +1 for an attribute of worse prognosis, -1 for better.
        n_bins (int): Number of time bins.
        config (HiLaConfig, optional): Its optimal-transport settings are used.
    """

    def __init__(self, texts: Tensor, signs: Tensor, n_bins: int, config: HiLaConfig | None = None):
        super().__init__()
        if texts.dim() != 2 or texts.size(0) % 2 or signs.shape != texts.shape[:1]:
            raise ValueError(f"'{type(self).__name__}': texts [2K, D] and signs [2K], got {tuple(texts.shape)}, "
                             f"{tuple(signs.shape)}")
        self.n_bins = n_bins
        self.config = config or HiLaConfig()
        self.register_buffer("texts", texts.detach().clone().float())
        self.register_buffer("signs", signs.detach().clone().float())

    def forward(self, x5: Tensor, x20: Tensor, mask: Tensor) -> PromptRiskOutput:
        k = self.texts.size(0) // 2
        region, patch, index = prompt_alignments(x5, x20, mask.bool(), self.texts[:k], self.texts[k:], self.config)
        risk = _signed_risk(region.scores, patch.scores if patch is not None else None, self.signs[:k], self.signs[k:])
        scores_patch = patch.scores if patch is not None else torch.zeros_like(region.scores)
        plan_patch = patch.plan if patch is not None else region.plan.new_zeros(0, k)
        return PromptRiskOutput(risk.expand(self.n_bins).clone(), risk.new_zeros(()), risk, region.scores,
                                scores_patch, region.plan, plan_patch, index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(attributes={self.texts.size(0) // 2} per level, n_bins={self.n_bins})"
