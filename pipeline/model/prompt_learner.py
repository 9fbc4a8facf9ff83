"""Prompt learning on a frozen text tower (CoOp-style context vectors, HIVEMIL.md "Text branch").

One shared set of learnable context embeddings sits between the start token and the tokens of each
"term: explanation" text; the frozen backbone's own text transformer (causal mask, positional embeddings,
final norm, end-of-text pooling, projection) turns the sequence into a text feature. The reference code feeds the
transformer swapped axes without a causal mask, so its context gets no gradient; here the gradient must reach
the context, and a test checks it.

The backbone is an object from `pipeline.features.registry.create_backbone` with `tokenize`, `token_embedding`,
`encode_text_embeddings`, `text_width`. It is held outside the module tree on purpose: its weights are frozen, so
they stay out of the state dict (checkpoints hold only the context and the graph).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

PLACEHOLDER = "X"


class PromptLearner(nn.Module):
    r"""Learnable context prepended to every text, encoded by a frozen text tower.

    .. math::
        \mathbf{t}_i = \operatorname{TextTower}\big([\mathbf{e}_{SOT}, \mathbf{c}_1, \dots, \mathbf{c}_{n},
            \mathbf{e}(w_{i,1}), \dots, \mathbf{e}_{EOT}]\big), \quad \mathbf{c}_j \sim \mathcal{N}(0, 0.02^2)

    The context :math:`\mathbf{c}` is shared by all texts of all classes.

    Args:
        backbone: Frozen backbone exposing `tokenize`, `token_embedding`, `encode_text_embeddings`, `text_width`.
        texts (Sequence[str]): The texts to encode, in the order the model expects (per class: 4 coarse, 12 fine).
        n_ctx (int, optional): Number of context vectors. (default: :obj:`16`)
        init_std (float, optional): Standard deviation of the context initialisation. (default: :obj:`0.02`)

    Shapes:
        - **input:** none (the texts are fixed at construction)
        - **output:** text features :math:`(T, D)`
    """

    def __init__(self, backbone: Any, texts: Sequence[str], n_ctx: int = 16, init_std: float = 0.02):
        super().__init__()
        if n_ctx < 1:
            raise ValueError(f"'{type(self).__name__}': n_ctx must be >= 1, got {n_ctx}")
        if not texts:
            raise ValueError(f"'{type(self).__name__}': no texts given")
        object.__setattr__(self, "backbone", backbone)  # not a submodule: frozen, kept out of the state dict
        self.n_ctx = n_ctx
        self.init_std = init_std
        self.n_texts = len(texts)
        self.ctx = nn.Parameter(torch.empty(n_ctx, int(backbone.text_width)))
        tokens = backbone.tokenize([" ".join([PLACEHOLDER] * n_ctx) + " " + text for text in texts])
        placeholder_id = backbone.tokenize([PLACEHOLDER])[0, 1]
        if not bool((tokens[:, 1 : 1 + n_ctx] == placeholder_id).all()):
            raise ValueError(
                f"'{type(self).__name__}': the backbone's tokenizer does not map each of {n_ctx} "
                f"'{PLACEHOLDER}' placeholders to one token after the start token; cannot place the context"
            )
        with torch.no_grad():
            embeddings = backbone.token_embedding(tokens)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", embeddings[:, :1].detach().clone(), persistent=False)
        self.register_buffer("token_suffix", embeddings[:, 1 + n_ctx :].detach().clone(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.ctx, std=self.init_std)

    def forward(self) -> Tensor:
        ctx = self.ctx.unsqueeze(0).expand(self.n_texts, -1, -1).to(self.token_prefix.dtype)
        embeddings = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        return self.backbone.encode_text_embeddings(embeddings, self.tokens)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(texts={self.n_texts}, n_ctx={self.n_ctx}, width={self.ctx.size(1)})"


def freeze(backbone: Any) -> Any:
    """Eval mode, no trainable parameters: the VLM stays frozen in HiVE-MIL (a Backbone or a bare nn.Module)."""
    if hasattr(backbone, "freeze"):
        backbone.freeze()
    elif isinstance(backbone, nn.Module):
        backbone.eval()
        backbone.requires_grad_(False)
    return backbone


class FixedTexts(nn.Module):
    """Text features frozen after training, standing in for a `PromptLearner` at prediction (no text tower needed).

    Shapes:
        - **input:** none
        - **output:** the stored text features :math:`(T, D)`
    """

    def __init__(self, features: Tensor):
        super().__init__()
        self.register_buffer("features", features.detach().clone())

    def forward(self) -> Tensor:
        return self.features

    def __repr__(self) -> str:
        return f"{type(self).__name__}(texts={self.features.size(0)}, dim={self.features.size(1)})"
