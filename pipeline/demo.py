"""A deterministic synthetic cohort: small pyramidal JPEG-tiled TIFFs with class-specific tissue morphology.

Two morphologies a patch encoder can tell apart: `glandular` (rings of nuclei around pale lumens in pink stroma)
and `solid` (dense sheets of small dark nuclei). Each has two subtypes that share its low-power (5x) architecture
and differ in 20x detail, for label trees (HMIL): `regular_glands` / `atypical_glands` (enlarged, crowded ring
nuclei) and `small_cell` / `large_cell` (fewer, larger nuclei on a wider lattice). Each slide is a few tissue pieces
on a white background, written as a tiled pyramid with resolution tags so OpenSlide reports its mpp, like a
scanner would.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np
import tifffile

from pipeline.demo_cohort import DemoSlide, demo_slides  # noqa: F401  (re-exported)
from pipeline.formats import atomic_path, write_text_atomic
from pipeline.gdc.clinical import Survival, format_days
from pipeline.sheet import SHEET_COLUMNS

#: demo class -> (morphology, nuclear radius range and nuclear spacing, both in px at 0.5 um/px).
#: The plain morphologies draw exactly as their first subtype.
STYLES: dict[str, tuple[str, tuple[float, float], float]] = {
    "glandular": ("glandular", (4.0, 6.0), 13.0),
    "solid": ("solid", (2.8, 4.2), 11.0),
    "regular_glands": ("glandular", (4.0, 6.0), 13.0),
    "atypical_glands": ("glandular", (6.5, 8.5), 13.0),
    "small_cell": ("solid", (2.8, 4.2), 11.0),
    "large_cell": ("solid", (4.4, 5.8), 14.0),
}
CLASSES = tuple(STYLES)
BACKGROUND = (243, 242, 245)
STROMA = (226, 160, 196)
NUCLEUS = (92, 52, 130)
LUMEN = (250, 238, 246)


#: demo survival: Weibull proportional hazards, h(t) = h0(t) exp(risk), shape WEIBULL_SHAPE and scale BASE_DAYS, with
#: the risk growing with solid sheets and with nuclear size (what the slides show at 5x and 20x) plus a patient-level
#: N(0, RISK_SD^2); censoring uniform on [0, CENSOR_MAX_DAYS], which censors about a third of the patients. The
#: shape above 1 keeps times less dispersed than an exponential, so 16 demo patients carry a visible signal
#: (true-risk C-index about 0.77 on average over seeds).
SOLID_RISK = 3.0
NUCLEAR_RISK_PER_PX = 0.5
BASE_DAYS = 1500.0
WEIBULL_SHAPE = 2.5
RISK_SD = 0.3
CENSOR_MAX_DAYS = 2200.0


def planted_risk(label: str) -> float:
    """The log-hazard ratio a demo class carries: +3 for solid sheets, +0.5 per px of mean nuclear radius over 5 px."""
    morphology, (r_min, r_max), _ = STYLES[label]
    return SOLID_RISK * (morphology == "solid") + NUCLEAR_RISK_PER_PX * ((r_min + r_max) / 2 - 5.0)


def demo_survival(slides: list[DemoSlide], seed: int) -> dict[str, Survival]:
    """slide_id -> its patient's (event, time_days): seeded per case, drawn from the hazard its class's morphology
    implies (the slides of a case share it). Unlabelled slides get none.

    With random-weight backbones a method's C-index on this shows only that it finds a signal the pixels carry.
    """
    per_case: dict[str, Survival] = {}
    for s in slides:
        if s.case_id in per_case or not s.label:
            continue
        rng = np.random.default_rng(slide_seed(seed, "survival:" + s.case_id))
        risk = planted_risk(s.label) + rng.normal(0.0, RISK_SD)
        death = BASE_DAYS * (rng.exponential() / np.exp(risk)) ** (1 / WEIBULL_SHAPE)
        censor = rng.uniform(0.0, CENSOR_MAX_DAYS)
        per_case[s.case_id] = Survival(int(death <= censor), float(round(min(death, censor))))
    return {s.slide_id: per_case[s.case_id] for s in slides if s.case_id in per_case}


def slide_seed(seed: int, slide_id: str) -> int:
    """A per-slide seed that depends only on the cohort seed and the slide id (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{slide_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _tissue_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two to four overlapping ellipses with a wavy border, leaving a white margin (drawn at 1/8 scale)."""
    small = size // 8
    mask = np.zeros((small, small), np.uint8)
    for _ in range(rng.integers(2, 5)):
        cx, cy = rng.uniform(0.3, 0.7, 2) * small
        ax = rng.uniform(0.14, 0.28) * small
        ay = rng.uniform(0.1, 0.22) * small
        cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    noise = cv2.resize(rng.random((16, 16)).astype(np.float32), (small, small), interpolation=cv2.INTER_CUBIC)
    blurred = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), small / 60)
    field = cv2.resize(blurred + 0.35 * (noise - 0.5), (size, size), interpolation=cv2.INTER_LINEAR)
    return field > 0.5


def _draw_nuclei(image: np.ndarray, centres: np.ndarray, radii: np.ndarray, colour: tuple[int, int, int]) -> None:
    for (x, y), r in zip(centres.astype(int), radii.astype(int)):
        cv2.circle(image, (int(x), int(y)), int(r), colour, -1, lineType=cv2.LINE_AA)


def _glandular(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, scale: float, radii: tuple[float, float],
    spacing: float,
) -> None:
    """Glands: a pale lumen ringed by one layer of evenly spaced nuclei, scattered in stroma."""
    size = image.shape[0]
    ys, xs = np.nonzero(mask[:: 8, :: 8])
    n_glands = int(mask.mean() * size * size / (260 * scale) ** 2)
    picks = rng.choice(len(xs), size=min(n_glands, len(xs)), replace=False)
    for i in picks:
        cx, cy = xs[i] * 8, ys[i] * 8
        radius = rng.uniform(45, 90) * scale
        cv2.ellipse(image, (int(cx), int(cy)), (int(radius), int(radius * rng.uniform(0.7, 1.0))),
                    float(rng.uniform(0, 180)), 0, 360, LUMEN, -1, lineType=cv2.LINE_AA)
        n = int(2 * np.pi * radius / (spacing * scale))
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 0.3, n)
        ring = radius * 1.05
        centres = np.stack([cx + ring * np.cos(angles), cy + ring * np.sin(angles)], 1)
        _draw_nuclei(image, centres, rng.uniform(*radii, n) * scale, NUCLEUS)
    # sparse stromal nuclei
    n_sparse = int(mask.sum() / (70 * scale) ** 2)
    centres = rng.uniform(0, size, (n_sparse, 2))
    _draw_nuclei(image, centres, rng.uniform(2, 3.5, n_sparse) * scale, (150, 90, 160))


def _solid(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, scale: float, radii: tuple[float, float],
    spacing: float,
) -> None:
    """Solid sheets: dark nuclei packed on a jittered lattice, no lumens."""
    size = image.shape[0]
    step = spacing * scale
    grid = np.arange(0, size, step)
    gx, gy = np.meshgrid(grid, grid)
    centres = np.stack([gx.ravel(), gy.ravel()], 1) + rng.normal(0, 2.5 * scale, (gx.size, 2))
    radii = rng.uniform(*radii, gx.size) * scale
    _draw_nuclei(image, centres, radii, (70, 30, 110))


def render_slide(label: str, seed: int, size: int, mpp: float) -> np.ndarray:
    """Level-0 RGB image of one synthetic slide; features are sized in microns, so mpp changes pixel sizes."""
    if label not in CLASSES:
        raise ValueError(f"unknown demo class '{label}'; choose from {CLASSES}")
    rng = np.random.default_rng(seed)
    scale = 0.5 / mpp
    mask = _tissue_mask(rng, size)
    tissue = np.empty((size, size, 3), np.uint8)
    tissue[:] = STROMA
    morphology, radii, spacing = STYLES[label]
    (_glandular if morphology == "glandular" else _solid)(rng, tissue, mask, scale, radii, spacing)
    tissue = cv2.GaussianBlur(tissue, (0, 0), 1.2 * scale)
    image = np.empty_like(tissue)
    image[:] = BACKGROUND
    image[mask] = tissue[mask]
    noise = rng.integers(-6, 7, image.shape[:2], dtype=np.int16)[..., None]
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_pyramid_tiff(path: str | Path, image: np.ndarray, mpp: float, n_levels: int = 3, tile: int = 256) -> None:
    """Tiled JPEG pyramid (downsample 4 per level) with resolution tags, atomically; OpenSlide reads it as generic-tiff."""
    px_per_cm = 1e4 / mpp
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=False) as tif:
            level = image
            for i in range(n_levels):
                ds = 4**i
                tif.write(
                    level,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": 90},
                    resolution=(px_per_cm / ds, px_per_cm / ds),
                    resolutionunit="CENTIMETER",
                    subfiletype=0 if i == 0 else 1,
                    metadata=None,
                )
                if min(level.shape[:2]) // 4 < tile:
                    break
                level = cv2.resize(level, (level.shape[1] // 4, level.shape[0] // 4), interpolation=cv2.INTER_AREA)


def make_demo_slide(path: str | Path, slide_id: str, label: str, seed: int, size: int, mpp: float) -> None:
    image = render_slide(label, slide_seed(seed, slide_id), size, mpp)
    write_pyramid_tiff(path, image, mpp)


def write_demo_sheet(
    path: str | Path,
    slides: list[DemoSlide],
    slides_dir: str | Path,
    extra: list[dict] = (),
    survival: Mapping[str, Survival] | None = None,
) -> None:
    """The cohort sheet in the normalized sheet's columns (pipeline.sheet.SHEET_COLUMNS; label empty for unlabelled
    slides). `survival` (slide id -> label) fills event/time_days; slides not in it leave them blank."""
    survival = survival or {}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SHEET_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    rows = [{"slide_id": s.slide_id, "case_id": s.case_id, "label": s.label,
             "file": str(Path(slides_dir) / f"{s.slide_id}.tiff")} for s in slides]  # fmt: skip
    for row in [*rows, *extra]:
        label = survival.get(row["slide_id"])
        if label is not None:
            row = {**row, "event": str(label.event), "time_days": format_days(label.time_days)}
        writer.writerow(row)
    write_text_atomic(path, buf.getvalue())
