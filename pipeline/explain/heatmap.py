"""Heatmaps a pathologist can read: per-patch scores over the slide overview, with a title and a colour bar.

Every PNG has an exact pixel size. The figure is `width x height` px at DPI = 72 (so 1 pt = 1 px and font
sizes are pixel sizes), drawn on a bare Agg canvas (no pyplot state, no bbox_inches="tight", which would change
the size), and the painted overview is placed pixel for pixel with `Figure.figimage`: the overview is resized
to the image area first and the patches are painted at that resolution, so patch edges stay crisp and pixels
without a score are the overview's own. The layout (`heatmap_layout`, `grid_layout`) is computed here, not
by matplotlib, so tests and callers know where the image, the colour bar and the text are.

Coordinates are those of `patches/{slide}.h5`: level-0 top-left corners (x right, y down); `downsample` is
level-0 pixels per overview pixel, as `Slide.read_overview` returns it.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from pipeline.formats import PathLike

if TYPE_CHECKING:
    from matplotlib.colors import Normalize

DPI = 72
ALPHA = 0.5
_CHAR_W = 0.56  # DejaVu Sans mean advance per font px (slightly generous), to wrap text to a pixel width
_CHAR_W_BOLD = 0.64
_DIGIT_W = 0.64  # digits are wider than mean text
_LINE = 1.3  # line height per font px
_TICK = 0.85  # tick labels and the colour-bar note, relative to the body text
_OUTLINE = (30, 30, 30)


# --- scores and colours ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreRange:
    """Min and max of the finite scores (`n` of them); the colour bar shows exactly this range."""

    lo: float
    hi: float
    n: int

    @property
    def constant(self) -> bool:
        return self.n > 0 and self.lo == self.hi


def score_range(*maps: np.ndarray) -> ScoreRange:
    """The finite min-max over one or several maps (several: a shared colour scale)."""
    values = np.concatenate([np.asarray(m, dtype=float).reshape(-1) for m in maps]) if maps else np.zeros(0)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return ScoreRange(0.0, 1.0, 0)
    return ScoreRange(float(finite.min()), float(finite.max()), int(len(finite)))


def make_norm(rng: ScoreRange) -> "Normalize":
    """min-max normalisation; a constant map is widened symmetrically so it renders mid-colormap."""
    from matplotlib.colors import Normalize

    if rng.constant:
        pad = abs(rng.lo) * 0.05 or 0.5
        return Normalize(rng.lo - pad, rng.hi + pad)
    return Normalize(rng.lo, rng.hi)


def _rgb(image: np.ndarray) -> np.ndarray:
    """The overview as HxWx3 uint8 (float thumbnails are clipped), so painting never changes its dtype."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overview must be HxWx3, got {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image


def _patch_boxes(
    coords: np.ndarray, patch_size_level0: float, downsample: float | tuple[float, float], shape: tuple[int, int]
) -> np.ndarray:
    """[P, 4] (r0, r1, c0, c1) pixel boxes, clipped to the image.

    Both edges are rounded from level-0 positions, so neighbouring patches share an edge (no gaps, no double
    paint); every patch is at least one pixel.
    """
    dx, dy = (float(v) for v in np.broadcast_to(np.asarray(downsample, dtype=float), (2,)))
    xy = np.asarray(coords, dtype=float).reshape(-1, 2)
    s = float(patch_size_level0)
    c0 = np.round(xy[:, 0] / dx)
    c1 = np.maximum(np.round((xy[:, 0] + s) / dx), c0 + 1)
    r0 = np.round(xy[:, 1] / dy)
    r1 = np.maximum(np.round((xy[:, 1] + s) / dy), r0 + 1)
    h, w = shape
    boxes = np.stack([np.clip(r0, 0, h), np.clip(r1, 0, h), np.clip(c0, 0, w), np.clip(c1, 0, w)], axis=1)
    return boxes.astype(np.int64)


