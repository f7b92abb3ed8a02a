"""A one-file HTML report of an evaluation: metrics, curves, score histogram and a gallery.

The report is a single self-contained HTML file (no external CSS, JavaScript, fonts or images:
thumbnails are base64 data URIs, plots are inline SVG) so it can be mailed, archived next to
``metrics.json`` or opened offline. It is written atomically.

Gallery order ("most wrong first"): every image gets a margin relative to the image threshold
``t``: ``t - score`` for a defective image and ``score - t`` for a normal one. The margin is
positive exactly for the wrong decisions (missed defects, false alarms) and grows with how far
the score is on the wrong side, so the worst misses (defective images with the lowest scores)
and the worst false alarms (normal images with the highest scores) come first, interleaved by
margin, followed by the correct decisions from the least to the most confident. Ties keep the
dataset order. Without any threshold (no calibrated one and a one-class test set) ``t = 0``,
which orders the same way.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from adps.engine.calibrate import Thresholds
from adps.engine.evaluate import EvalResult
from adps.errors import AdpsError
from adps.fileio import atomic_write_text
from adps.metrics import (
    IMAGE_KEYS,
    PIXEL_KEYS,
    f1_max_threshold,
    pixel_curves,
    pr_curve,
    roc_curve,
)
from adps.report import plots
from adps.report.tables import format_percent
from adps.version import __version__

__all__ = ["SECTIONS", "build_report", "gallery_order"]

SECTIONS = ("summary", "metrics", "curves", "scores", "gallery")
"""The ``id`` of every ``<section>`` of the report, in page order."""

FPR_LIMIT = 0.3
THUMB = 128  # longest side of gallery thumbnails, in pixels

_METRIC_ROWS = (("image", (*IMAGE_KEYS, None)), ("pixel", PIXEL_KEYS))  # no image AUPRO


# --------------------------------------------------------------------------- small helpers


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _data_uri(array: np.ndarray, size: tuple[int, int], fmt: str) -> str:
    """Resize (W, H) and encode a uint8 array as a base64 data URI (JPEG for photos, PNG masks)."""
    img = Image.fromarray(array)
    if img.size != size:
        # BOX averages when shrinking: thin defects in masks stay visible as grey lines.
        resample = Image.Resampling.BOX if img.mode == "L" else Image.Resampling.LANCZOS
        img = img.resize(size, resample)
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=85, optimize=True)
    else:
        img.save(buf, format="PNG", optimize=True)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str, shown: tuple[int, int]) -> str:
    return (
        f'<img src="{uri}" alt="{_esc(alt)}" width="{shown[0]}" height="{shown[1]}" '
        'loading="eager">'
    )


def _short_name(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


# --------------------------------------------------------------------------- decisions


def _threshold(
    image_threshold: float | None, labels: np.ndarray, scores: np.ndarray
) -> tuple[float | None, str]:
    """The image threshold used for decisions and how it was obtained (a sentence)."""
    if image_threshold is not None:
        return float(image_threshold), "calibrated threshold"
    if 0 < labels.sum() < labels.size:
        return (
            f1_max_threshold(labels, scores),
            "F1-optimal threshold (no calibrated threshold was given; chosen on this test set, "
            "so its decisions are optimistic)",
        )
    return None, "no threshold (none was given and the test set has one class only)"


def gallery_order(scores, labels, threshold: float | None) -> np.ndarray:
    """Indices of the images, most wrong first (the rule is in this module's docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    t = 0.0 if threshold is None else float(threshold)
    margin = np.where(labels, t - scores, scores - t)
    return np.argsort(-margin, kind="stable")


def _decision(label: bool, score: float, t: float | None) -> tuple[str, str]:
    """(css class, text) of one image's decision; "defective" means score >= t."""
    if t is None:
        return "none", "no threshold"
    flagged = score >= t
    if label:
        return ("ok", "detected") if flagged else ("miss", "missed defect")
    return ("alarm", "false alarm") if flagged else ("ok", "correct: normal")


# --------------------------------------------------------------------------- sections


def _summary(title: str, info: dict, generated: str) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in info.items())
    nav = " · ".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS[1:])
    return (
        f'<section id="summary"><h1>{_esc(title)}</h1>'
        f'<p class="meta">Generated {_esc(generated)} by adps {_esc(__version__)} · {nav}</p>'
        f'<table class="info">{rows}</table></section>'
    )


