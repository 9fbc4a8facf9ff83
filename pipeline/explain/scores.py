"""Where a method looked: one score per patch, per named map, at the scale(s) the method reads.

Every registered method answers `Method.explain(model, bag, device, cache, target)` with a `PatchScores`, so the
prediction step draws heatmaps and top-patch tables for any method without knowing what its numbers are. The
maps are numpy (torch-free here): 5x maps `[N]`, 20x maps `[N, 16]` over the bag's child slots, NaN where there is
no score (a padding child, a child the method did not see). Fold models are combined with `mean_scores`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

CHILDREN = 16  # 4 x 4 children at 20x per 5x patch


@dataclass
class PatchScores:
    """One bag's per-patch evidence: named maps at 5x [N] and at 20x [N, 16] (NaN = no score: padding, or a
    child the method did not see).

    `weights_5x` / `weights_20x` say how much a map counts in the output where the method has such a number
    (HiLa: the softmax weight of each attribute; prompt_risk: each attribute's transport-weighted similarity),
    keyed like the maps; empty otherwise.
    """

    maps_5x: dict[str, np.ndarray]
    maps_20x: dict[str, np.ndarray]
    kind: str  # what the values are: "image-text similarity", "attention", "transport mass", ...
    weights_5x: dict[str, float] = field(default_factory=dict)
    weights_20x: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.maps_5x = {k: np.asarray(v, dtype=float) for k, v in self.maps_5x.items()}
        self.maps_20x = {k: np.asarray(v, dtype=float) for k, v in self.maps_20x.items()}
        shapes = {v.shape for v in self.maps_5x.values()} | {v.shape[:1] for v in self.maps_20x.values()}
        bad = [k for k, v in self.maps_5x.items() if v.ndim != 1]
        bad += [k for k, v in self.maps_20x.items() if v.shape[1:] != (CHILDREN,)]
        if bad or len(shapes) > 1:
            got = {k: v.shape for k, v in (*self.maps_5x.items(), *self.maps_20x.items())}
            raise ValueError(f"PatchScores: 5x maps must be [N] and 20x maps [N, {CHILDREN}] with one N; got {got}")

    @property
    def n_patches(self) -> int | None:
        """N, the bag's 5x patches (None when there is no map)."""
        for v in (*self.maps_5x.values(), *self.maps_20x.values()):
            return int(v.shape[0])
        return None


def scatter_children(values: np.ndarray, parent: np.ndarray, slot: np.ndarray, n: int) -> np.ndarray:
    """Values of M children `[M, ...]` placed in their `[N, 16, ...]` slots; NaN in every slot without a value."""
    values = np.asarray(values, dtype=float)
    out = np.full((n, CHILDREN, *values.shape[1:]), np.nan)
    out[np.asarray(parent, dtype=int), np.asarray(slot, dtype=int)] = values
    return out


def unique_names(names: Sequence[str]) -> list[str]:
    """The names as map keys: a repeated name gets " (2)", " (3)", ... so that no map overwrites another."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def named_maps(values: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Columns of `values [..., T]` as T maps named by `names`."""
    values = np.asarray(values, dtype=float)
    if values.shape[-1] != len(names):
        raise ValueError(f"{values.shape[-1]} score columns but {len(names)} names")
    return {name: values[..., t] for t, name in enumerate(unique_names(names))}


def class_texts(texts: Sequence[str], cls: int) -> tuple[list[str], list[str]]:
    """The 4 coarse (5x) and 12 fine (20x) texts of class `cls` in a prompt file's order (16 per class)."""
    from pipeline.prompt_files import COARSE_PER_CLASS, TEXTS_PER_CLASS

    own = list(texts[cls * TEXTS_PER_CLASS:(cls + 1) * TEXTS_PER_CLASS])
    if len(own) != TEXTS_PER_CLASS:
        raise ValueError(f"class {cls}: {len(texts)} texts hold no {TEXTS_PER_CLASS} texts of this class")
    return own[:COARSE_PER_CLASS], own[COARSE_PER_CLASS:]


def text_similarity_scores(texts: Sequence[str], cls: int, sim_5x: np.ndarray, sim_20x: np.ndarray) -> PatchScores:
    """Class `cls`'s similarity maps: `sim_5x [N, 4]` to its coarse texts, `sim_20x [N, 16, 12]` to its fine ones."""
    coarse, fine = class_texts(texts, cls)
    return PatchScores(named_maps(sim_5x, coarse), named_maps(sim_20x, fine), "image-text similarity")


def _nanmean(arrays: list[np.ndarray]) -> np.ndarray:
    """Mean over the arrays of their finite entries; NaN where none is finite."""
    stack = np.stack(arrays)
    finite = np.isfinite(stack)
    count = finite.sum(0)
    total = np.where(finite, stack, 0.0).sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _mean_maps(maps: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Name by name: a map some models lack is the mean of the models that have it."""
    names = list(dict.fromkeys(name for m in maps for name in m))
    return {name: _nanmean([m[name] for m in maps if name in m]) for name in names}


def _mean_weights(weights: list[dict[str, float]]) -> dict[str, float]:
    names = list(dict.fromkeys(name for w in weights for name in w))
    return {name: float(np.mean([w[name] for w in weights if name in w])) for name in names}


def mean_scores(scores: Sequence[PatchScores]) -> PatchScores:
    """The ensemble's evidence (fold models): each map averaged name by name over the models that scored each
    patch, so a child one model saw and another filtered out gets the first model's score, not half of it."""
    if not scores:
        raise ValueError("mean_scores: no scores to average")
    kinds = {s.kind for s in scores}
    if len(kinds) > 1:
        raise ValueError(f"mean_scores: the models' scores are of different kinds {sorted(kinds)}")
    if len({s.n_patches for s in scores if s.n_patches is not None}) > 1:
        raise ValueError("mean_scores: the scores are of bags of different sizes")
    return PatchScores(
        _mean_maps([s.maps_5x for s in scores]),
        _mean_maps([s.maps_20x for s in scores]),
        scores[0].kind,
        _mean_weights([s.weights_5x for s in scores]),
        _mean_weights([s.weights_20x for s in scores]),
    )
