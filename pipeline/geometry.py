"""Tissue geometry shared by segmentation, patching and the QC pictures: polygons in level-0 pixels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Polygon:
    """One tissue piece: outer ring and holes, level-0 (x, y) vertices."""

    outer: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)
