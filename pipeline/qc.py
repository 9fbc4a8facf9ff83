"""QC pictures: tissue contours and patch grids drawn over the slide overview, as PNG bytes."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.formats import PathLike, write_bytes_atomic
from pipeline.geometry import Polygon

TISSUE_COLOUR = (0, 170, 0)
HOLE_COLOUR = (0, 0, 230)
GRID5_COLOUR = (20, 60, 220)
GRID20_COLOUR = (230, 120, 0)


def write_png(path: PathLike, rgb: np.ndarray, palette: bool = False) -> None:
    """Lossless RGB PNG; with `palette`, quantised to 256 colours (about 4x smaller for a slide overview with a
    colour map on it, which is what prediction writes for every slide and method)."""
    if palette and rgb.ndim == 3:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb)).quantize(256, method=Image.Quantize.FASTOCTREE).save(buf, "PNG")
        write_bytes_atomic(path, buf.getvalue())
        return
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"cannot encode PNG for {path}")
    write_bytes_atomic(path, buf.tobytes())


def read_png(path: PathLike) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: not a decodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def _pts(ring: np.ndarray, downsample: float) -> np.ndarray:
    return np.round(np.asarray(ring) / downsample).astype(np.int32).reshape(-1, 1, 2)


def draw_tissue(overview: np.ndarray, polygons: list[Polygon], downsample: float) -> np.ndarray:
    """Tissue outlines in green and holes in blue (CLAM's colours)."""
    out = overview.copy()
    thickness = max(1, round(max(out.shape[:2]) / 400))
    for poly in polygons:
        cv2.polylines(out, [_pts(poly.outer, downsample)], True, TISSUE_COLOUR, thickness)
        for hole in poly.holes:
            cv2.polylines(out, [_pts(hole, downsample)], True, HOLE_COLOUR, thickness)
    return out


def draw_grids(
    overview: np.ndarray,
    coords_5x: np.ndarray,
    coords_20x: np.ndarray,
    s5: int,
    s20: int,
    downsample: float,
    title: str = "",
) -> np.ndarray:
    """Kept 20x patches shaded orange, kept 5x parents outlined blue, over the overview."""
    out = overview.copy()
    shade = out.copy()
    for x, y in np.asarray(coords_20x).reshape(-1, 2):
        p0 = (int(x / downsample), int(y / downsample))
        p1 = (int((x + s20) / downsample) - 1, int((y + s20) / downsample) - 1)
        cv2.rectangle(shade, p0, p1, GRID20_COLOUR, thickness=cv2.FILLED)
    out = cv2.addWeighted(shade, 0.35, out, 0.65, 0)
    for x, y in np.asarray(coords_20x).reshape(-1, 2):
        p0 = (int(x / downsample), int(y / downsample))
        p1 = (int((x + s20) / downsample) - 1, int((y + s20) / downsample) - 1)
        cv2.rectangle(out, p0, p1, GRID20_COLOUR, thickness=1)
    thickness = max(1, round(max(out.shape[:2]) / 300))
    for x, y in np.asarray(coords_5x).reshape(-1, 2):
        p0 = (int(x / downsample), int(y / downsample))
        p1 = (int((x + s5) / downsample) - 1, int((y + s5) / downsample) - 1)
        cv2.rectangle(out, p0, p1, GRID5_COLOUR, thickness=thickness)
    if title:
        scale = max(0.35, out.shape[1] / 900)
        cv2.putText(out, title, (4, int(14 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return out
