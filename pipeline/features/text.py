"""Text embeddings of a prompt file with a backbone's own text tower (zero-shot checks, model initialisation).

The prompt file is HiVE-MIL's `{class: {term: explanation}}` (validated by `pipeline.prompt_files`); each entry is read
as "term: explanation", the same string the prompt learner encodes. Embeddings are stored unnormalised, [C, 16, D]
in file order (per class: 4 coarse, then 12 fine).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline.device import resolve_device
from pipeline.features.architectures.base import Backbone
from pipeline.features.registry import create_backbone
from pipeline.formats import PathLike, TextEmbeddings, write_text_embeddings
from pipeline.prompt_files import COARSE_PER_CLASS, FINE_PER_CLASS, load_prompts
from pipeline.seeding import deterministic

log = logging.getLogger(__name__)


def encode_texts(backbone: Backbone, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """[T, D] float32 text embeddings, fp32 on any device (a few hundred texts cost nothing)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = backbone.tokenize(texts[start : start + batch_size]).to(backbone.device)
            out.append(backbone.encode_text(tokens).float().cpu())
    if not out:
        return np.zeros((0, backbone.embed_dim), np.float32)
    return torch.cat(out).numpy()


def embed_prompts(
    prompts_path: PathLike,
    out: PathLike,
    backbone: str | Backbone = "tiny",
    *,
    weights: str | None = None,
    tokenizer: str | None = None,
    labels: Sequence[str] | None = None,
    device: str = "auto",
    seed: int = 0,
) -> TextEmbeddings:
    """Encode every text of a prompt file and write `out` (the text-embed stage's library call).

    A survival task's attribute prompts (pipeline.attribute_prompts) are written with their two levels as classes.
    """
    from pipeline.attribute_prompts import is_attribute_file, load_attribute_prompts, read_json

    if is_attribute_file(read_json(prompts_path)):
        attributes = load_attribute_prompts(prompts_path)
        groups, layout = attributes.labels, {"text_format": "attribute sentence", "n_attributes": attributes.k}
        texts = attributes.group_texts()
    else:
        prompts = load_prompts(prompts_path, labels)
        groups, texts = prompts.labels, [c.texts() for c in prompts.classes]
        layout = {"n_coarse": COARSE_PER_CLASS, "n_fine": FINE_PER_CLASS, "text_format": "term: explanation"}
    dev = resolve_device(device)
    with deterministic(seed, dev):
        model = backbone
        if isinstance(backbone, str):
            model = create_backbone(backbone, weights, tokenizer=tokenizer, seed=seed)
        model.to(dev)
        flat = [t for per_class in texts for t in per_class]
        emb = encode_texts(model, flat).reshape(len(texts), len(texts[0]), -1)
    result = TextEmbeddings(
        emb,
        groups,
        texts,
        {
            **model.attrs(),
            "prompts_file": str(prompts_path),
            **layout,
            "normalized": False,
            "logit_scale": model.logit_scale,
        },
    )
    write_text_embeddings(out, result)
    log.info("%s: %d classes x %d texts -> %s (%s)", Path(prompts_path).name, len(texts), len(texts[0]), out,
             model.cfg.name)
    return result