def _metrics_section(metrics: dict, pixel_reason: str | None, image_reason: str | None) -> str:
    head = (
        "<tr><th>level</th><th>AUROC</th><th>AP</th><th>F1-max</th>"
        f"<th>AUPRO (FPR ≤ {FPR_LIMIT:g})</th></tr>"
    )
    body = ""
    for level, keys in _METRIC_ROWS:
        cells = "".join(
            "<td>—</td>"
            if k is None
            else f'<td class="{"na" if metrics.get(k) is None else "num"}">'
            f"{format_percent(metrics.get(k))}</td>"
            for k in keys
        )
        body += f"<tr><th>{level}</th>{cells}</tr>"
    notes = []
    if image_reason:
        notes.append(f"Image metrics are n/a: {_esc(image_reason)}.")
    if pixel_reason:
        notes.append(f"Pixel metrics are n/a: {_esc(pixel_reason)}.")
    notes.append(
        "Values in percent. AUROC and AUPRO rate the ranking whatever the threshold; AP "
        "stresses the rare defects; F1-max is the F1 of the best possible threshold. "
        "Pixel metrics pool every pixel of the images with ground truth; AUPRO weighs "
        "each defect region equally, whatever its size."
    )
    return (
        f'<section id="metrics"><h2>Metrics</h2><table class="metrics">{head}{body}</table>'
        + "".join(f'<p class="note">{n}</p>' for n in notes)
        + "</section>"
    )


def _curves_section(
    result, labels, scores, maps, masks, keep, t, pixel_reason, image_reason
) -> str:
    m = result.metrics
    image_roc = image_pr = op_roc = op_pr = None
    if image_reason is None:
        image_roc, image_pr = roc_curve(labels, scores), pr_curve(labels, scores)
        if t is not None:
            flagged = scores >= t
            tp, fp = int(np.sum(flagged & labels)), int(np.sum(flagged & ~labels))
            op_roc = (fp / max(1, int((~labels).sum())), tp / max(1, int(labels.sum())))
            op_pr = (op_roc[1], tp / (tp + fp)) if tp + fp else None
    pix = None
    if pixel_reason is None:
        pix = pixel_curves(masks[keep], maps[keep])
    figures = []
    if image_roc is not None or pix is not None:
        figures.append(
            plots.roc_svg(
                image_roc,
                None if pix is None else pix["roc"],
                m.get("image_auroc"),
                m.get("pixel_auroc"),
                op_roc,
            )
        )
        figures.append(
            plots.pr_svg(
                image_pr,
                None if pix is None else pix["pr"],
                m.get("image_ap"),
                m.get("pixel_ap"),
                float(labels.mean()) if image_pr is not None else None,
                float((masks[keep] != 0).mean()) if pix is not None else None,
                op_pr,
            )
        )
    if pix is not None:
        figures.append(plots.pro_svg(pix["pro"], m.get("aupro"), FPR_LIMIT))
    notes = []
    if image_reason:
        notes.append(f"Image-level curves are not shown: {_esc(image_reason)}.")
    if pixel_reason:
        notes.append(f"Pixel-level curves are not shown: {_esc(pixel_reason)}.")
    else:
        h, w = maps.shape[1:]
        notes.append(
            f"Pixel curves pool the {int(keep.sum())} images with ground truth at the "
            f"maps' working size ({h}×{w}); dotted lines: precision of a random ranking "
            f"(share of defect pixels / images). The shaded band of the per-region "
            f"overlap plot is the FPR range 0–{FPR_LIMIT:g} that AUPRO integrates."
        )
    body = "".join(f'<figure class="plot">{f}</figure>' for f in figures)
    return (
        f'<section id="curves"><h2>Curves</h2><div class="plots">{body}</div>'
        + "".join(f'<p class="note">{n}</p>' for n in notes)
        + "</section>"
    )