def _paint(shape: tuple[int, int], boxes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean value per pixel over the boxes covering it, and the covered mask (vectorised: summed-area tables).

    Each box adds +v/-v at its four corners of a difference array; two cumulative sums give, per pixel, the sum
    of the values and the count of boxes covering it. `values` are in [0, 1], so float32 sums are accurate to
    well under one colour step.
    """
    h, w = shape
    r0, r1, c0, c1 = boxes.T
    acc = np.zeros((h + 1, w + 1), dtype=np.float32)
    cnt = np.zeros((h + 1, w + 1), dtype=np.int32)
    for grid, v in ((acc, values.astype(np.float32)), (cnt, np.ones(len(values), dtype=np.int32))):
        np.add.at(grid, (r0, c0), v)
        np.add.at(grid, (r0, c1), -v)
        np.add.at(grid, (r1, c0), -v)
        np.add.at(grid, (r1, c1), v)
    count = cnt.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)[:h, :w]
    total = acc.cumsum(0, dtype=np.float32).cumsum(1, dtype=np.float32)[:h, :w]
    covered = count > 0
    heat = np.clip(total / np.maximum(count, 1), 0.0, 1.0)
    return heat, covered


def overlay(
    overview: np.ndarray,
    downsample: float | tuple[float, float],
    coords: np.ndarray,
    patch_size_level0: float,
    scores: np.ndarray,
    cmap: Any = "viridis",
    alpha: float = ALPHA,
    *,
    norm: "Normalize | None" = None,
) -> tuple[np.ndarray, "Normalize"]:
    """Blend per-patch scores (colormap over `norm`, default the scores' min-max) onto the overview.

    Patches with a NaN score, and everything outside the patches, keep the overview's exact pixels. Returns the
    painted HxWx3 uint8 image and the normalisation used, for a matching colour bar. `downsample` is level-0
    px per overview px (or (x, y) when the overview was resized to a slightly different aspect).
    """
    import matplotlib

    image = _rgb(overview)
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    scores = np.asarray(scores, dtype=float).reshape(-1)
    if len(coords) != len(scores):
        raise ValueError(f"{len(coords)} coordinates but {len(scores)} scores")
    if norm is None:
        norm = make_norm(score_range(scores))
    valid = np.isfinite(scores)
    out = image.copy()
    if not valid.any():
        return out, norm
    unit = np.clip(np.asarray(norm(scores[valid]), dtype=float), 0.0, 1.0)
    heat, covered = _paint(image.shape[:2], _patch_boxes(coords[valid], patch_size_level0, downsample,
                                                          image.shape[:2]), unit)
    colours = matplotlib.colormaps.get_cmap(cmap)(heat[covered])[:, :3] * 255.0
    blended = (1.0 - alpha) * image[covered].astype(np.float32) + alpha * colours
    out[covered] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out, norm


def fit_overview(overview: np.ndarray, downsample: float, width: int, height: int) -> tuple[np.ndarray, tuple[float, float]]:
    """The overview resized to the image area, and its new (x, y) level-0 downsample.

    Area averaging when shrinking (no aliasing of tissue texture), bilinear when enlarging.
    """
    import cv2

    image = _rgb(overview)
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if width < w or height < h else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(image), (int(width), int(height)), interpolation=interp)
    return resized, (downsample * w / width, downsample * h / height)


def draw_outline(image: np.ndarray, tissue_mask: np.ndarray, thickness: int) -> None:
    """Draw the tissue mask's outline in place (mask of any resolution covering the whole slide, >0 = tissue).

    So tissue the grid left out (too little tissue per patch, holes) is visibly tissue, not background.
    """
    import cv2

    mask = (np.asarray(tissue_mask) > 0).astype(np.uint8)
    if mask.ndim != 2:
        raise ValueError(f"tissue_mask must be HxW, got {mask.shape}")
    h, w = image.shape[:2]
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    # traced at the mask's own resolution, then scaled: a smooth line, not an enlarged staircase
    scale = np.array([w / mask.shape[1], h / mask.shape[0]])
    scaled = [np.round((c.reshape(-1, 2) + 0.5) * scale - 0.5).astype(np.int32).reshape(-1, 1, 2) for c in contours]
    cv2.polylines(image, scaled, True, _OUTLINE, int(thickness), lineType=cv2.LINE_AA)


# --- layout ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A pixel rectangle of the output PNG, origin top-left (x right, y down)."""

    x: int
    y: int
    w: int
    h: int

    def fraction(self, width: int, height: int) -> list[float]:
        """[left, bottom, width, height] in figure fractions, as `Figure.add_axes` wants them."""
        return [self.x / width, (height - self.y - self.h) / height, self.w / width, self.h / height]


@dataclass(frozen=True)
class Fonts:
    """Pixel sizes that scale with the output, so a 900 px and a 1500 px PNG read alike."""

    title: float
    text: float
    pad: int

    @classmethod
    def for_size(cls, long_side: int) -> "Fonts":
        return cls(title=max(11.0, 0.016 * long_side), text=max(8.0, 0.011 * long_side),
                   pad=max(6, round(0.02 * long_side)))

    @property
    def bar_width(self) -> int:
        return max(8, round(1.4 * self.text))

    @property
    def strip(self) -> int:
        """Width right of the image: gap, bar, tick labels (8 chars) and a two-line bar label, then the margin."""
        labels = self.text * (_TICK * _DIGIT_W * 8 + 0.5 + 2 * _LINE)
        return self.pad + self.bar_width + round(labels) + self.pad

    @property
    def note(self) -> int:
        """Height under the bar for its two-line 'no colour: no score' note."""
        return round(2 * _LINE * _TICK * self.text + 0.5 * self.text)


@dataclass(frozen=True)
class HeatmapLayout:
    """Where everything of one heatmap goes; `width` x `height` is the PNG's exact size."""

    width: int
    height: int
    image: Box
    colorbar: Box
    title_lines: list[str]
    subtitle_lines: list[str]
    fonts: Fonts


@dataclass(frozen=True)
class GridLayout:
    """Where everything of a small-multiples figure goes; one panel (and its title lines) per map."""

    width: int
    height: int
    panels: list[Box]
    panel_titles: list[list[str]]
    panel_font: float
    colorbar: Box
    title_lines: list[str]
    fonts: Fonts = field(repr=False)


def wrap(text: str, width_px: float, font_px: float, max_lines: int, char_w: float = _CHAR_W) -> list[str]:
    """Wrap to a pixel width (by a mean character width); a cut last line ends in an ellipsis."""
    if not text:
        return []
    chars = max(6, int(width_px / (font_px * char_w)))
    lines: list[str] = []
    for para in text.splitlines():
        lines += textwrap.wrap(para, chars) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: chars - 1].rstrip() + "\u2026"
    return lines


def _header_height(title_lines: Sequence[str], subtitle_lines: Sequence[str], fonts: Fonts) -> int:
    h = fonts.pad + len(title_lines) * _LINE * fonts.title
    if subtitle_lines:
        h += 0.35 * fonts.text + len(subtitle_lines) * _LINE * fonts.text
    return round(h + 0.6 * fonts.pad)


def _bar_box(x: int, top: int, body_h: int, image_h: int, min_span: int, fonts: Fonts) -> Box:
    """The colour bar beside an image: 80% of its height but at least `min_span`, centred, its note below."""
    span = min(body_h, max(round(0.8 * image_h), min_span, fonts.note + 4 * fonts.bar_width))
    y = top + (body_h - span) // 2
    return Box(x, y, fonts.bar_width, max(1, span - fonts.note))


def heatmap_layout(
    overview_hw: tuple[int, int], title: str, subtitle: str = "", long_side: int = 1500, *, max_subtitle_lines: int = 8
) -> HeatmapLayout:
    """Place header, image and colour bar so the PNG's long side is exactly `long_side`.

    Landscape-ish overviews fill the width; when the header plus the image would then be taller than
    `long_side`, the height is the long side and the image is scaled to the remaining height. Text wraps to the
    figure width (which depends on the image width in portrait, hence the few fixed-point rounds).
    """
    H, W = (int(v) for v in overview_hw[:2])
    if H < 1 or W < 1 or long_side < 64:
        raise ValueError(f"cannot lay out a {W}x{H} overview at long side {long_side}")
    L = int(long_side)
    f = Fonts.for_size(L)
    min_bar = round(0.3 * L)
    min_w = round(0.5 * L)  # room for the text even beside a narrow portrait image

    def header(fw: int) -> tuple[list[str], list[str], int]:
        usable = 0.95 * (fw - 2 * f.pad)
        tl = wrap(title, usable, f.title, 2, _CHAR_W_BOLD)
        sl = wrap(subtitle, usable, f.text, max_subtitle_lines)
        return tl, sl, _header_height(tl, sl, f)

    fw = L
    tl, sl, hh = header(fw)
    iw = max(1, L - f.pad - f.strip)
    ih = max(1, round(iw * H / W))
    if hh + max(ih, min_bar) + f.pad <= L:
        fh = hh + max(ih, min_bar) + f.pad
    else:
        fh = L
        for _ in range(6):
            ih = max(1, L - hh - f.pad)
            iw = max(1, round(ih * W / H))
            fw = min(L, max(min_w, f.pad + iw + f.strip))
            tl, sl, new_hh = header(fw)
            if new_hh == hh:
                break
            hh = new_hh
        ih = max(1, L - hh - f.pad)
        iw = max(1, round(ih * W / H))
        if f.pad + iw + f.strip > L:  # only for a header that left the image too little height to be narrow
            iw = L - f.pad - f.strip
            ih = max(1, round(iw * H / W))
        fw = min(L, max(min_w, f.pad + iw + f.strip))
    body = fh - hh - f.pad
    x0 = f.pad + (fw - (f.pad + iw + f.strip)) // 2
    image = Box(x0, hh + (body - ih) // 2, iw, ih)
    bar = _bar_box(x0 + iw + f.pad, hh, body, ih, min_bar, f)
    return HeatmapLayout(fw, fh, image, bar, tl, sl, f)


def grid_layout(
    overview_hw: tuple[int, int], names: Sequence[str], title: str, long_side: int = 1500, cols: int = 4
) -> GridLayout:
    """Panels of the overview's aspect in a rows x cols grid, title on top, shared bar right; long side exact."""
    H, W = (int(v) for v in overview_hw[:2])
    n = len(names)
    if n == 0:
        raise ValueError("render_grid needs at least one map")
    if H < 1 or W < 1 or long_side < 64:
        raise ValueError(f"cannot lay out a {W}x{H} overview at long side {long_side}")
    L = int(long_side)
    f = Fonts.for_size(L)
    cols = max(1, min(int(cols), n))
    rows = math.ceil(n / cols)
    gap = max(4, round(0.6 * f.pad))
    min_bar = round(0.3 * L)
    min_w = round(0.5 * L)

    def panel_width(title_h: float) -> tuple[int, bool]:
        """The widest panel that fits; True when the width (not the height) is what binds."""
        by_w = (L - f.pad - (cols - 1) * gap - f.strip) / cols
        by_h = (L - hh - f.pad - (rows - 1) * gap - rows * title_h) / rows * W / H
        return max(8, math.floor(min(by_w, by_h))), by_w <= by_h

    tl = wrap(title, 0.95 * (L - 2 * f.pad), f.title, 2, _CHAR_W_BOLD)
    hh = _header_height(tl, [], f)
    font, titles, title_h = f.text, [[] for _ in names], round(2 * _LINE * f.text)
    for _ in range(3):  # panel titles wrap to the panel width, which depends on their height
        pw, _ = panel_width(title_h)
        font = min(f.text, max(7.0, pw / 14))
        titles = [wrap(name, 0.95 * pw, font, 3) for name in names]
        new_h = round(max(len(t) for t in titles) * _LINE * font + 0.3 * font)
        if new_h == title_h:
            break
        title_h = new_h
    pw, width_binds = panel_width(title_h)
    ph = max(1, math.floor(pw * H / W))
    cell_h = title_h + ph
    grid_w = cols * pw + (cols - 1) * gap
    grid_h = rows * cell_h + (rows - 1) * gap
    content_h = max(grid_h, min_bar)
    if width_binds:
        fw, fh = L, min(L, hh + content_h + f.pad)
    else:
        fw, fh = min(L, max(min_w, f.pad + grid_w + f.strip)), L
    x0 = f.pad + (fw - (f.pad + grid_w + f.strip)) // 2
    body = fh - hh - f.pad
    top = hh + (body - grid_h) // 2
    panels = [Box(x0 + (i % cols) * (pw + gap), top + (i // cols) * (cell_h + gap) + title_h, pw, ph)
              for i in range(n)]
    bar = _bar_box(x0 + grid_w + f.pad, hh, body, grid_h, min_bar, f)
    return GridLayout(fw, fh, panels, titles, font, bar, tl, f)


# --- rendering ---------------------------------------------------------------------------------------------


def _figure(width: int, height: int) -> Any:
    """A pyplot-free figure of exactly width x height px (thread-safe, no global backend switch)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")


def _place(fig: Any, image: np.ndarray, box: Box, fig_height: int) -> None:
    """Put an image at a pixel box, unresampled (figimage offsets are from the bottom-left)."""
    fig.figimage(image, xo=box.x, yo=fig_height - box.y - box.h, origin="upper", zorder=1)


def _text(fig: Any, lines: Sequence[str], x: int, y: int, width: int, height: int, size: float, **kw: Any) -> None:
    if lines:
        fig.text(x / width, 1 - y / height, "\n".join(lines), fontsize=size, va="top", ha="left",
                 linespacing=_LINE, **kw)


def _tick_format(rng: ScoreRange) -> str:
    """Enough decimals that the five ticks differ (a 0.9101-0.9104 map must not read 0.91 five times)."""
    step = (rng.hi - rng.lo) / 4
    if step <= 0 or max(abs(rng.lo), abs(rng.hi)) >= 1e5:
        return "%.4g"
    decimals = max(0, 1 - math.floor(math.log10(step)))
    return f"%.{decimals}f" if decimals <= 6 else "%.3g"


def _colorbar(fig: Any, box: Box, width: int, height: int, norm: "Normalize", cmap: Any, rng: ScoreRange,
              label: str, fonts: Fonts) -> None:
    """The colour bar over the scores' min-max, ticks at both ends; a note says uncoloured = no score."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.ticker import FormatStrFormatter

    cax = fig.add_axes(box.fraction(width, height))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    if rng.n == 0:
        bar.set_ticks([])
        label = f"{label} (no scores)"
    elif rng.constant:
        bar.set_ticks([rng.lo])
        bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.4g"))
        label = f"{label} (constant)"
    else:
        bar.set_ticks(list(np.linspace(rng.lo, rng.hi, 5)))
        bar.ax.yaxis.set_major_formatter(FormatStrFormatter(_tick_format(rng)))
    bar.ax.tick_params(labelsize=_TICK * fonts.text)
    bar.outline.set_linewidth(0.8)
    label_lines = wrap(label, 0.95 * box.h, fonts.text, 2)
    bar.set_label("\n".join(label_lines), fontsize=fonts.text, linespacing=1.1)
    note_y = box.y + box.h + 0.35 * fonts.text
    _text(fig, ["no colour:", "no score"], box.x, round(note_y), width, height, _TICK * fonts.text,
          color="0.3", style="italic")


def _save(fig: Any, path: PathLike, width: int, height: int, palette: bool = False) -> None:
    """Draw on the Agg canvas and write the PNG atomically at exactly width x height (`palette`: 256 colours)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from pipeline.qc import write_png

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    if rgb.shape[:2] != (height, width):  # float figsize rounding; never seen at DPI 72, kept exact anyway
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        h, w = min(height, rgb.shape[0]), min(width, rgb.shape[1])
        out[:h, :w] = rgb[:h, :w]
        rgb = out
    write_png(path, np.ascontiguousarray(rgb), palette=palette)


def render_heatmap(
    overview: np.ndarray,
    downsample: float,
    coords: np.ndarray,
    patch_size_level0: float,
    scores: np.ndarray,
    path: PathLike,
    *,
    title: str,
    subtitle: str = "",
    map_label: str = "score",
    long_side: int = 1500,
    cmap: str = "viridis",
    tissue_mask: np.ndarray | None = None,
    alpha: float = ALPHA,
    palette: bool = False,
) -> None:
    """One readable heatmap PNG, long side `long_side` px: title, wrapped subtitle, painted overview, colour bar.

    Scores are coloured over their finite min-max with a fixed `alpha` over the overview; NaN patches and tissue
    outside the patches show the raw overview. `tissue_mask` (optional, any resolution) adds the tissue outline.
    `palette` writes a 256-colour PNG (about 4x smaller; prediction's choice), else the pixels exactly.
    """
    image = _rgb(overview)
    scores = np.asarray(scores, dtype=float).reshape(-1)
    lay = heatmap_layout(image.shape[:2], title, subtitle, long_side)
    shown, ds = fit_overview(image, downsample, lay.image.w, lay.image.h)
    rng = score_range(scores)
    painted, norm = overlay(shown, ds, coords, patch_size_level0, scores, cmap, alpha, norm=make_norm(rng))
    if tissue_mask is not None:
        draw_outline(painted, tissue_mask, max(1, round(long_side / 700)))
    fig = _figure(lay.width, lay.height)
    _place(fig, painted, lay.image, lay.height)
    f = lay.fonts
    _text(fig, lay.title_lines, f.pad, f.pad, lay.width, lay.height, f.title, weight="bold")
    sub_y = round(f.pad + len(lay.title_lines) * _LINE * f.title + 0.35 * f.text)
    _text(fig, lay.subtitle_lines, f.pad, sub_y, lay.width, lay.height, f.text, color="0.15")
    _colorbar(fig, lay.colorbar, lay.width, lay.height, norm, cmap, rng, map_label, f)
    _save(fig, path, lay.width, lay.height, palette)


def render_grid(
    overview: np.ndarray,
    downsample: float,
    coords: np.ndarray,
    patch_size_level0: float,
    maps: Mapping[str, np.ndarray],
    path: PathLike,
    *,
    title: str,
    long_side: int = 1500,
    cols: int = 4,
    map_label: str = "score",
    cmap: str = "viridis",
    alpha: float = ALPHA,
    palette: bool = False,
) -> None:
    """Small multiples: one panel per named map (its name wrapped above it), one colour scale shared by all.

    The shared scale is the min-max over every map's finite scores, so panels compare by colour.
    """
    image = _rgb(overview)
    names = list(maps)
    values = [np.asarray(maps[k], dtype=float).reshape(-1) for k in names]
    lay = grid_layout(image.shape[:2], names, title, long_side, cols)
    panel = lay.panels[0]
    shown, ds = fit_overview(image, downsample, panel.w, panel.h)
    rng = score_range(*values)
    norm = make_norm(rng)
    fig = _figure(lay.width, lay.height)
    f = lay.fonts
    _text(fig, lay.title_lines, f.pad, f.pad, lay.width, lay.height, f.title, weight="bold")
    for box, lines, scores in zip(lay.panels, lay.panel_titles, values):
        painted, _ = overlay(shown, ds, coords, patch_size_level0, scores, cmap, alpha, norm=norm)
        _place(fig, painted, box, lay.height)
        title_top = box.y - round(len(lines) * _LINE * lay.panel_font + 0.3 * lay.panel_font)
        _text(fig, lines, box.x, title_top, lay.width, lay.height, lay.panel_font)
    _colorbar(fig, lay.colorbar, lay.width, lay.height, norm, cmap, rng, map_label, f)
    _save(fig, path, lay.width, lay.height, palette)
