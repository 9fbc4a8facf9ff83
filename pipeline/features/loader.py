"""Decoding only what is encoded: per 5x parent, the 5x patch from the pyramid level made for 5x and the kept 20x
children from the 20x level, read where they are kept; then full model batches across parents.

Per parent, the kept children are read as one box (their bounding box, when they fill at least MIN_BOX_FILL of it;
a fully kept parent is one read) or as one box per run of adjacent kept children in a row, so a parent with few
children kept does not decode its empty corners. Each child is then resized to `patch_size` on its own, exactly
as `Slide.read_region_scaled` reads a single patch, so the pixels do not depend on how they were grouped.

Parents are decoded inline, in threads of this process (decoders release the GIL, so decoding overlaps the
model), or in DataLoader worker processes; each yields the same parents in the same order, and `PatchBatcher`
cuts the stream into batches of exactly `batch_size` images, so features do not depend on the loading mode.
Each thread or worker opens its own slide handle, with the mpp recorded in the patch grid; a handle is reopened
after a decode error, since a reader may leave it unusable. Corrupt pixels fail the slide by default
(`on_read_error="fail"`), or the parent's patches become white tiles (`"blank"`), counted per scale.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.errors import SlideError
from pipeline.features.architectures.base import Preprocess
from pipeline.features.registry import ON_READ_ERROR
from pipeline.formats import CHILDREN_PER_PARENT, CHILDREN_PER_SIDE, PatchGrid
from pipeline.readers import DEFAULT_READER
from pipeline.readers.base import WHITE
from pipeline.slide import Slide, open_slide, recorded_mpp, resize_square

log = logging.getLogger(__name__)

N_CHILDREN = CHILDREN_PER_PARENT
#: kept children must fill at least this share of their bounding box for it to be read as one box.
MIN_BOX_FILL = 0.75


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


def read_boxes(slots: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Cell boxes (row0, row1, col0, col1), half-open, that cover the kept slots: their bounding box when they fill
    at least MIN_BOX_FILL of it, else one box per run of adjacent kept slots in a row."""
    slots = np.asarray(slots, np.int64)
    if len(slots) == 0:
        return []
    rows, cols = np.divmod(slots, CHILDREN_PER_SIDE)
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    if len(slots) >= MIN_BOX_FILL * (r1 - r0) * (c1 - c0):
        return [(r0, r1, c0, c1)]
    boxes = []
    for r in np.unique(rows):
        kept = np.sort(cols[rows == r])
        start = prev = int(kept[0])
        for c in [int(v) for v in kept[1:]] + [None]:
            if c is None or c != prev + 1:
                boxes.append((int(r), int(r) + 1, start, prev + 1))
                start = c
            prev = c if c is not None else prev
    return boxes


def cut_children(box: np.ndarray, cells: tuple[int, int, int, int], side: int, where: dict[int, int],
                 out: np.ndarray) -> None:
    """Each kept slot inside a read box of cells (row0, row1, col0, col1) into `out[where[slot]]`, resized alone
    exactly as a single-patch read is (`resize_square`)."""
    r0, r1, c0, c1 = cells
    for r in range(r0, r1):
        for c in range(c0, c1):
            i = where.get(r * CHILDREN_PER_SIDE + c)
            if i is not None:
                cell = box[(r - r0) * side : (r - r0 + 1) * side, (c - c0) * side : (c - c0 + 1) * side]
                out[i] = resize_square(cell, out.shape[1])