def _scores_section(labels, scores, t, source) -> str:
    label = (
        "calibrated threshold"
        if source == "calibrated threshold"
        else ("F1-optimal threshold" if t is not None else "threshold")
    )
    svg = plots.histogram_svg(scores, labels, t, label)
    if t is None:
        text = f"No decisions: {_esc(source)}."
    else:
        flagged = scores >= t
        missed = int(np.sum(~flagged & labels))
        alarms = int(np.sum(flagged & ~labels))
        text = (
            f"Decision rule: <b>defective if score ≥ {t:.4g}</b> ({_esc(source)}). "
            f"Missed defects: <b>{missed}</b> of {int(labels.sum())}; false alarms: "
            f"<b>{alarms}</b> of {int((~labels).sum())} normal images."
        )
    return (
        f'<section id="scores"><h2>Score distribution</h2>'
        f'<div class="plots"><figure class="plot">{svg}</figure></div>'
        f'<p class="note">{text}</p></section>'
    )


def _legend_bar(vmin: float, vmax: float) -> str:
    stops = ", ".join(
        f"rgb({r},{g},{b}) {100 * i / 10:.0f}%"
        for i, (r, g, b) in enumerate(plots.colorize(np.linspace(0, 1, 11)))
    )
    return (
        f'<span class="cbar"><span>{vmin:.3g}</span><span class="grad" '
        f'style="background: linear-gradient(to right, {stops})"></span>'
        f"<span>{vmax:.3g}</span></span>"
    )


def _gallery_section(
    images, labels, scores, maps, masks, has_mask, paths, t, pixel_threshold, max_gallery
) -> str:
    order = gallery_order(scores, labels, t)[: max(0, max_gallery)]
    vmin, vmax = (
        (0.0, 1.0)
        if maps.min() >= 0.0 and maps.max() <= 1.0
        else (float(maps.min()), float(maps.max()))
    )
    cards = []
    for i in order:
        image = np.ascontiguousarray(images[i].transpose(1, 2, 0))
        h, w = image.shape[:2]
        scale = THUMB / max(h, w)  # shown at THUMB px; stored no larger than the image itself
        shown = (max(1, round(w * scale)), max(1, round(h * scale)))
        size = shown if scale < 1 else (w, h)
        name = _short_name(paths[i]) if i < len(paths) else f"image {i}"
        kind, verdict = _decision(bool(labels[i]), float(scores[i]), t)
        gt = (
            _img(
                _data_uri((masks[i] != 0).astype(np.uint8) * 255, size, "png"),
                f"ground truth of {name}",
                shown,
            )
            if has_mask[i]
            else f'<div class="nomask" style="width:{shown[0]}px;height:{shown[1]}px">no mask</div>'
        )
        pred = (maps[i] > pixel_threshold).astype(np.uint8) * 255
        tiles = (
            ("input", _img(_data_uri(image, size, "jpeg"), f"input {name}", shown)),
            ("ground truth", gt),
            (
                "heatmap",
                _img(
                    _data_uri(plots.overlay(image, maps[i], vmin=vmin, vmax=vmax), size, "jpeg"),
                    f"heatmap of {name}",
                    shown,
                ),
            ),
            (
                f"map > {pixel_threshold:g}",
                _img(_data_uri(pred, size, "png"), f"predicted mask of {name}", shown),
            ),
        )
        tiles_html = "".join(
            f'<div class="tile">{content}<span>{cap}</span></div>' for cap, content in tiles
        )
        truth = "defective" if labels[i] else "normal"
        cards.append(
            f'<figure class="card {kind}" data-index="{int(i)}" '
            f'data-score="{float(scores[i]):.6g}">'
            f'<figcaption><span class="badge {kind}">{verdict}</span>'
            f'<span class="name" title="{_esc(paths[i] if i < len(paths) else name)}">'
            f'{_esc(name)}</span><span class="score">{truth} · score '
            f"<b>{float(scores[i]):.4g}</b></span></figcaption>"
            f'<div class="tiles">{tiles_html}</div></figure>'
        )
    n = len(scores)
    listed = f"all {n} images" if len(order) == n else f"the first {len(order)} of {n} images"
    rule = (
        "most wrong first: images are sorted by their margin on the wrong side of the image "
        "threshold (threshold − score for defective images, score − threshold for normal "
        "ones), so the worst missed defects and the worst false alarms lead, followed by the "
        "correct decisions from the least to the most confident"
    )
    return (
        f'<section id="gallery"><h2>Gallery</h2>'
        f'<p class="note">Showing {listed}, {rule}. Heatmap colours: {_legend_bar(vmin, vmax)}; '
        f"the last tile is the predicted defect mask (map &gt; {pixel_threshold:g}).</p>"
        f'<div class="gallery">{"".join(cards)}</div></section>'
    )


