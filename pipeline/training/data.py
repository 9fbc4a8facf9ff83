"""Slide bags from explicit feature files: the rules hand over file lists, nothing here builds a path.

A slide's bag is its 5x features `[N, D]`, the coordinate-linked children `[N, 16, D]` with their mask, and the
level-0 coordinates. Files are paired by slide id (file name stem), as ours and HiVE-MIL's downloads are named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from pipeline.errors import PipelineError, SlideError
from pipeline.formats import PathLike, read_features, read_hierarchical


@dataclass
class SlideBag:
    """One slide's features: 5x `[N, D]`, children `[N, 16, D]`, mask `[N, 16]`, and their level-0 coords."""

    slide_id: str
    x5: Tensor
    x20: Tensor
    mask: Tensor
    coords_5x: np.ndarray
    coords_20x: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.x5.numel() * 4 + self.x20.numel() * 4 + self.mask.numel()

    @property
    def embed_dim(self) -> int:
        return int(self.x5.shape[1])

    def on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        return self.x5.to(device), self.x20.to(device), self.mask.to(device)


@dataclass(frozen=True)
class SlideFeatures:
    """The two feature files of one slide."""

    x5: Path
    hierarchical: Path


def pair_feature_files(x5_files: Iterable[PathLike], hierarchical_files: Iterable[PathLike]) -> dict[str, SlideFeatures]:
    """slide_id -> its 5x and hierarchical files, paired by file stem; every 5x file needs its partner."""
    x5 = {Path(p).stem: Path(p) for p in x5_files}
    hier = {Path(p).stem: Path(p) for p in hierarchical_files}
    unpaired = sorted(set(x5) ^ set(hier))
    if unpaired:
        raise PipelineError(f"feature files: slide(s) {unpaired[:10]} have a 5x or a hierarchical file but not both")
    return {sid: SlideFeatures(x5[sid], hier[sid]) for sid in sorted(x5)}


def load_slide(slide_id: str, files: SlideFeatures) -> SlideBag:
    """Read and check one slide's features; a missing mask (HiVE-MIL's files) means "non-zero children"."""
    path5, path_h = files.x5, files.hierarchical
    for path in (path5, path_h):
        if not path.exists():
            raise SlideError(slide_id, f"feature file {path} not found")
    x5, coords5, _ = read_features(path5)
    x20, coords20, mask, _ = read_hierarchical(path_h)
    if x5.ndim != 2 or x20.ndim != 3:
        raise SlideError(slide_id, f"features must be [N, D] and [N, 16, D]; got {x5.shape} ({path5}), {x20.shape} ({path_h})")
    if x20.shape[0] != x5.shape[0] or x20.shape[2] != x5.shape[1]:
        raise SlideError(
            slide_id, f"5x features {x5.shape} ({path5}) and hierarchical features {x20.shape} ({path_h}) do not "
            "match row for row"
        )
    if x5.shape[0] == 0:
        raise SlideError(slide_id, f"no patches in {path5}")
    if mask is None:
        mask = np.any(x20 != 0, axis=-1)
    if mask.shape != x20.shape[:2]:
        raise SlideError(slide_id, f"mask {mask.shape} does not match features {x20.shape} in {path_h}")
    return SlideBag(
        slide_id,
        torch.from_numpy(np.ascontiguousarray(x5, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(x20, dtype=np.float32)),
        torch.from_numpy(np.asarray(mask, dtype=bool)),
        np.asarray(coords5),
        np.asarray(coords20),
    )


class FeatureStore:
    """Loads slides on demand and keeps them in memory up to a byte budget (few-shot sets fit; test sets may not)."""

    def __init__(self, files: Mapping[str, SlideFeatures], cache_bytes: float = 4e9):
        self.files = dict(files)
        self.cache_bytes = cache_bytes
        self._cache: dict[str, SlideBag] = {}
        self._used = 0

    def __contains__(self, slide_id: str) -> bool:
        return slide_id in self.files

    def get(self, slide_id: str) -> SlideBag:
        if slide_id in self._cache:
            return self._cache[slide_id]
        if slide_id not in self.files:
            raise SlideError(slide_id, "no feature files were given for this slide")
        bag = load_slide(slide_id, self.files[slide_id])
        if self._used + bag.nbytes <= self.cache_bytes:
            self._cache[slide_id] = bag
            self._used += bag.nbytes
        return bag


class PatientBags:
    """A survival task's bags: all slides of a patient as one bag (their regions concatenated, links kept).

    Bags are built on demand from the slide store (which caches the slides), keyed by case id.
    """

    def __init__(self, store: FeatureStore, members: Mapping[str, list[str]]):
        self.store = store
        self.members = dict(members)

    def __contains__(self, case_id: str) -> bool:
        slides = self.members.get(case_id)
        return bool(slides) and all(s in self.store for s in slides)

    def get(self, case_id: str) -> SlideBag:
        if case_id not in self.members:
            raise PipelineError(f"case '{case_id}' is not a patient of this task")
        bags = [self.store.get(s) for s in self.members[case_id]]
        if len(bags) == 1:
            only = bags[0]
            return SlideBag(case_id, only.x5, only.x20, only.mask, only.coords_5x, only.coords_20x)
        return SlideBag(
            case_id,
            torch.cat([b.x5 for b in bags]),
            torch.cat([b.x20 for b in bags]),
            torch.cat([b.mask for b in bags]),
            np.concatenate([b.coords_5x for b in bags]),
            np.concatenate([b.coords_20x for b in bags]),
        )
