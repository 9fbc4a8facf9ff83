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

    The context :math:`\mathbf{c}` is shared by all texts of all classes, unless `shared` is False: then each text
    has its own (FiVE's learnable query prompts: an empty text each, nothing but context).

    Args:
        backbone: Frozen backbone exposing `tokenize`, `token_embedding`, `encode_text_embeddings`, `text_width`.
        texts (Sequence[str]): The texts to encode, in the order the model expects (per class: 4 coarse, 12 fine).
        n_ctx (int, optional): Number of context vectors. (default: :obj:`16`)
        init_std (float, optional): Standard deviation of the context initialisation. (default: :obj:`0.02`)
        shared (bool, optional): One context for all texts, or one per text. (default: :obj:`True`)

    Shapes:
        - **input:** none (the texts are fixed at construction)
        - **output:** text features :math:`(T, D)`
    """

    def __init__(self, backbone: Any, texts: Sequence[str], n_ctx: int = 16, init_std: float = 0.02,
                 shared: bool = True):
        super().__init__()
        if n_ctx < 1:
            raise ValueError(f"'{type(self).__name__}': n_ctx must be >= 1, got {n_ctx}")
        if not texts:
            raise ValueError(f"'{type(self).__name__}': no texts given")
        object.__setattr__(self, "backbone", backbone)  # not a submodule: frozen, kept out of the state dict
        self.n_ctx = n_ctx
        self.init_std = init_std
        self.n_texts = len(texts)
        self.shared = shared
        width = int(backbone.text_width)
        self.ctx = nn.Parameter(torch.empty(n_ctx, width) if shared else torch.empty(len(texts), n_ctx, width))
        tokens = context_tokens(backbone, texts, n_ctx, type(self).__name__)
        with torch.no_grad():
            embeddings = backbone.token_embedding(tokens)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", embeddings[:, :1].detach().clone(), persistent=False)
        self.register_buffer("token_suffix", embeddings[:, 1 + n_ctx :].detach().clone(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.ctx, std=self.init_std)

    def forward(self) -> Tensor:
        ctx = self.ctx.unsqueeze(0).expand(self.n_texts, -1, -1) if self.shared else self.ctx
        embeddings = torch.cat([self.token_prefix, ctx.to(self.token_prefix.dtype), self.token_suffix], dim=1)
        return self.backbone.encode_text_embeddings(embeddings, self.tokens)

    def __repr__(self) -> str:
        shared = "" if self.shared else ", shared=False"
        return f"{type(self).__name__}(texts={self.n_texts}, n_ctx={self.n_ctx}, width={self.ctx.size(-1)}{shared})"


def context_tokens(backbone: Any, texts: Sequence[str], n_ctx: int, owner: str) -> Tensor:
    """Token ids of `n_ctx` placeholders followed by each text `[T, L]`; the placeholders' slots (1..n_ctx) are
    where a learnable context goes. Refuses a tokenizer that does not give each placeholder one token."""
    tokens = backbone.tokenize([" ".join([PLACEHOLDER] * n_ctx) + " " + text for text in texts])
    placeholder_id = backbone.tokenize([PLACEHOLDER])[0, 1]
    if not bool((tokens[:, 1 : 1 + n_ctx] == placeholder_id).all()):
        raise ValueError(
            f"'{owner}': the backbone's tokenizer does not map each of {n_ctx} '{PLACEHOLDER}' placeholders to one "
            "token after the start token; cannot place the context"
        )
    return tokens


class ContextTextEncoder(nn.Module):
    r"""One learnable context prepended to whatever texts each call brings, through the frozen text tower.

    :class:`PromptLearner` fixes its texts at construction; FiVE's descriptions change every step (fields dropped
    and shuffled), so this encoder tokenizes at call time. The context is shared by all texts.

    .. math::
        \mathbf{t} = \operatorname{TextTower}\big([\mathbf{e}_{SOT}, \mathbf{c}_1, \dots, \mathbf{c}_{n},
            \mathbf{e}(w_1), \dots, \mathbf{e}_{EOT}]\big)

    Args:
        backbone: Frozen backbone exposing `tokenize`, `token_embedding`, `encode_text_embeddings`, `text_width`.
        n_ctx (int, optional): Number of context vectors. (default: :obj:`8`)
        init_std (float, optional): Standard deviation of the context initialisation. (default: :obj:`0.02`)

    Shapes:
        - **input:** a list of T texts
        - **output:** text features :math:`(T, D)`
    """

    def __init__(self, backbone: Any, n_ctx: int = 8, init_std: float = 0.02):
        super().__init__()
        if n_ctx < 1:
            raise ValueError(f"'{type(self).__name__}': n_ctx must be >= 1, got {n_ctx}")
        object.__setattr__(self, "backbone", backbone)  # frozen, kept out of the state dict
        self.n_ctx = n_ctx
        self.init_std = init_std
        self.ctx = nn.Parameter(torch.empty(n_ctx, int(backbone.text_width)))
        context_tokens(backbone, ["a"], n_ctx, type(self).__name__)  # refuse an unusable tokenizer now
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.ctx, std=self.init_std)

    def forward(self, texts: Sequence[str]) -> Tensor:
        if not len(texts):
            return self.ctx.new_zeros(0, int(self.backbone.embed_dim))
        tokens = context_tokens(self.backbone, texts, self.n_ctx, type(self).__name__)
        with torch.no_grad():
            embeddings = self.backbone.token_embedding(tokens)
        ctx = self.ctx.unsqueeze(0).expand(len(texts), -1, -1).to(embeddings.device, embeddings.dtype)
        embeddings = torch.cat([embeddings[:, :1], ctx, embeddings[:, 1 + self.n_ctx :]], dim=1)
        return self.backbone.encode_text_embeddings(embeddings, tokens)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_ctx={self.n_ctx}, width={self.ctx.size(1)})"


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
