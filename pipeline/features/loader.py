"""One read per 5x parent: the region is read once at 20x resolution, cut into its kept 4x4 children, and shrunk
for the 5x patch; both scales then get the backbone's resize.

Reading the parent once instead of reading the 5x patch and each 20x child separately saves the parent's second
decode (OpenSlide's tile cache makes sixteen small reads of an area cost about one large read). Each DataLoader
worker opens its own slide handle on first use, with the mpp recorded in the patch grid (resolved at patching);
a handle is reopened after a decode error, since OpenSlide may leave it unusable. Corrupt pixels fail the slide
by default (`on_read_error="fail"`), or are replaced by white tiles (`"blank"`), counted per scale.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.errors import SlideError
from pipeline.features.architectures.base import Preprocess
from pipeline.features.registry import ON_READ_ERROR
from pipeline.formats import CHILDREN_PER_PARENT, CHILDREN_PER_SIDE, PatchGrid
from pipeline.slide import Slide, open_slide, recorded_mpp

log = logging.getLogger(__name__)

N_CHILDREN = CHILDREN_PER_PARENT
WHITE = 255


@dataclass(frozen=True)
class GridGeometry:
    """Sizes shared by every parent of a slide: px per patch at target magnification, level-0 px per patch."""

    patch_size: int
    s20: int
    s5: int

    @classmethod
    def from_grid(cls, grid: PatchGrid, slide_id: str) -> "GridGeometry":
        try:
            ps, s20, s5 = (int(grid.attrs[k]) for k in ("patch_size", "patch_size_level0_20x", "patch_size_level0_5x"))
        except KeyError as err:
            raise SlideError(slide_id, f"patch file attrs lack {err.args[0]}; re-run patching") from None
        if s5 != CHILDREN_PER_SIDE * s20:
            raise SlideError(slide_id, f"5x patch side {s5} is not {CHILDREN_PER_SIDE} x the 20x side {s20}")
        return cls(ps, s20, s5)


def child_slots(parent_xy: np.ndarray, children_xy: np.ndarray, s20: int, slide_id: str) -> np.ndarray:
    """Row-major slot (0..15) of each child in its parent's 4x4 block; misaligned children are an error."""
    d = np.asarray(children_xy, np.int64).reshape(-1, 2) - np.asarray(parent_xy, np.int64).reshape(1, 2)
    bad = (d % s20 != 0).any(axis=1) | (d < 0).any(axis=1) | (d >= CHILDREN_PER_SIDE * s20).any(axis=1)
    if bad.any():
        first = children_xy[int(np.argmax(bad))]
        raise SlideError(
            slide_id,
            f"20x patch at {tuple(int(v) for v in first)} is not on the 4x4 grid of its 5x parent at "
            f"{tuple(int(v) for v in parent_xy)} (20x side {s20} level-0 px); the patch file is inconsistent",
        )
    return (d[:, 1] // s20) * CHILDREN_PER_SIDE + d[:, 0] // s20


def read_parent(slide: Slide, x: int, y: int, geometry: GridGeometry) -> np.ndarray:
    """The parent's level-0 box at 20x resolution: [4 * patch_size, 4 * patch_size, 3] uint8."""
    return slide.read_region_scaled(int(x), int(y), geometry.s5, CHILDREN_PER_SIDE * geometry.patch_size)


def parent_patch(region: np.ndarray, patch_size: int) -> np.ndarray:
    """The 5x patch: the whole region area-averaged down to patch_size."""
    return cv2.resize(region, (patch_size, patch_size), interpolation=cv2.INTER_AREA)


def child_patches(region: np.ndarray, slots: np.ndarray, patch_size: int) -> np.ndarray:
    """[k, patch_size, patch_size, 3] crops of the given slots (row-major in the 4x4 block)."""
    out = np.empty((len(slots), patch_size, patch_size, 3), np.uint8)
    for i, slot in enumerate(np.asarray(slots, np.int64)):
        r, c = divmod(int(slot), CHILDREN_PER_SIDE)
        out[i] = region[r * patch_size : (r + 1) * patch_size, c * patch_size : (c + 1) * patch_size]
    return out


class ParentDataset(Dataset):
    """Item i: the 5x parent i of a patch grid and its kept children, resized for the model (uint8)."""

    def __init__(
        self,
        slide_path: str | Path,
        slide_id: str,
        grid: PatchGrid,
        preprocess: Preprocess,
        on_read_error: str = "fail",
    ):
        if on_read_error not in ON_READ_ERROR:
            raise ValueError(f"on_read_error must be one of {ON_READ_ERROR}, got {on_read_error!r}")
        self.slide_path = str(slide_path)
        self.slide_id = slide_id
        self.mpp = recorded_mpp(grid.attrs, slide_id)  # resolved at patching; workers open the slide with it
        self.preprocess = preprocess
        self.on_read_error = on_read_error
        self.geometry = GridGeometry.from_grid(grid, slide_id)
        self.coords_5x = np.asarray(grid.coords_5x, np.int64).reshape(-1, 2)
        coords_20x = np.asarray(grid.coords_20x, np.int64).reshape(-1, 2)
        parents = np.asarray(grid.parent_of_20x, np.int64).reshape(-1)
        if len(parents) != len(coords_20x):
            raise SlideError(slide_id, f"{len(coords_20x)} 20x coords but {len(parents)} parent indices")
        if len(parents) and (parents.min() < 0 or parents.max() >= len(self.coords_5x)):
            raise SlideError(slide_id, "parent_of_20x points outside coords_5x")
        order = np.argsort(parents, kind="stable")
        bounds = np.searchsorted(parents[order], np.arange(len(self.coords_5x) + 1))
        self.rows_20x = [order[bounds[i] : bounds[i + 1]] for i in range(len(self.coords_5x))]
        self.slots = [
            child_slots(self.coords_5x[i], coords_20x[rows], self.geometry.s20, slide_id)
            for i, rows in enumerate(self.rows_20x)
        ]
        for i, slots in enumerate(self.slots):
            if len(np.unique(slots)) != len(slots):
                raise SlideError(slide_id, f"5x patch {i} lists the same 20x child twice")
        self._slide: Slide | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.coords_5x)

    def _handle(self) -> Slide:
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(self.slide_path, self.slide_id, mpp=self.mpp)
            self._pid = os.getpid()
        return self._slide

    def close(self) -> None:
        if self._slide is not None and self._pid == os.getpid():
            self._slide.close()
        self._slide = None

    def __getitem__(self, i: int) -> dict[str, Any]:
        x, y = self.coords_5x[i]
        g = self.geometry
        error, blank = "", False
        try:
            region = read_parent(self._handle(), x, y, g)
        except SlideError as err:
            self.close()  # OpenSlide may leave the handle unusable after a decode error
            if self.on_read_error == "fail":
                error = err.reason
            else:
                log.warning("slide '%s': unreadable pixels in the 5x patch at (%d, %d), substituted white: %s",
                            self.slide_id, x, y, err.reason)
            blank = True
            side = CHILDREN_PER_SIDE * g.patch_size
            region = np.full((side, side, 3), WHITE, np.uint8)
        image_5x = self.preprocess.resize_array(parent_patch(region, g.patch_size))
        size = self.preprocess.input_size
        images_20x = np.empty((len(self.slots[i]), 3, size, size), np.uint8)
        for k, child in enumerate(child_patches(region, self.slots[i], g.patch_size)):
            images_20x[k] = self.preprocess.resize_array(child)
        return {
            "index": int(i),
            "image_5x": torch.from_numpy(image_5x),
            "images_20x": torch.from_numpy(images_20x),
            "rows_20x": torch.from_numpy(self.rows_20x[i].astype(np.int64)),
            "blank": blank,
            "error": error,
        }