# --------------------------------------------------------------------------- the page

_CSS = """
:root { --fg:#1d232a; --muted:#5d6875; --line:#e2e6ea; --bg:#f6f7f9; --card:#fff;
        --ok:#2a9d8f; --bad:#d1495b; --warn:#e07a1f; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
            sans-serif; }
main { max-width:1240px; margin:0 auto; padding:24px 28px 48px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px;
          padding:18px 22px; margin:0 0 18px; }
h1 { font-size:22px; margin:0 0 4px; }
h2 { font-size:17px; margin:0 0 12px; }
a { color:#1f6fb4; text-decoration:none; }
a:hover { text-decoration:underline; }
.meta, .note { color:var(--muted); margin:6px 0; max-width:100ch; }
table { border-collapse:collapse; }
table.info th { text-align:left; font-weight:600; padding:3px 18px 3px 0; color:var(--muted);
                vertical-align:top; white-space:nowrap; }
table.info td { padding:3px 0; word-break:break-all; }
table.metrics { margin:4px 0 10px; }
table.metrics th, table.metrics td { padding:7px 16px; border-bottom:1px solid var(--line);
                                     text-align:right; }
table.metrics tr th:first-child { text-align:left; }
table.metrics tr:first-child th { color:var(--muted); font-weight:600;
                                  border-bottom:2px solid var(--line); }
table.metrics td.num { font-variant-numeric:tabular-nums; font-weight:600; font-size:15px; }
table.metrics td.na { color:var(--muted); }
.plots { display:grid; grid-template-columns:repeat(auto-fill, minmax(360px, 1fr)); gap:12px; }
figure { margin:0; }
figure.plot svg { width:100%; height:auto; display:block; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill, minmax(560px, 1fr)); gap:12px; }
.card { border:1px solid var(--line); border-left:5px solid var(--line); border-radius:8px;
        padding:8px 10px 10px; background:#fcfcfd; }
.card.miss { border-left-color:var(--bad); }
.card.alarm { border-left-color:var(--warn); }
.card.ok { border-left-color:var(--ok); }
figcaption { display:flex; align-items:baseline; gap:10px; margin-bottom:6px; flex-wrap:wrap; }
.name { font-family:ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size:12.5px; }
.score { color:var(--muted); margin-left:auto; }
.badge { font-size:11px; font-weight:700; text-transform:uppercase; letter-spacing:.04em;
         padding:2px 7px; border-radius:4px; color:#fff; background:var(--muted); }
.badge.miss { background:var(--bad); }
.badge.alarm { background:var(--warn); }
.badge.ok { background:var(--ok); }
.tiles { display:flex; gap:8px; flex-wrap:wrap; }
.tile { display:flex; flex-direction:column; align-items:center; gap:2px; }
.tile img, .nomask { border-radius:3px; display:block; max-width:128px; background:#000; }
.tile span { font-size:11.5px; color:var(--muted); }
.nomask { display:flex; align-items:center; justify-content:center; background:#eceff2;
          color:var(--muted); font-size:12px; border:1px dashed #c5ccd3; }
.cbar { display:inline-flex; align-items:center; gap:5px; vertical-align:middle; }
.cbar .grad { display:inline-block; width:120px; height:10px; border-radius:2px; }
footer { color:var(--muted); font-size:12px; text-align:center; }
"""


