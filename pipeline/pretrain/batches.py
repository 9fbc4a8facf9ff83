"""HLSS batches: patients x slides x patches x augmented views, drawn from the tile pool by step number.

Every draw (which patients, slides and tiles, and each view's augmentation) comes from a generator seeded by
(seed, step), so step n sees the same batch whether the run went straight through or was killed and resumed.
Group ids are the real patient, slide and tile of each image: a patient with one slide, or a slide with few tiles,
repeats them, and the repeats are positives of each other as they should be.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pipeline.errors import PipelineError
from pipeline.formats import TilePoolIndex, TileReader
from pipeline.pretrain import LEVELS
from pipeline.seeding import seeded


@dataclass(frozen=True)
class BatchShape:
    """Batch layout (HLSS: 32 patients x 2 slides x 2 patches x 2 views)."""

    patients: int = 8
    slides: int = 2
    patches: int = 2
    views: int = 2

    @property
    def images(self) -> int:
        return self.patients * self.slides * self.patches * self.views


@dataclass
class Batch:
    images: Tensor  # [B, 3, S, S] uint8, augmented, at the model's input size
    groups: dict[str, Tensor]  # level -> [B] int64 (patch, slide, patient)


class Hierarchy:
    """The pool's tiles grouped by patient, then slide."""

    def __init__(self, index: TilePoolIndex):
        self.index = index
        by_case: dict[str, list[int]] = {}
        for s, case in enumerate(index.case_ids):
            by_case.setdefault(case, []).append(s)
        self.cases = sorted(by_case)
        self.slides_of_case = [np.asarray(by_case[c], np.int64) for c in self.cases]
        self.tiles_of_slide = [np.flatnonzero(index.slide_of == s) for s in range(len(index.slide_ids))]
        if len(self.cases) < 2:
            raise PipelineError(f"the tile pool has {len(self.cases)} patient(s); contrast needs at least two")

    def draw(self, rng: np.random.Generator, shape: BatchShape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tile rows [P, S, T], their slide [P, S, T], their patient [P, S, T]); patients without replacement
        when the pool has enough."""
        cases = rng.choice(len(self.cases), size=shape.patients, replace=shape.patients > len(self.cases))
        tiles = np.empty((shape.patients, shape.slides, shape.patches), np.int64)
        slides = np.empty_like(tiles)
        for i, c in enumerate(cases):
            own = self.slides_of_case[c]
            chosen = rng.choice(own, size=shape.slides, replace=shape.slides > len(own))
            for j, s in enumerate(chosen):
                rows = self.tiles_of_slide[s]
                tiles[i, j] = rng.choice(rows, size=shape.patches, replace=shape.patches > len(rows))
                slides[i, j] = s
        patients = np.broadcast_to(cases[:, None, None], tiles.shape).copy()
        return tiles, slides, patients


def build_augment(input_size: int):
    """torchvision v2 augmentations of a uint8 tile: random crop-and-resize to the model's input, flips and right-angle
    turns (tissue has no orientation), colour jitter (staining varies), sometimes blur or grey."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(input_size, scale=(0.4, 1.0), ratio=(0.8, 1.25), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomChoice([v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]),
        v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05)], p=0.8),
        v2.RandomGrayscale(p=0.1),
        v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=0.3),
    ])


def step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


class BatchSource:
    """Batch `step` of a run: drawn, read from the pool, augmented (deterministic in (seed, step))."""

    def __init__(self, tiles: TileReader, hierarchy: Hierarchy, shape: BatchShape, input_size: int, seed: int):
        self.tiles = tiles
        self.hierarchy = hierarchy
        self.shape = shape
        self.seed = seed
        self.augment = build_augment(input_size)

    def __call__(self, step: int) -> Batch:
        s = step_seed(self.seed, step)
        tiles, slides, patients = self.hierarchy.draw(np.random.default_rng(s), self.shape)
        views = self.shape.views
        pixels = torch.from_numpy(self.tiles.read(tiles.reshape(-1))).permute(0, 3, 1, 2)  # [P*S*T, 3, H, W]
        with seeded(s):
            images = torch.stack([self.augment(tile) for tile in pixels for _ in range(views)])
        per_view = lambda a: torch.from_numpy(np.repeat(a.reshape(-1), views))  # noqa: E731
        groups = {"patch": per_view(tiles), "slide": per_view(slides), "patient": per_view(patients)}
        assert set(groups) == set(LEVELS)
        return Batch(images, groups)
