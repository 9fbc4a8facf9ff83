"""Every patch and text encoder, known by name: its metadata as data, its builder registered where it is defined.

`@register_backbone(BackboneCfg(...))` on a builder function adds a backbone (a duplicate name is an error, not
an overwrite). `create_backbone(name, weights=...)` builds it: the architecture first (random, seeded), then the
weights from a local file, a hub id, or nothing when the caller says `weights="random"` explicitly. This module
imports no torch, so listing backbones (CLI choices, schema checks) stays cheap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pipeline.errors import PipelineError
from pipeline.features.backbone_cfg import (  # noqa: F401  (re-exported: the registry's public names)
    OPENAI_MEAN,
    OPENAI_STD,
    RANDOM,
    BackboneCfg,
    BuildContext,
)

if TYPE_CHECKING:
    from pipeline.features.architectures.base import Backbone

#: what the loader does with undecodable pixels (here, not in the loader, so the CLI can list them without torch).
ON_READ_ERROR = ("fail", "blank")


Builder = Callable[[BackboneCfg, BuildContext], "Backbone"]


@dataclass(frozen=True)
class _Entry:
    cfg: BackboneCfg
    builder: Builder
    module: str


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(cfg: BackboneCfg) -> Callable[[Builder], Builder]:
    """Register `builder(cfg, ctx) -> Backbone` (the random-initialised architecture) under `cfg.name`."""

    def decorate(builder: Builder) -> Builder:
        if cfg.name in _REGISTRY:
            raise ValueError(
                f"backbone '{cfg.name}' is already registered by {_REGISTRY[cfg.name].module}; "
                f"{builder.__module__} cannot register it again"
            )
        _REGISTRY[cfg.name] = _Entry(cfg, builder, builder.__module__)
        return builder

    return decorate


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted (drives CLI choices, the config schema and the tests)."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise PipelineError(f"unknown backbone '{name}'; registered backbones: {', '.join(list_backbones())}")
    return _REGISTRY[name]


def get_builder(name: str) -> Builder:
    """The registered builder (variants such as `{vlm}_hlss` build their VLM with it)."""
    return _entry(name).builder


def get_backbone_cfg(name: str) -> BackboneCfg:
    """The registered cfg (frozen, so callers cannot change the registry's copy)."""
    return _entry(name).cfg


def create_backbone(
    name: str,
    weights: str | None = None,
    *,
    tokenizer: str | None = None,
    seed: int = 0,
    **overrides: Any,
) -> "Backbone":
    """Build a registered backbone in eval mode with frozen parameters.

    Args:
        name: a name from `list_backbones()`.
        weights: a local checkpoint path; the backbone's hub id (or ``hf-hub:org/repo``), downloaded when online;
            ``"random"`` for a seeded random initialisation (logged loudly and recorded in outputs);
            None means the published weights (the hub id), which needs the network.
        tokenizer: a tokenizer file for backbones whose vocabulary is not shipped with open_clip (CONCH).
        seed: seed of the random initialisation (so every slide of a run sees the same random model).
        overrides: BackboneCfg fields to replace; None values are dropped so unset CLI options change nothing.

    Example:
        >>> bb = create_backbone("tiny", weights="random")
        >>> bb.encode_image(bb.transform(patch)[None]).shape
        torch.Size([1, 512])
    """
    entry = _entry(name)
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(BackboneCfg)})
    if unknown:
        raise PipelineError(f"backbone '{name}': unknown cfg override(s) {unknown}")
    cfg = dataclasses.replace(entry.cfg, **changes)
    from pipeline.features.weights import find_tokenizer, resolve_weights
    from pipeline.seeding import seeded

    source = resolve_weights(cfg, weights, seed)
    ctx = BuildContext(tokenizer or find_tokenizer(source.path), source.is_random)
    with seeded(seed):
        backbone = entry.builder(cfg, ctx)
    if not source.is_random:
        backbone.load_weights(source)
    backbone.weights = source
    backbone.freeze()
    return backbone