def read_parent_patches(slide: Slide, x: int, y: int, slots: np.ndarray, g: GridGeometry
                        ) -> tuple[np.ndarray, np.ndarray, int]:
    """The 5x patch, the kept children [k, ps, ps, 3] in the order of `slots`, and the level pixels decoded.

    The 5x patch comes from the level `read_region_scaled` would use for it (a coarser one where the pyramid has
    it, as TRIDENT and CLAM read it), the children from the 20x level, box by box (`read_boxes`). Where 5x has no
    coarser level than 20x (e.g. a single-level slide), the parent's box is read once for both scales. Either
    way every patch equals its single-patch read."""
    ps = g.patch_size
    level5, side5 = slide.level_for(g.s5, ps)
    level20, side20 = slide.level_for(g.s20, ps)
    children = np.empty((len(slots), ps, ps, 3), np.uint8)
    where = {int(s): i for i, s in enumerate(np.asarray(slots, np.int64))}
    if level5 == level20 and side5 == CHILDREN_PER_SIDE * side20:
        region = slide.read_level(x, y, level20, (side5, side5))
        cut_children(region, (0, CHILDREN_PER_SIDE, 0, CHILDREN_PER_SIDE), side20, where, children)
        return resize_square(region, ps), children, side5 * side5
    five = resize_square(slide.read_level(x, y, level5, (side5, side5)), ps)
    decoded = side5 * side5
    for r0, r1, c0, c1 in read_boxes(slots):
        box = slide.read_level(x + c0 * g.s20, y + r0 * g.s20, level20, ((c1 - c0) * side20, (r1 - r0) * side20))
        decoded += box.shape[0] * box.shape[1]
        cut_children(box, (r0, r1, c0, c1), side20, where, children)
    return five, children, decoded


class ParentDataset(Dataset):
    """Item i: the 5x parent i of a patch grid and its kept children, decoded once and resized for each model input
    (uint8): `images[j]` is for `preprocesses[j]`."""

    def __init__(
        self,
        slide_path: str | Path,
        slide_id: str,
        grid: PatchGrid,
        preprocess: Preprocess | Sequence[Preprocess],
        on_read_error: str = "fail",
        reader: str = DEFAULT_READER,
    ):
        if on_read_error not in ON_READ_ERROR:
            raise ValueError(f"on_read_error must be one of {ON_READ_ERROR}, got {on_read_error!r}")
        self.slide_path = str(slide_path)
        self.slide_id = slide_id
        self.mpp = recorded_mpp(grid.attrs, slide_id)  # resolved at patching; workers open the slide with it
        self.preprocesses = [preprocess] if isinstance(preprocess, Preprocess) else list(preprocess)
        self.on_read_error = on_read_error
        self.reader = reader
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
        self._local = threading.local()
        self._handles: list[Slide] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.coords_5x)

    def __getstate__(self) -> dict[str, Any]:  # workers get the grid, not this process's handles or locks
        state = {k: v for k, v in self.__dict__.items() if k not in ("_local", "_handles", "_lock")}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local, self._handles, self._lock = threading.local(), [], threading.Lock()

    def _handle(self) -> Slide:
        """This thread's slide handle (opened on first use: threads and worker processes each get their own)."""
        slide = getattr(self._local, "slide", None)
        if slide is None or getattr(self._local, "pid", None) != os.getpid():
            slide = open_slide(self.slide_path, self.slide_id, mpp=self.mpp, reader=self.reader)
            self._local.slide, self._local.pid = slide, os.getpid()
            with self._lock:
                self._handles.append(slide)
        return slide

    def _drop_handle(self) -> None:
        slide = getattr(self._local, "slide", None)
        self._local.slide = None
        if slide is not None:
            with self._lock:
                if slide in self._handles:
                    self._handles.remove(slide)
            slide.close()

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
        for slide in handles:
            slide.close()
        self._local = threading.local()

    def __getitem__(self, i: int) -> dict[str, Any]:
        x, y = (int(v) for v in self.coords_5x[i])
        g, ps = self.geometry, self.geometry.patch_size
        error, blank = "", False
        try:
            five, children, decoded = read_parent_patches(self._handle(), x, y, self.slots[i], g)
        except SlideError as err:
            self._drop_handle()  # a reader may leave the handle unusable after a decode error
            if self.on_read_error == "fail":
                error = err.reason
            else:
                log.warning("slide '%s': unreadable pixels in the 5x patch at (%d, %d), substituted white: %s",
                            self.slide_id, x, y, err.reason)
            blank, decoded = True, 0
            five = np.full((ps, ps, 3), WHITE, np.uint8)
            children = np.full((len(self.slots[i]), ps, ps, 3), WHITE, np.uint8)
        patches = [five, *children]
        inputs = []
        for prep in self.preprocesses:
            images = np.empty((len(patches), 3, prep.input_size, prep.input_size), np.uint8)
            for k, patch in enumerate(patches):
                images[k] = prep.resize_array(patch)
            inputs.append(torch.from_numpy(images))
        return {
            "index": int(i),
            "images": inputs,  # per preprocessing: the 5x patch first, then the kept children
            "rows_20x": self.rows_20x[i].astype(np.int64),
            "blank": blank,
            "error": error,
            "decoded_px": decoded,
        }


