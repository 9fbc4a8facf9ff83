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
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import HeteroConv, SAGEConv
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.utils import softmax, to_torch_csr_tensor

from pipeline.model.options import HIER_MODES

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


class HierarchicalAttention(MessagePassing):
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
        super().__init__(aggr="add", node_dim=0)
        if channels % heads != 0:
            raise ValueError(f"'{type(self).__name__}': channels ({channels}) must be divisible by heads ({heads})")
        if mode not in HIER_MODES:
            raise ValueError(f"'{type(self).__name__}': mode must be one of {HIER_MODES}, got {mode!r}")
        self.channels = channels
        self.heads = heads
        self.mode = mode
        self.head_dim = channels // heads
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
        if self.mode == "dense":
            scores = torch.einsum("nhd,mhd->hnm", q, k) / math.sqrt(d)
            out = torch.einsum("hnm,mhd->nhd", scores.softmax(dim=-1), v)
            return out.reshape(-1, self.channels)
        if edge_index is None:
            raise ValueError(f"'{type(self).__name__}' in 'edges' mode needs an edge_index")
        out = self.propagate(edge_index, q=q, k=k, v=v, size=(x_src.size(0), x_dst.size(0)))
        return out.reshape(-1, self.channels)

    def message(self, q_i: Tensor, k_j: Tensor, v_j: Tensor, index: Tensor, ptr: Tensor | None, size_i: int | None) -> Tensor:
        alpha = softmax((q_i * k_j).sum(dim=-1) / math.sqrt(self.head_dim), index, ptr, size_i)
        return alpha.unsqueeze(-1) * v_j

    def attention_weights(self, x_src: Tensor, x_dst: Tensor, edge_index: Tensor, scale_src: Tensor, scale_dst: Tensor) -> Tensor:
        """Per-edge attention weights `[E, heads]` in `edges` mode (for inspection and tests)."""
        h, d = self.heads, self.head_dim
        q = (self.lin_q(x_dst) + scale_dst).view(-1, h, d)
        k = (self.lin_k(x_src) + scale_src).view(-1, h, d)
        src, dst = edge_index
        return softmax((q[dst] * k[src]).sum(-1) / math.sqrt(d), dst, num_nodes=x_dst.size(0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.channels}, heads={self.heads}, mode={self.mode})"


class HierarchicalHeteroLayer(nn.Module):
    r"""One HiVE-MIL graph layer: heterogeneous GraphSAGE within each scale plus hierarchical attention across.

    For every node :math:`i` of type :math:`t`:

    .. math::
        \mathbf{h}_i' = \mathbf{h}_i + \sum_{r \in \mathcal{R}_{hier}(t)} \mathbf{m}^{attn,r}_i
            + \sum_{r \in \mathcal{R}_{intra}(t)} \left( \mathbf{W}^r_1 \mathbf{h}_i
            + \mathbf{W}^r_2 \operatorname{mean}_{j \in \mathcal{N}_r(i)} \mathbf{h}_j \right)

    with one :class:`~torch_geometric.nn.conv.SAGEConv` per intra-scale relation and one
    :class:`HierarchicalAttention` per hierarchical relation, and a learned embedding per scale added to the
    attention queries and keys.

    Args:
        channels (int): Node feature size (input = output).
        heads (int, optional): Attention heads. (default: :obj:`2`)
        hier_attention (str, optional): :obj:`"edges"` or :obj:`"dense"`. (default: :obj:`"edges"`)

    Shapes:
        - **input:** `x_dict` {node type: :math:`(|\mathcal{V}_t|, F)`}; `edge_index_dict`
          {relation: :math:`(2, |\mathcal{E}_r|)`} for the hierarchical relations and either
          :math:`(2, |\mathcal{E}_r|)` or a sparse CSR adjacency :math:`(|\mathcal{V}_{dst}|, |\mathcal{V}_{src}|)`
          for the intra-scale relations
        - **output:** `x_dict` with the same shapes
    """

    def __init__(self, channels: int, heads: int = 2, hier_attention: str = "edges"):
        super().__init__()
        self.channels = channels
        self.heads = heads
        self.hier_attention = hier_attention
        self.sage = HeteroConv(
            {rel: SAGEConv((channels, channels), channels, aggr="mean") for rel in INTRA_RELATIONS}, aggr="sum"
        )
        self.attention = nn.ModuleDict(
            {relation_key(rel): HierarchicalAttention(channels, heads, hier_attention) for rel in HIER_RELATIONS}
        )
        self.scale_embedding = nn.Parameter(torch.empty(2, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.sage.reset_parameters()
        for module in self.attention.values():
            module.reset_parameters()
        nn.init.normal_(self.scale_embedding, std=0.02)

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
                h = h + self.attention[relation_key(rel)](
                    x_dict[src],
                    x,
                    edge_index_dict.get(rel),
                    self.scale_embedding[SCALE_OF[src]],
                    self.scale_embedding[SCALE_OF[dst]],
                )
            out[node_type] = h
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.channels}, heads={self.heads}, "
            f"hier_attention={self.hier_attention})"
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

    Shapes:
        - **input:** `x_dict` {node type: :math:`(|\mathcal{V}_t|, F)`}, `edge_index_dict`
          {relation: :math:`(2, |\mathcal{E}_r|)`} (row 0 source, row 1 destination)
        - **output:** `x_dict` {node type: :math:`(|\mathcal{V}_t|, F)`}, rows of unit length
    """

    def __init__(self, channels: int, num_layers: int = 2, heads: int = 2, hier_attention: str = "edges"):
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
        self.layers = nn.ModuleList(
            [HierarchicalHeteroLayer(channels, heads, hier_attention) for _ in range(num_layers)]
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
        return (
            f"{type(self).__name__}({self.channels}, num_layers={self.num_layers}, heads={self.heads}, "
            f"hier_attention={self.hier_attention})"
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
