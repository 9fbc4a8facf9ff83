"""The interface every backbone offers: its preprocessing, image and text encoders, and the text-tower pieces
that a CoOp-style prompt learner needs (input embeddings in, text feature out, gradient flowing through).

A backbone is a plain object holding a frozen `model` (an nn.Module), not a module itself: it is shared by the
loader, the extractor and the prompt learner, and its weights never belong in a trained checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.features.backbone_cfg import BackboneCfg

if TYPE_CHECKING:
    from pipeline.features.weights import WeightsSource

#: smallest vocabulary a real tokenizer has (CLIP: 49408, CONCH: 32007); fewer means a broken offline fallback.
MIN_VOCAB = 5000


def check_vocab(name: str, vocab_size: int, model_vocab: int, source: str) -> None:
    """A tokenizer must look real and its ids must fit the model's token embedding."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(
            f"backbone '{name}': tokenizer {source} has a vocabulary of {vocab_size} tokens (< {MIN_VOCAB}); "
            "this is not the model's tokenizer (an offline fallback?). Give the real tokenizer file."
        )
    if vocab_size > model_vocab:
        raise ValueError(
            f"backbone '{name}': tokenizer {source} has {vocab_size} tokens but the text tower embeds only "
            f"{model_vocab}; it is not this model's tokenizer"
        )


@dataclass(frozen=True)
class Preprocess:
    """A patch to model input: resize (uint8, in loader workers) then normalise (float, on the model's device).

    Split in two so workers ship uint8 tensors (4x less to copy) and normalisation runs where the model runs;
    `__call__` does both, for single patches.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @classmethod
    def from_cfg(cls, cfg: BackboneCfg) -> "Preprocess":
        return cls(cfg.input_size, tuple(cfg.mean), tuple(cfg.std), cfg.interpolation)

    def resize_array(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> [3, S, S] uint8 numpy, resized with PIL as the published preprocessing does.

        PIL and numpy only: single-threaded, so loader workers and a busy CPU do not pay for thread pools.
        """
        from PIL import Image

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB patch, got shape {image.shape} dtype {image.dtype}")
        if image.shape[:2] != (self.input_size, self.input_size):
            mode = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
            image = np.asarray(Image.fromarray(image).resize((self.input_size, self.input_size), mode))
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def resize(self, image: np.ndarray) -> Tensor:
        """HxWx3 uint8 RGB -> [3, S, S] uint8 tensor (see `resize_array`)."""
        return torch.from_numpy(self.resize_array(image))

    def normalize(self, batch: Tensor) -> Tensor:
        """[B, 3, S, S] uint8 (any device) -> float32 normalised with the model's mean and std."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
        return (batch.float() / 255.0 - mean) / std

    def __call__(self, image: np.ndarray) -> Tensor:
        return self.normalize(self.resize(image)[None])[0]


class Backbone:
    """A frozen vision-language model behind one interface.

    Attributes:
        cfg: the BackboneCfg it was built from.
        model: the nn.Module holding every weight (what checkpoints load into).
        embed_dim: D of image and text embeddings.
        text_width: W of the text tower's token embeddings.
        context_length: L, the token length `tokenize` returns.
        weights: where the weights came from (set by `create_backbone`).
    """

    #: checkpoint key prefixes of published heads that embedding does not use (skipped when loading).
    ignored_checkpoint_prefixes: tuple[str, ...] = ()

    def __init__(self, cfg: BackboneCfg, model: nn.Module, text_width: int, context_length: int, tokenizer_name: str):
        self.cfg = cfg
        self.model = model
        self.embed_dim = cfg.embed_dim
        self.text_width = text_width
        self.context_length = context_length
        self.tokenizer_name = tokenizer_name
        self.preprocess = Preprocess.from_cfg(cfg)
        self.weights: WeightsSource | None = None

    def __repr__(self) -> str:
        label = self.weights.label if self.weights is not None else "unloaded"
        name = type(self).__name__
        return f"{name}({self.cfg.name!r}, {self.cfg.architecture}, D={self.embed_dim}, weights={label!r})"

    # --- device and state -------------------------------------------------------------------------------

    def freeze(self) -> "Backbone":
        self.model.eval()
        self.model.requires_grad_(False)
        return self

    def to(self, device: torch.device | str) -> "Backbone":
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def logit_scale(self) -> float:
        """exp of the learned temperature parameter (about 100 for trained CLIP models, 14.3 at random init)."""
        return float(self.model.logit_scale.detach().exp())

    def load_weights(self, source: "WeightsSource") -> None:
        """Load a resolved weights file (strictly, see `pipeline.features.weights.load_checkpoint`); variants whose
        file is not a state dict of `model` (HLSS) override this."""
        from pipeline.features.weights import load_checkpoint

        load_checkpoint(self, source)

    def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a foreign checkpoint layout onto `model`'s keys (default: already ours)."""
        return state

    def attrs(self) -> dict[str, Any]:
        """What output files record about the model that made them."""
        from pipeline.features.architectures import import_open_clip

        open_clip = import_open_clip()

        out: dict[str, Any] = {
            "backbone": self.cfg.name,
            "architecture": self.cfg.architecture,
            "input_size": self.cfg.input_size,
            "mean": tuple(float(v) for v in self.cfg.mean),
            "std": tuple(float(v) for v in self.cfg.std),
            "interpolation": self.cfg.interpolation,
            "embed_dim": self.embed_dim,
            "l2_normalized": bool(self.cfg.normalize_image),
            "tokenizer": self.tokenizer_name,
            "licence": self.cfg.licence,
            "torch_version": str(torch.__version__),
            "open_clip_version": str(open_clip.__version__),
        }
        if self.weights is not None:
            out.update(self.weights.attrs())
        return out

    # --- images -----------------------------------------------------------------------------------------

    def transform(self, image: np.ndarray) -> Tensor:
        """HxWx3 uint8 RGB patch -> normalised [3, S, S] float tensor at the model's input size."""
        return self.preprocess(image)

    def encode_image(self, x: Tensor) -> Tensor:
        """[B, 3, S, S] normalised images -> [B, D] joint embeddings (L2-normalised where the cfg says so)."""
        raise NotImplementedError

    # --- text -------------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Texts -> [T, L] token ids, padded and truncated to the model's context length."""
        raise NotImplementedError

    def encode_text(self, tokens: Tensor) -> Tensor:
        """[T, L] token ids -> [T, D] text embeddings (not normalised)."""
        raise NotImplementedError

    def token_embedding(self, tokens: Tensor) -> Tensor:
        """[T, L] token ids -> [T, L, W], the text tower's input embeddings (before positions)."""
        raise NotImplementedError

    def encode_text_embeddings(self, embeds: Tensor, tokens: Tensor) -> Tensor:
        """Run the text tower from given input embeddings: [T, L, W] and the aligned ids [T, L] -> [T, D].

        `tokens[i, j]` must be the id whose embedding sits at `embeds[i, j]` (any non-padding id in learned
        context slots); the ids only locate the pooling position and padding. Gradients reach `embeds`.
        `encode_text_embeddings(token_embedding(t), t)` equals `encode_text(t)`.
        """
        raise NotImplementedError
