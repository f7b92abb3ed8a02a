"""Pictures for reports and predictions: heatmap overlays and the evaluation plots.

:func:`overlay` needs numpy, Pillow and matplotlib's colormaps, no figure (the ``predict`` command
writes overlay PNGs with it). The plots are drawn with matplotlib's object API (``Figure`` + the SVG
canvas, never ``pyplot``), so no global backend is switched and nothing needs a display; each plot
is returned as an inline ``<svg>`` string with text kept as text (small, sharp, selectable) and
figure-unique element ids, so several plots can live in one HTML page.
"""

from __future__ import annotations

import io
import itertools
import re
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

from adps.errors import AdpsError
from adps.metrics import truncate_pro_curve

__all__ = [
    "colorize",
    "decimate",
    "histogram_svg",
    "overlay",
    "pr_svg",
    "pro_svg",
    "roc_svg",
]

# Colours shared by every plot (and the HTML's CSS), chosen to stay distinct for colour-blind eyes.
IMAGE_COLOR = "#1f6fb4"
PIXEL_COLOR = "#d1495b"
NORMAL_COLOR = "#2a9d8f"
DEFECT_COLOR = "#e76f51"
THRESHOLD_COLOR = "#222222"

# --------------------------------------------------------------------------- heatmaps


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) as matplotlib's Turbo colours, uint8 ``values.shape + (3,)``.

    Turbo is perceptually smoother than jet: dark blue (0) -> green -> yellow -> dark red (1).
    """
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    rgba = np.asarray(matplotlib.colormaps["turbo"](x))  # a scalar gives a tuple
    return np.rint(rgba[..., :3] * 255.0).astype(np.uint8)


def _resize_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (H, W)."""
    if amap.shape == size:
        return amap
    img = Image.fromarray(np.ascontiguousarray(amap, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border (inside), as bool."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~inner


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    mask: np.ndarray | None = None,
    alpha: float = 0.5,
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
) -> np.ndarray:
    """Blend an anomaly map, coloured with Turbo, over an image; optionally outline a mask.

    The map is scaled from ``[vmin, vmax]`` to [0, 1] (clipped) so that colours mean the same in
    every image: the defaults suit ADPS maps, which are probabilities (0 dark blue, 1 dark red).
    ``vmin``/``vmax`` of None take the map's own minimum/maximum (every map then spans the whole
    colour range, which makes normal images look alarming: only for maps of unknown scale). A
    map of another size than the image is resized bilinearly to it. The blend is
    ``(1 - alpha) * image + alpha * colour`` everywhere, so the image stays readable underneath.
    With ``mask`` (e.g. the predicted defect mask, ``map > pixel threshold``) the border of each
    region is drawn in white, about 1/256 of the image's longer side thick (at least 1 pixel).

    Args:
        image: uint8 (H, W, 3) RGB (a (H, W) grey image is replicated to RGB).
        amap: float (h, w) anomaly map, finite (numpy or torch).
        mask: optional (h', w') bool or 0/1 mask; non-zero = outlined region (nearest-resized).
        alpha: weight of the colour, in [0, 1].
        vmin, vmax: map values shown as the coldest / hottest colour.

    Returns:
        uint8 (H, W, 3) RGB.
    """
    if hasattr(amap, "detach"):
        amap = amap.detach().cpu().float().numpy()
    if mask is not None and hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise AdpsError(f"overlay needs a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    amap = np.asarray(amap, dtype=np.float32)
    if amap.ndim != 2:
        raise AdpsError(f"overlay needs a 2-D anomaly map, got shape {amap.shape}")
    if not np.isfinite(amap).all():
        raise AdpsError("the anomaly map contains NaN or infinite values")
    if not 0.0 <= alpha <= 1.0:
        raise AdpsError(f"alpha must be in [0, 1], got {alpha}")
    size = image.shape[:2]
    amap = _resize_map(amap, size)
    lo = float(amap.min()) if vmin is None else float(vmin)
    hi = float(amap.max()) if vmax is None else float(vmax)
    scaled = (amap - lo) / (hi - lo) if hi > lo else np.zeros_like(amap)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(scaled).astype(np.float32)
    out = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise AdpsError(f"overlay needs a 2-D mask, got shape {mask.shape}")
        mask = mask != 0
        if mask.shape != size:
            img = Image.fromarray(mask.astype(np.uint8) * 255)
            mask = np.asarray(img.resize((size[1], size[0]), Image.Resampling.NEAREST)) > 0
        out[_outline(mask, max(1, round(max(size) / 256)))] = 255
    return out


# --------------------------------------------------------------------------- curves


def decimate(x, y, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a curve, spread evenly along its length, for plotting.

    Pixel-level curves have one point per distinct map value (millions); drawn at a few hundred
    pixels most are invisible, yet they bloat an SVG. Points are picked at equal steps of arc
    length in the unit square (so steep and flat parts are both kept), always including the first
    and the last point. Curves with at most ``max_points`` points are returned unchanged. For
    display only: integrate the full curve, never a decimated one.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise AdpsError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    if max_points < 2:
        raise AdpsError(f"max_points must be at least 2, got {max_points}")
    if x.size <= max_points:
        return x, y
    length = np.r_[0.0, np.cumsum(np.hypot(np.diff(x), np.diff(y)))]
    picks = np.searchsorted(length, np.linspace(0.0, length[-1], max_points))
    keep = np.unique(np.r_[0, np.minimum(picks, x.size - 1), x.size - 1])
    return x[keep], y[keep]


# --------------------------------------------------------------------------- figures

_salt = itertools.count()
_STYLE: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",  # text stays <text>: the browser's sans-serif renders it
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial"],
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 8.0,
}


def _new_figure(width: float = 4.4, height: float = 3.5):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _svg(fig) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog, ids unique to this figure)."""
    import matplotlib

    buf = io.StringIO()
    prefix = f"adps{next(_salt)}-"
    with matplotlib.rc_context({**_STYLE, "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :].strip()
    # matplotlib names elements "figure_1", "axes_1"...: the same in every figure. Prefix every
    # id and every reference to one, so that the plots of one page never share an id.
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})", text)
    return re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m.group(1)}"', text)


def _draw(build) -> str:
    """Build a figure under the report style (``build(fig, ax)``) and return its SVG."""
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        fig, ax = _new_figure()
        build(fig, ax)
    return _svg(fig)


def _unit_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    ax.set_aspect("equal", adjustable="box")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def roc_svg(
    image_curve: tuple[np.ndarray, np.ndarray] | None = None,
    pixel_curve: tuple[np.ndarray, np.ndarray] | None = None,
    image_auroc: float | None = None,
    pixel_auroc: float | None = None,
    operating_point: tuple[float, float] | None = None,
    max_points: int = 2000,
) -> str:
    """ROC curves (FPR, TPR) of images and pixels in one plot; either may be None.

    ``operating_point`` (FPR, TPR) marks where the image threshold sits on the image curve.
    """

    def build(fig, ax):
        ax.plot([0, 1], [0, 1], ls=":", lw=1, color="#999999", label="chance")
        if image_curve is not None:
            ax.plot(
                *decimate(*image_curve, max_points),
                color=IMAGE_COLOR,
                lw=1.8,
                drawstyle="default",
                label=f"image  AUROC {_percent(image_auroc)}",
            )
        if pixel_curve is not None:
            ax.plot(
                *decimate(*pixel_curve, max_points),
                color=PIXEL_COLOR,
                lw=1.8,
                label=f"pixel  AUROC {_percent(pixel_auroc)}",
            )
        if operating_point is not None:
            ax.plot(
                *operating_point,
                "o",
                ms=6,
                mfc="white",
                mec=THRESHOLD_COLOR,
                mew=1.5,
                label="image threshold",
                zorder=5,
            )
        _unit_axes(ax, "false positive rate", "true positive rate", "ROC")
        ax.legend(loc="lower right")

    return _draw(build)


def pr_svg(
    image_curve: tuple[np.ndarray, np.ndarray] | None = None,
    pixel_curve: tuple[np.ndarray, np.ndarray] | None = None,
    image_ap: float | None = None,
    pixel_ap: float | None = None,
    image_prevalence: float | None = None,
    pixel_prevalence: float | None = None,
    operating_point: tuple[float, float] | None = None,
    max_points: int = 2000,
) -> str:
    """Precision-recall curves ``(precision, recall)`` of images and pixels; either may be None.

    The dashed lines are the precision of a random ranking (the share of anomalous samples);
    ``operating_point`` (recall, precision) marks the image threshold.
    """

    def build(fig, ax):
        for curve, ap, prev, color, name in (
            (image_curve, image_ap, image_prevalence, IMAGE_COLOR, "image"),
            (pixel_curve, pixel_ap, pixel_prevalence, PIXEL_COLOR, "pixel"),
        ):
            if curve is None:
                continue
            precision, recall = curve
            r, p = decimate(recall, precision, max_points)
            ax.plot(
                r,
                p,
                color=color,
                lw=1.8,
                drawstyle="steps-post",
                label=f"{name}  AP {_percent(ap)}",
            )
            if prev is not None:
                ax.axhline(prev, ls=":", lw=1, color=color, alpha=0.7)
        if operating_point is not None:
            ax.plot(
                *operating_point,
                "o",
                ms=6,
                mfc="white",
                mec=THRESHOLD_COLOR,
                mew=1.5,
                label="image threshold",
                zorder=5,
            )
        _unit_axes(ax, "recall", "precision", "Precision-recall")
        ax.legend(loc="lower left")

    return _draw(build)


def pro_svg(
    curve, aupro_value: float | None = None, fpr_limit: float = 0.3, max_points: int = 2000
) -> str:
    """The per-region-overlap curve ``(fpr, pro)``, the integrated FPR range [0, limit] shaded."""
    fpr, pro = curve

    def build(fig, ax):
        ax.axvspan(0, fpr_limit, color=PIXEL_COLOR, alpha=0.07, lw=0)
        x, y = decimate(*truncate_pro_curve(fpr, pro, fpr_limit=fpr_limit), max_points)
        ax.fill_between(
            x,
            y,
            color=PIXEL_COLOR,
            alpha=0.18,
            lw=0,
            label=f"AUPRO (FPR ≤ {fpr_limit:g}) {_percent(aupro_value)}",
        )
        ax.plot(*decimate(fpr, pro, max_points), color=PIXEL_COLOR, lw=1.8, label="PRO")
        ax.axvline(fpr_limit, ls="--", lw=1, color=THRESHOLD_COLOR)
        _unit_axes(
            ax, "false positive rate (normal pixels)", "per-region overlap", "Per-region overlap"
        )
        ax.legend(loc="lower right")

    return _draw(build)


def histogram_svg(
    scores,
    labels,
    threshold: float | None = None,
    threshold_label: str = "threshold",
    bins: int | None = None,
) -> str:
    """Histogram of image scores, normal and defective overlaid, with the threshold line."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    values = scores if threshold is None else np.r_[scores, threshold]
    if bins is None:
        bins = int(np.clip(np.sqrt(scores.size) * 2, 10, 40))
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)

    def build(fig, ax):
        for mask, color, name in (
            (~labels, NORMAL_COLOR, "normal"),
            (labels, DEFECT_COLOR, "defective"),
        ):
            if mask.any():
                ax.hist(
                    scores[mask],
                    bins=edges,
                    color=color,
                    alpha=0.55,
                    lw=0,
                    label=f"{name} ({int(mask.sum())})",
                )
                ax.hist(scores[mask], bins=edges, histtype="step", color=color, lw=1.2)
        if threshold is not None:
            ax.axvline(
                threshold,
                color=THRESHOLD_COLOR,
                ls="--",
                lw=1.4,
                label=f"{threshold_label} {threshold:.4g}",
            )
        ax.set_xlabel("image score")
        ax.set_ylabel("images")
        ax.set_title("Image scores", loc="left")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="best")

    return _draw(build)
