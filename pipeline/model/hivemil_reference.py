"""The public HiVE-MIL reference code's graph parameters (bryanwong17/HiVE-MIL, models/hivemil.py) in our names.

A graph built with `hier_block="shared"` (what `reference: true` selects) has one parameter for each parameter the
reference's graph uses, so its weights load here: a trained reference checkpoint (`s_{k}_checkpoint.pt`, the state
dict of its `HiVE_MIL`) can be evaluated by our model, and the parity fixture (tests/data/hivemil_reference/) runs
both on the same weights. Not loaded: the four self-relation SAGE convolutions per layer the reference registers
but never runs (no such edges exist), its prompt context (our text branch is not its text branch, HIVEMIL.md)
and the frozen VLM.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

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
    relation_key,
)

#: the reference's node type names.
REFERENCE_NODE_TYPES: dict[NodeType, str] = {IMG5: "x5image", TXT5: "x5text", IMG20: "x20image", TXT20: "x20text"}
#: the reference's names of the hierarchical relations (its per-relation input projections are keyed by them).
REFERENCE_HIER_NAMES: dict[EdgeType, str] = {
    HIER_RELATIONS[0]: "hier_x20tox5_image",
    HIER_RELATIONS[1]: "hier_x5tox20_image",
    HIER_RELATIONS[2]: "hier_x20tox5_text",
    HIER_RELATIONS[3]: "hier_x5tox20_text",
}


def reference_intra_relation(rel: EdgeType) -> tuple[str, str, str]:
    """The reference's name of an intra-scale relation: (img5, matches, txt5) -> (x5image, x5_intra, x5text)."""
    src, _, dst = rel
    scale = "x5" if src in (IMG5, TXT5) else "x20"
    return REFERENCE_NODE_TYPES[src], f"{scale}_intra", REFERENCE_NODE_TYPES[dst]


def _graph_prefix(state: Mapping[str, Tensor]) -> str:
    """The key prefix of the graph in `state`: '' for the graph's own state dict, or e.g.
    'custom_vlm.graph_prompt_learner.' in a whole-model checkpoint."""
    for key in state:
        head, sep, _ = key.partition("layer1.attn.mha.in_proj_weight")
        if sep:
            return head
    raise KeyError("no HiVE-MIL reference graph in the state dict (no 'layer1.attn.mha.in_proj_weight' key)")


def _conv_key(prefix: str, rel: tuple[str, str, str]) -> list[str]:
    """The key of a HeteroConv convolution, as PyG >= 2.4 ('<a___b___c>') and older versions ('a__b__c') name it."""
    return [f"{prefix}convs.convs.<{'___'.join(rel)}>.", f"{prefix}convs.convs.{'__'.join(rel)}."]


def load_reference_graph(gnn: HierarchicalHeteroGNN, state: Mapping[str, Tensor]) -> None:
    """Copy the reference graph's parameters in `state` into `gnn` (which must use the shared attention block).

    Raises `ValueError` when `gnn` cannot hold them (another block, depth or width) and `KeyError` naming the first
    missing parameter.
    """
    if gnn.hier_block != "shared":
        raise ValueError(f"the reference's graph loads into hier_block='shared', not {gnn.hier_block!r}")
    prefix = _graph_prefix(state)
    n_layers = sum(1 for k in state if k.startswith(prefix) and k.endswith(".attn.mha.in_proj_weight"))
    if n_layers != gnn.num_layers:
        raise ValueError(f"the reference graph has {n_layers} layers, the model {gnn.num_layers}")

    def get(key: str) -> Tensor:
        if key not in state:
            raise KeyError(f"reference parameter {key!r} missing")
        return state[key]

    def put(param: nn.Parameter | Tensor, value: Tensor) -> None:
        if param.shape != value.shape:
            raise ValueError(f"shape {tuple(value.shape)} of a reference parameter does not fit {tuple(param.shape)}")
        param.copy_(value.to(param.dtype))

    with torch.no_grad():
        for i, layer in enumerate(gnn.layers):
            ref = f"{prefix}layer{i + 1}."
            attn = layer.shared_attention
            put(layer.scale_embedding, get(ref + "attn.scale_embeddings.weight"))
            weight, bias = get(ref + "attn.mha.in_proj_weight"), get(ref + "attn.mha.in_proj_bias")
            for lin, w, b in zip((attn.lin_q, attn.lin_k, attn.lin_v), weight.chunk(3), bias.chunk(3)):
                put(lin.weight, w)
                put(lin.bias, b)
            put(attn.lin_out.weight, get(ref + "attn.mha.out_proj.weight"))
            put(attn.lin_out.bias, get(ref + "attn.mha.out_proj.bias"))
            for rel, name in REFERENCE_HIER_NAMES.items():
                for ours, theirs in ((attn.proj_q, "q_projs"), (attn.proj_k, "k_projs")):
                    put(ours[relation_key(rel)].weight, get(f"{ref}attn.{theirs}.{name}.weight"))
                    put(ours[relation_key(rel)].bias, get(f"{ref}attn.{theirs}.{name}.bias"))
            for rel in INTRA_RELATIONS:
                keys = _conv_key(ref, reference_intra_relation(rel))
                conv_key = next((k for k in keys if k + "lin_l.weight" in state), keys[0])
                conv = layer.sage.convs[rel]
                put(conv.lin_l.weight, get(conv_key + "lin_l.weight"))
                put(conv.lin_l.bias, get(conv_key + "lin_l.bias"))
                put(conv.lin_r.weight, get(conv_key + "lin_r.weight"))
