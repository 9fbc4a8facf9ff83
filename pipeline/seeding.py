"""Every seed of the package derived or applied in one place, so the same seed draws the same numbers everywhere.

`slide_rng` keys a numpy generator by (seed, slide id), so a slide's draws do not depend on which other slides a
cohort holds or the order they come in. `seeded` applies a torch seed to a block without touching the caller's
random state; `deterministic` adds deterministic algorithms on the CPU; `seed_everything` seeds a whole training
run. torch is imported only by the functions that seed it, so torch-free modules can draw per-slide samples.
"""

from __future__ import annotations

import contextlib
import random
import zlib
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:
    import torch


def slide_rng(seed: int, slide_id: str) -> np.random.Generator:
    """numpy's PCG64 seeded by (seed, crc32 of the slide id): stable across runs, processes and Python versions."""
    return np.random.default_rng([seed, zlib.crc32(slide_id.encode())])


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch for a block, restoring the caller's CPU generator afterwards (its draws stay its own)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def deterministic(seed: int, device: "torch.device") -> Iterator[None]:
    """`seeded`, and on the CPU with deterministic algorithms (bit-identical reruns), restoring the caller's
    setting afterwards."""
    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    try:
        with seeded(seed):
            yield
    finally:
        torch.use_deterministic_algorithms(previous)


def seed_everything(seed: int) -> None:
    """Same seed, same run: Python, numpy and torch generators (CPU runs are then bit-identical)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
