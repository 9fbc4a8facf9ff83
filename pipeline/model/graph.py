"""Hierarchical heterogeneous graph network of HiVE-MIL (HIVEMIL.md, "Hierarchical heterogeneous graph").

Four node types live in one graph per slide: 5x image patches (`img5`), coarse texts (`txt5`), 20x image patches
(`img20`) and fine texts (`txt20`). Two kinds of edges connect them:

- intra-scale image <-> text edges (the TGDF edges), carried by a heterogeneous GraphSAGE (one convolution per
  relation, summed per destination type);
- hierarchical parent <-> child edges (20x patch <-> its own 5x parent, fine text <-> its coarse text), carried by
  attention whose softmax runs over each node's own parent or children only.

In `edges` mode a 20x node (or fine text) has exactly one parent, so the softmax of the parent -> child relations
runs over a single edge and equals 1: their query and key projections receive no gradient and only the value
projection acts (a test pins this down). They matter in `dense` mode, which shares the same parameters.

`hier_attention="dense"` reproduces the reference code instead: every node attends to every node of the other
scale and the edge list is ignored, so memory grows with N5 x 16 N5. The default `"edges"` keeps memory and time
linear in the number of patches.

`hier_block="shared"` is the reference code's attention block (:class:`SharedHierarchicalAttention`): one
multi-head attention module per layer shared by the four relations, behind per-relation input projections, and a
node update of 2h + attention + SAGE (its attention returns query + message). It runs in either mode, so with
`edges` it stays linear too.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import HeteroConv, SAGEConv
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.utils import softmax, to_torch_csr_tensor

from pipeline.model.options import HIER_BLOCKS, HIER_MODES

NodeType = str
EdgeType = tuple[str, str, str]

IMG5, TXT5, IMG20, TXT20 = "img5", "txt5", "img20", "txt20"
NODE_TYPES: tuple[NodeType, ...] = (IMG5, TXT5, IMG20, TXT20)
SCALE_OF: dict[NodeType, int] = {IMG5: 0, TXT5: 0, IMG20: 1, TXT20: 1}

# Intra-scale relations (TGDF edges, both directions).
INTRA_RELATIONS: tuple[EdgeType, ...] = (
    (IMG5, "matches", TXT5),
    (TXT5, "matches", IMG5),
    (IMG20, "matches", TXT20),
    (TXT20, "matches", IMG20),
)
# Hierarchical relations: "up" goes child -> parent, "down" goes parent -> child.
HIER_RELATIONS: tuple[EdgeType, ...] = (
    (IMG20, "up", IMG5),
    (IMG5, "down", IMG20),
    (TXT20, "up", TXT5),
    (TXT5, "down", TXT20),
)


def relation_key(edge_type: EdgeType) -> str:
    """ModuleDict key of a relation ("img20__up__img5")."""
    return "__".join(edge_type)


class _HeadAttention(MessagePassing):
    """Multi-head scaled dot-product attention of destination queries over source keys and values, either along
    edges (softmax over each destination's own neighbours; memory linear in the edges) or dense (every source node;
    memory quadratic). The subclasses decide how queries, keys and values are projected."""

    def __init__(self, channels: int, heads: int = 2, mode: str = "edges"):
        super().__init__(aggr="add", node_dim=0)
        if channels % heads != 0:
            raise ValueError(f"'{type(self).__name__}': channels ({channels}) must be divisible by heads ({heads})")
        if mode not in HIER_MODES:
            raise ValueError(f"'{type(self).__name__}': mode must be one of {HIER_MODES}, got {mode!r}")
        self.channels = channels
        self.heads = heads
        self.mode = mode
        self.head_dim = channels // heads

    def attend(self, q: Tensor, k: Tensor, v: Tensor, edge_index: Tensor | None) -> Tensor:
        """Messages `[N_dst, channels]` from `q [N_dst, H, d]`, `k`, `v [N_src, H, d]`."""
        if self.mode == "dense":
            scores = torch.einsum("nhd,mhd->hnm", q, k) / math.sqrt(self.head_dim)
            out = torch.einsum("hnm,mhd->nhd", scores.softmax(dim=-1), v)
            return out.reshape(-1, self.channels)
        if edge_index is None:
            raise ValueError(f"'{type(self).__name__}' in 'edges' mode needs an edge_index")
        out = self.propagate(edge_index, q=q, k=k, v=v, size=(k.size(0), q.size(0)))
        return out.reshape(-1, self.channels)

    def message(
        self, q_i: Tensor, k_j: Tensor, v_j: Tensor, index: Tensor, ptr: Tensor | None, size_i: int | None
    ) -> Tensor:
        alpha = softmax((q_i * k_j).sum(dim=-1) / math.sqrt(self.head_dim), index, ptr, size_i)
        return alpha.unsqueeze(-1) * v_j


class HierarchicalAttention(_HeadAttention):
    r"""Multi-head attention from the nodes of one scale to the nodes of the other, along parent-child edges.

    For a destination node :math:`i` and its hierarchical neighbours :math:`\mathcal{N}(i)` (its own parent, or
    its own children):

    .. math::
        \mathbf{q}_i = \mathbf{W}_q \mathbf{x}_i + \mathbf{e}_{s(i)}, \quad
        \mathbf{k}_j = \mathbf{W}_k \mathbf{x}_j + \mathbf{e}_{s(j)}, \quad
        \alpha_{ij} = \operatorname{softmax}_{j \in \mathcal{N}(i)}
            \left( \frac{\mathbf{q}_i^{h\top} \mathbf{k}_j^h}{\sqrt{d_h}} \right), \quad
        \mathbf{m}_i = \Big\Vert_{h=1}^{H} \sum_{j \in \mathcal{N}(i)} \alpha^h_{ij} \mathbf{W}_v^h \mathbf{x}_j

    where :math:`\mathbf{e}_{s}` is a learned embedding of the node's scale, passed in by the caller (it is
    shared by all relations of a layer). With `mode="dense"`, :math:`\mathcal{N}(i)` is every source node and
    the edge list is ignored (the reference code's behaviour; quadratic memory).

    Args:
        channels (int): Size of every node feature (input and output).
        heads (int, optional): Number of attention heads; must divide `channels`. (default: :obj:`2`)
        mode (str, optional): :obj:`"edges"` or :obj:`"dense"`. (default: :obj:`"edges"`)

    Shapes:
        - **input:** source features :math:`(|\mathcal{V}_s|, F)`, destination features
          :math:`(|\mathcal{V}_t|, F)`, edge indices :math:`(2, |\mathcal{E}|)` (row 0 source, row 1
          destination), scale embeddings :math:`(F,)` for source and destination
        - **output:** messages :math:`(|\mathcal{V}_t|, F)`
    """

    def __init__(self, channels: int, heads: int = 2, mode: str = "edges"):
        super().__init__(channels, heads, mode)
        self.lin_q = nn.Linear(channels, channels, bias=False)
        self.lin_k = nn.Linear(channels, channels, bias=False)
        self.lin_v = nn.Linear(channels, channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin_q.reset_parameters()
        self.lin_k.reset_parameters()
        self.lin_v.reset_parameters()

    def forward(
        self, x_src: Tensor, x_dst: Tensor, edge_index: Tensor | None, scale_src: Tensor, scale_dst: Tensor
    ) -> Tensor:
        h, d = self.heads, self.head_dim
        q = (self.lin_q(x_dst) + scale_dst).view(-1, h, d)
        k = (self.lin_k(x_src) + scale_src).view(-1, h, d)
        v = self.lin_v(x_src).view(-1, h, d)
        if x_src.size(0) == 0 or x_dst.size(0) == 0:
            return x_dst.new_zeros(x_dst.size(0), self.channels)
        return self.attend(q, k, v, edge_index)

    def attention_weights(self, x_src: Tensor, x_dst: Tensor, edge_index: Tensor, scale_src: Tensor, scale_dst: Tensor) -> Tensor:
        """Per-edge attention weights `[E, heads]` in `edges` mode (for inspection and tests)."""
        h, d = self.heads, self.head_dim
        q = (self.lin_q(x_dst) + scale_dst).view(-1, h, d)
        k = (self.lin_k(x_src) + scale_src).view(-1, h, d)
        src, dst = edge_index
        return softmax((q[dst] * k[src]).sum(-1) / math.sqrt(d), dst, num_nodes=x_dst.size(0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.channels}, heads={self.heads}, mode={self.mode})"


class SharedHierarchicalAttention(_HeadAttention):
    r"""The reference code's hierarchical attention: one multi-head attention shared by every parent-child
    relation of a layer, behind per-relation input projections of the scale-tagged features.

    For relation :math:`r` from source nodes :math:`j` to destination node :math:`i`:

    .. math::
        \tilde{\mathbf{q}}_i = \mathbf{P}^r_q(\mathbf{x}_i + \mathbf{e}_{s(i)}), \quad
        \tilde{\mathbf{k}}_j = \mathbf{P}^r_k(\mathbf{x}_j + \mathbf{e}_{s(j)}), \quad
        \alpha^h_{ij} = \operatorname{softmax}_{j \in \mathcal{N}(i)}
            \left( \frac{(\mathbf{W}_q \tilde{\mathbf{q}}_i)^{h\top} (\mathbf{W}_k \tilde{\mathbf{k}}_j)^h}
            {\sqrt{d_h}} \right), \quad
        \mathbf{m}_i = \mathbf{W}_o \Big\Vert_{h=1}^{H} \sum_{j \in \mathcal{N}(i)} \alpha^h_{ij}
            (\mathbf{W}_v \tilde{\mathbf{k}}_j)^h

    Every map is affine (with bias); :math:`\mathbf{P}^r_q, \mathbf{P}^r_k` belong to the relation and
    :math:`\mathbf{W}_{q,k,v,o}` (a `torch.nn.MultiheadAttention` in the reference) are shared, and the value is
    the projected key. The scale embedding is added before the projections. The reference runs it dense
    (:math:`\mathcal{N}(i)` = every source node); `mode="edges"` restricts it to the parent-child edges.
    Initialised as the reference's PLIP/QuiltNet model: Xavier-normal relation projections with zero bias,
    `MultiheadAttention`'s own initialisation for the shared part.

    Args:
        channels (int): Size of every node feature (input and output).
        relations (Sequence[str]): Keys of the relations with their own input projections.
        heads (int, optional): Number of attention heads; must divide `channels`. (default: :obj:`2`)
        mode (str, optional): :obj:`"edges"` or :obj:`"dense"`. (default: :obj:`"dense"`)

    Shapes:
        - **input:** relation key, source features :math:`(|\mathcal{V}_s|, F)`, destination features
          :math:`(|\mathcal{V}_t|, F)`, edge indices :math:`(2, |\mathcal{E}|)` or None (dense), scale
          embeddings :math:`(F,)` for source and destination
        - **output:** messages :math:`(|\mathcal{V}_t|, F)`
    """

    def __init__(self, channels: int, relations: Sequence[str], heads: int = 2, mode: str = "dense"):
        super().__init__(channels, heads, mode)
        self.relations = tuple(relations)
        self.proj_q = nn.ModuleDict({r: nn.Linear(channels, channels) for r in self.relations})
        self.proj_k = nn.ModuleDict({r: nn.Linear(channels, channels) for r in self.relations})
        self.lin_q = nn.Linear(channels, channels)
        self.lin_k = nn.Linear(channels, channels)
        self.lin_v = nn.Linear(channels, channels)
        self.lin_out = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for proj in (*self.proj_q.values(), *self.proj_k.values()):
            nn.init.xavier_normal_(proj.weight)
            nn.init.zeros_(proj.bias)
        # MultiheadAttention: Xavier-uniform over its stacked [3F, F] input projection, zero biases, and the
        # output projection's default Linear weight with a zero bias.
        bound = math.sqrt(6.0 / (self.channels + 3 * self.channels))
        for lin in (self.lin_q, self.lin_k, self.lin_v):
            nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(lin.bias)
        self.lin_out.reset_parameters()
        nn.init.zeros_(self.lin_out.bias)

    def forward(
        self, relation: str, x_src: Tensor, x_dst: Tensor, edge_index: Tensor | None, scale_src: Tensor,
        scale_dst: Tensor,
    ) -> Tensor:
        h, d = self.heads, self.head_dim
        q = self.lin_q(self.proj_q[relation](x_dst + scale_dst)).view(-1, h, d)
        key = self.proj_k[relation](x_src + scale_src)
        k, v = self.lin_k(key).view(-1, h, d), self.lin_v(key).view(-1, h, d)
        if x_src.size(0) == 0 or x_dst.size(0) == 0:
            return x_dst.new_zeros(x_dst.size(0), self.channels)
        return self.lin_out(self.attend(q, k, v, edge_index))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.channels}, relations={len(self.relations)}, heads={self.heads}, "
            f"mode={self.mode})"
        )


class HierarchicalHeteroLayer(nn.Module):
    r"""One HiVE-MIL graph layer: heterogeneous GraphSAGE within each scale plus hierarchical attention across.

    For every node :math:`i` of type :math:`t`:

    .. math::
        \mathbf{h}_i' = \mathbf{h}_i + \sum_{r \in \mathcal{R}_{hier}(t)} \mathbf{m}^{attn,r}_i
            + \sum_{r \in \mathcal{R}_{intra}(t)} \left( \mathbf{W}^r_1 \mathbf{h}_i
            + \mathbf{W}^r_2 \operatorname{mean}_{j \in \mathcal{N}_r(i)} \mathbf{h}_j \right)

    with one :class:`~torch_geometric.nn.conv.SAGEConv` per intra-scale relation and one
    :class:`HierarchicalAttention` per hierarchical relation, and a learned embedding per scale added to the
    attention queries and keys. With `hier_block="shared"` (the reference code) the messages come from one
    :class:`SharedHierarchicalAttention` and each present hierarchical relation adds :math:`\mathbf{h}_i` once
    more (its attention returns query + message), so a node's update is :math:`2\mathbf{h}_i` + attention + SAGE.

    Args:
        channels (int): Node feature size (input = output).
        heads (int, optional): Attention heads. (default: :obj:`2`)
        hier_attention (str, optional): :obj:`"edges"` or :obj:`"dense"`. (default: :obj:`"edges"`)
        hier_block (str, optional): :obj:`"per_relation"` or :obj:`"shared"`. (default: :obj:`"per_relation"`)

    Shapes:
        - **input:** `x_dict` {node type: :math:`(|\mathcal{V}_t|, F)`}; `edge_index_dict`
          {relation: :math:`(2, |\mathcal{E}_r|)`} for the hierarchical relations and either
          :math:`(2, |\mathcal{E}_r|)` or a sparse CSR adjacency :math:`(|\mathcal{V}_{dst}|, |\mathcal{V}_{src}|)`
          for the intra-scale relations
        - **output:** `x_dict` with the same shapes
    """

    def __init__(self, channels: int, heads: int = 2, hier_attention: str = "edges", hier_block: str = "per_relation"):
        super().__init__()
        if hier_block not in HIER_BLOCKS:
            raise ValueError(f"'{type(self).__name__}': hier_block must be one of {HIER_BLOCKS}, got {hier_block!r}")
        self.channels = channels
        self.heads = heads
        self.hier_attention = hier_attention
        self.hier_block = hier_block
        self.sage = HeteroConv(
            {rel: SAGEConv((channels, channels), channels, aggr="mean") for rel in INTRA_RELATIONS}, aggr="sum"
        )
        keys = [relation_key(rel) for rel in HIER_RELATIONS]
        if hier_block == "shared":
            self.shared_attention = SharedHierarchicalAttention(channels, keys, heads, hier_attention)
        else:
            self.attention = nn.ModuleDict({k: HierarchicalAttention(channels, heads, hier_attention) for k in keys})
        self.scale_embedding = nn.Parameter(torch.empty(2, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.sage.reset_parameters()
        if self.hier_block == "shared":
            self.shared_attention.reset_parameters()
            nn.init.xavier_normal_(self.scale_embedding)  # the reference's nn.Embedding(2, F) initialisation
        else:
            for module in self.attention.values():
                module.reset_parameters()
            nn.init.normal_(self.scale_embedding, std=0.02)

    def hierarchical_message(self, rel: EdgeType, x_src: Tensor, x_dst: Tensor, edge_index: Tensor | None) -> Tensor:
        """What relation `rel` adds to its destination nodes (the shared block: the node itself + its message)."""
        src, _, dst = rel
        scale_src, scale_dst = self.scale_embedding[SCALE_OF[src]], self.scale_embedding[SCALE_OF[dst]]
        if self.hier_block == "per_relation":
            return self.attention[relation_key(rel)](x_src, x_dst, edge_index, scale_src, scale_dst)
        if x_src.size(0) == 0:  # the reference builds no relation without source nodes, so adds nothing
            return torch.zeros_like(x_dst)
        return x_dst + self.shared_attention(relation_key(rel), x_src, x_dst, edge_index, scale_src, scale_dst)

    def forward(self, x_dict: dict[NodeType, Tensor], edge_index_dict: dict[EdgeType, Tensor]) -> dict[NodeType, Tensor]:
        intra = {rel: edge_index_dict[rel] for rel in INTRA_RELATIONS if rel in edge_index_dict}
        sage_out = self.sage(x_dict, intra) if intra else {}
        out = {}
        for node_type, x in x_dict.items():
            h = x + sage_out[node_type] if node_type in sage_out else x
            for rel in HIER_RELATIONS:
                src, _, dst = rel
                if dst != node_type or src not in x_dict:
                    continue
                h = h + self.hierarchical_message(rel, x_dict[src], x, edge_index_dict.get(rel))
            out[node_type] = h
        return out

    def __repr__(self) -> str:
        block = "" if self.hier_block == "per_relation" else f", hier_block={self.hier_block}"
        return (
            f"{type(self).__name__}({self.channels}, heads={self.heads}, "
            f"hier_attention={self.hier_attention}{block})"
        )


class HierarchicalHeteroGNN(nn.Module):
    r"""Stack of :class:`HierarchicalHeteroLayer` with ReLU between layers and L2-normalised outputs.

    .. math::
        \mathbf{H}^{(l+1)} = \sigma_l\left(\operatorname{Layer}_l(\mathbf{H}^{(l)})\right), \quad
        \sigma_l = \operatorname{ReLU} \text{ for } l < L-1, \quad
        \mathbf{z}_i = \mathbf{h}^{(L)}_i / \lVert \mathbf{h}^{(L)}_i \rVert_2

    Args:
        channels (int): Node feature size (the backbone's embedding size, 512 for PLIP, QuiltNet and CONCH).
        num_layers (int, optional): Number of layers. (default: :obj:`2`)
        heads (int, optional): Attention heads per hierarchical relation. (default: :obj:`2`)
        hier_attention (str, optional): :obj:`"edges"` (parent-child only, linear memory) or :obj:`"dense"`
            (the reference code: all pairs across scales, quadratic memory). (default: :obj:`"edges"`)
        hier_block (str, optional): :obj:`"per_relation"` (ours) or :obj:`"shared"` (the reference code's
            attention block, :class:`SharedHierarchicalAttention`). (default: :obj:`"per_relation"`)

    Shapes:
        - **input:** `x_dict` {node type: :math:`(|\mathcal{V}_t|, F)`}, `edge_index_dict`
          {relation: :math:`(2, |\mathcal{E}_r|)`} (row 0 source, row 1 destination)
        - **output:** `x_dict` {node type: :math:`(|\mathcal{V}_t|, F)`}, rows of unit length
    """

    def __init__(
        self, channels: int, num_layers: int = 2, heads: int = 2, hier_attention: str = "edges",
        hier_block: str = "per_relation",
    ):
        super().__init__()
        if hier_attention not in HIER_MODES:
            raise ValueError(
                f"'{type(self).__name__}': hier_attention must be one of {HIER_MODES}, got {hier_attention!r}"
            )
        if num_layers < 1:
            raise ValueError(f"'{type(self).__name__}': num_layers must be >= 1, got {num_layers}")
        self.channels = channels
        self.num_layers = num_layers
        self.heads = heads
        self.hier_attention = hier_attention
        self.hier_block = hier_block
        self.layers = nn.ModuleList(
            [HierarchicalHeteroLayer(channels, heads, hier_attention, hier_block) for _ in range(num_layers)]
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, x_dict: dict[NodeType, Tensor], edge_index_dict: dict[EdgeType, Tensor]) -> dict[NodeType, Tensor]:
        adjacency = dict(edge_index_dict)
        for rel in INTRA_RELATIONS:
            if rel in adjacency:
                adjacency[rel] = intra_adjacency(adjacency[rel], x_dict[rel[0]].size(0), x_dict[rel[2]].size(0))
        for i, layer in enumerate(self.layers):
            x_dict = layer(x_dict, adjacency)
            if i < self.num_layers - 1:
                x_dict = {t: F.relu(x) for t, x in x_dict.items()}
        return {t: F.normalize(x, dim=-1) for t, x in x_dict.items()}

    def __repr__(self) -> str:
        block = "" if self.hier_block == "per_relation" else f", hier_block={self.hier_block}"
        return (
            f"{type(self).__name__}({self.channels}, num_layers={self.num_layers}, heads={self.heads}, "
            f"hier_attention={self.hier_attention}{block})"
        )


def intra_adjacency(edge_index: Tensor, num_src: int, num_dst: int) -> Tensor:
    """Sparse CSR adjacency `[num_dst, num_src]` of a relation, so SAGE aggregates by sparse matmul.

    A gather-scatter over image-text edges would materialise an `[E, F]` message tensor; with TGDF off (evaluation)
    every 20x patch links to every fine text, which for 64k patches and 512 channels is gigabytes. The sparse
    product never builds it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
        return to_torch_csr_tensor(edge_index.flip(0), size=(num_dst, num_src))