def build_report(
    result: EvalResult,
    out_path: str | Path,
    *,
    thresholds: Thresholds,
    title: str = "adps evaluation report",
    info: dict | None = None,
    max_gallery: int = 60,
) -> Path:
    """Write the HTML report of one evaluation and return its path.

    The one report builder: ``adps test --report``, ``adps report`` and ``adps demo`` all call
    it with what they know.

    Args:
        result: an :class:`adps.engine.evaluate.EvalResult` (metrics, scores, labels, images,
            maps, masks, has_mask, paths, speed).
        out_path: the ``.html`` file to write (parent folders are created).
        thresholds: the model's; decisions use ``thresholds.image`` ("defective if score >=
            t"); without a calibrated one the F1-optimal threshold of this test set is used and
            the report says so. The predicted defect mask is ``map > thresholds.pixel``.
        title: page title.
        info: extra ``{name: value}`` rows for the header table (model, data...).
        max_gallery: at most this many gallery images (the most wrong ones).

    Contents: header (title, info table, time), metrics table (percent, "n/a" when undefined),
    ROC and precision-recall curves at image and pixel level, the per-region-overlap curve,
    the score histogram with the threshold, and the gallery (input, ground truth, heatmap,
    predicted mask, score and decision per image, most wrong first). Sections whose data are
    missing (no masks, one class) are replaced by a sentence saying why.
    """
    scores = _numpy(result.scores).astype(np.float64).ravel()
    labels = _numpy(result.labels).astype(bool).ravel()
    maps = _numpy(result.maps).astype(np.float32)
    masks = _numpy(result.masks)
    has_mask = _numpy(result.has_mask).astype(bool).ravel()
    images = _numpy(result.images)
    n = scores.size
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise AdpsError(
            f"report images must be uint8 (N, 3, H, W), got {images.dtype} {images.shape}"
        )
    if not (len(images) == labels.size == maps.shape[0] == masks.shape[0] == has_mask.size == n):
        raise AdpsError(
            f"report inputs disagree on the number of images: {n} scores, "
            f"{labels.size} labels, {len(images)} images, {maps.shape[0]} maps, "
            f"{masks.shape[0]} masks"
        )
    if maps.shape != masks.shape:
        raise AdpsError(f"maps {maps.shape} and masks {masks.shape} differ in shape")

    pixel_threshold = thresholds.pixel
    t, source = _threshold(thresholds.image, labels, scores)
    image_reason = None
    if labels.all() or not labels.any():
        image_reason = f"the test set has only {'defective' if labels.any() else 'normal'} images"
    keep = has_mask
    pixel_reason = None
    if not keep.any():
        pixel_reason = "no test image has a ground-truth mask"
    elif not np.any(masks[keep]):
        pixel_reason = "the ground-truth masks contain no defect pixel"
    elif np.all(masks[keep]):
        pixel_reason = "the ground-truth masks contain no normal pixel"

    n_def = int(labels.sum())
    table = dict(info or {})
    counts = f"{n} ({n - n_def} normal, {n_def} defective"
    counts += f", {int((~has_mask).sum())} without mask)" if (~has_mask).any() else ")"
    table.setdefault("test images", counts)
    table.setdefault("map size", f"{maps.shape[1]}×{maps.shape[2]}")
    table.setdefault("image threshold", "none" if t is None else f"{t:.4g} ({source})")
    table.setdefault("pixel threshold", f"{pixel_threshold:g}")
    if getattr(result, "images_per_second", 0):
        table.setdefault(
            "speed",
            f"{result.images_per_second:.1f} images/s (model time), peak "
            f"memory {result.peak_memory_mb:.0f} MiB ({result.memory_kind})",
        )
    generated = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")

    body = "".join(
        (
            _summary(title, table, generated),
            _metrics_section(result.metrics, pixel_reason, image_reason),
            _curves_section(
                result, labels, scores, maps, masks, keep, t, pixel_reason, image_reason
            ),
            _scores_section(labels, scores, t, source),
            _gallery_section(
                images,
                labels,
                scores,
                maps,
                masks,
                has_mask,
                list(result.paths),
                t,
                pixel_threshold,
                max_gallery,
            ),
        )
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>{body}"
        "<footer>Self-contained report: every image and plot is embedded in this file."
        "</footer></main></body></html>\n"
    )
    return atomic_write_text(out_path, page)