def collate_parents(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Parents -> one image batch: the 5x patches first, then every kept child, with the rows they fill."""
    return {
        "images": torch.cat([torch.stack([it["image_5x"] for it in items])] + [it["images_20x"] for it in items]),
        "index_5x": torch.tensor([it["index"] for it in items], dtype=torch.int64),
        "rows_20x": torch.cat([it["rows_20x"] for it in items]),
        "blank_5x": sum(int(it["blank"]) for it in items),
        "blank_20x": sum(len(it["rows_20x"]) for it in items if it["blank"]),
        "errors": [(it["index"], it["error"]) for it in items if it["error"]],
    }


def _worker_init(_: int) -> None:
    """Workers only decode and resize: one thread each, so N workers use N cores."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _worker_context() -> multiprocessing.context.BaseContext:
    """Workers start from a fork server, not as forks of this process: a child forked after this process used
    OpenCV's thread pool hangs (seen: workers stuck in a futex after cv2 resizes here). The server imports the
    loader's modules once (a few seconds), then each worker forks from it cleanly."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def make_loader(dataset: ParentDataset, parents_per_batch: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """In-order batches of parents; each worker opens its own slide handle on its first item."""
    return DataLoader(
        dataset,
        batch_size=max(1, parents_per_batch),
        shuffle=False,
        num_workers=max(0, num_workers),
        collate_fn=collate_parents,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        multiprocessing_context=_worker_context() if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None,
    )
