"""What every slide reader offers: pyramid geometry, metadata, and RGB reads with white outside the scan."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

WHITE = 255


class SlideReader(ABC):
    """One open slide file. `properties` uses OpenSlide's key names where a reader has the same fact
    (openslide.mpp-x, openslide.objective-power, vendor keys), so mpp resolution has one home (pipeline.slide)."""

    name: ClassVar[str]

    def __init__(self, path: Path, slide_id: str):
        self.path = path
        self.slide_id = slide_id
        self.properties: dict[str, str] = {}
        self.level_dimensions: tuple[tuple[int, int], ...] = ()
        self.level_downsamples: tuple[float, ...] = ()

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @abstractmethod
    def read(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """[h, w, 3] uint8 RGB of the box at level-0 (x, y), `size` px of `level`; outside the image is white."""

    def close(self) -> None:  # noqa: B027  (readers without a handle have nothing to close)
        """Release the file handle."""


def white(size: tuple[int, int]) -> np.ndarray:
    """A white [h, w, 3] RGB image of `size` (w, h): what areas outside the scan read as."""
    return np.full((size[1], size[0], 3), WHITE, np.uint8)