@dataclass
class Batch:
    """Exactly `batch_size` images (the last batch fewer), one tensor per preprocessing, with the output row of each
    image: 5x rows where `is_5x`."""

    images: list[torch.Tensor]
    is_5x: np.ndarray
    rows: np.ndarray


class PatchBatcher:
    """Cuts the in-order stream of parents into batches of exactly `batch_size` images, whatever the parents'
    child counts, so that every forward pass is full and the batches do not depend on how parents were loaded."""

    def __init__(self, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._images: list[list[torch.Tensor]] = []  # per parent, per preprocessing
        self._is_5x: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._count = 0

    def add(self, item: dict[str, Any]) -> Iterator[Batch]:
        """Queue one parent's images; yield every batch that is now full."""
        rows_20x = np.asarray(item["rows_20x"], np.int64)  # a worker's DataLoader hands numpy over as tensors
        n20 = len(rows_20x)
        self._images.append(item["images"])
        self._is_5x.append(np.r_[True, np.zeros(n20, bool)])
        self._rows.append(np.r_[np.int64(int(item["index"])), rows_20x])
        self._count += 1 + n20
        while self._count >= self.batch_size:
            yield self._take(self.batch_size)

    def flush(self) -> Iterator[Batch]:
        if self._count:
            yield self._take(self._count)

    def _take(self, n: int) -> Batch:
        images = [torch.cat(per) for per in zip(*self._images)]
        is_5x, rows = np.concatenate(self._is_5x), np.concatenate(self._rows)
        self._images, self._is_5x, self._rows = [[im[n:] for im in images]], [is_5x[n:]], [rows[n:]]
        self._count -= n
        return Batch([im[:n] for im in images], is_5x[:n], rows[:n])


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


def _in_threads(dataset: ParentDataset, threads: int, ahead: int) -> Iterator[dict[str, Any]]:
    """dataset[0], dataset[1], ... decoded by `threads` threads, at most `ahead` parents in flight."""
    with ThreadPoolExecutor(threads, thread_name_prefix=f"decode-{dataset.slide_id}") as pool:
        pending: deque[Future] = deque()
        next_index = 0
        while pending or next_index < len(dataset):
            while next_index < len(dataset) and len(pending) < ahead:
                pending.append(pool.submit(dataset.__getitem__, next_index))
                next_index += 1
            yield pending.popleft().result()


def iter_parents(dataset: ParentDataset, num_workers: int, threads: int, ahead: int, pin_memory: bool
                 ) -> Iterator[dict[str, Any]]:
    """Every parent in index order: in worker processes (num_workers > 0), in decode threads of this process
    (threads > 0), or inline."""
    if num_workers > 0:
        loader = DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
            worker_init_fn=_worker_init, multiprocessing_context=_worker_context(),
            prefetch_factor=max(2, ahead // num_workers),
        )
        yield from loader
    elif threads > 0:
        yield from _in_threads(dataset, threads, ahead)
    else:
        for i in range(len(dataset)):
            yield dataset[i]


@dataclass(frozen=True)
class LoadingPlan:
    """How parents are decoded: `workers` processes, else `threads` threads of this process, else inline."""

    workers: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.workers} workers" if self.workers else f"{self.threads} decode threads"


AUTO = "auto"


def loading_plan(num_workers: int | str, device: torch.device, cpus: int | None = None) -> LoadingPlan:
    """`auto`: on a GPU, worker processes on the cores the model does not need (up to 8), since decoding is then
    the bottleneck; on the CPU, one decode thread beside the model's threads (decoders release the GIL, and a
    worker pool's start-up and its competition with torch's threads made workers slower on 2 cores). A number N:
    N worker processes (0 = decode inline, no overlap)."""
    if num_workers != AUTO:
        n = int(num_workers)
        if n < 0:
            raise ValueError(f"num_workers must be >= 0 or 'auto', got {num_workers!r}")
        return LoadingPlan(n, 0)
    cpus = cpus or len(os.sched_getaffinity(0))
    if device.type == "cuda" and cpus > 2:
        return LoadingPlan(min(8, cpus - 1), 0)
    return LoadingPlan(0, 1)
