"""Image- and pixel-level anomaly-detection metrics (docs/metrics.md defines them).

Every metric is rank based, so all of them are read off ONE descending sort of the pooled scores:
at each distinct score (a run of tied scores is one threshold, as in scikit-learn's
``_binary_clf_curve``) we know the cumulated true and false positives, and AUROC, AP, F1-max and
AUPRO are short reductions over those running counts. Sorting the pooled pixels once and summing
in float64 is faster than calling scikit-learn three times (one sort instead of three; see
benchmarks/bench_metrics.py), and agrees with it to round-off (tested to 1e-9).

Conventions: label 1 = anomalous, higher score = more anomalous, any non-zero mask pixel is
anomalous. Pixel metrics pool all pixels of all images of one category ("micro over pixels");
averaging over categories is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from adps.errors import AdpsError

__all__ = [
    "IMAGE_KEYS",
    "METRIC_KEYS",
    "PIXEL_KEYS",
    "aupro",
    "compute_metrics",
    "compute_metrics_original_resolution",
    "f1_max_threshold",
    "image_metrics",
    "pixel_curves",
    "pixel_metrics",
    "pr_curve",
    "pro_curve",
    "roc_curve",
    "truncate_pro_curve",
]

# The official MVTec tool labels GT regions with a 3x3 all-ones element: diagonal neighbours join.
_CONNECTIVITY = np.ones((3, 3), dtype=int)
# One name per metric everywhere: the functions below return these keys, metrics.json holds them.
IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
METRIC_KEYS = IMAGE_KEYS + PIXEL_KEYS


# --------------------------------------------------------------------------- input validation


def _to_numpy(x: ArrayLike | None, name: str) -> np.ndarray:
    """Arrays, lists and (CPU or GPU) torch tensors as a numeric numpy array."""
    t: Any = x
    if hasattr(t, "detach"):  # torch.Tensor, without importing torch
        t = t.detach().cpu()
        if t.is_floating_point() and t.element_size() < 4:  # bfloat16 has no numpy dtype
            t = t.float()
        t = t.numpy()
    a = np.asarray(t)
    if a.dtype.kind not in "biuf":
        raise AdpsError(f"{name} must be numeric, got dtype {a.dtype}")
    return a


def _check_finite(a: np.ndarray, name: str) -> np.ndarray:
    # Non-finite scores have no rank; the official tool silently drops them, we refuse them.
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise AdpsError(f"{name} contains NaN or infinite values")
    return a


def _scores(x: ArrayLike, name: str, ndim: int | None = None) -> np.ndarray:
    a = _check_finite(_to_numpy(x, name), name)
    if ndim is not None and a.ndim != ndim:
        raise AdpsError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def _labels(x: ArrayLike, name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.ndim != 1:
        raise AdpsError(f"{name} must be 1-D, got shape {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise AdpsError(f"{name} must contain only 0/1 or bool values")
    return a.astype(bool)


def _stack(x: ArrayLike | None, name: str) -> np.ndarray:
    """(N,H,W), (N,1,H,W) or a single (H,W) map as an (N,H,W) array."""
    a = _to_numpy(x, name)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    elif a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise AdpsError(f"{name} must have shape (N,H,W) or (N,1,H,W), got {a.shape}")
    return a


def _same_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape != b.shape:
        raise AdpsError(f"{a_name} shape {a.shape} does not match {b_name} shape {b.shape}")


def _check_two_classes(positive: np.ndarray, name: str) -> None:
    n_pos = int(np.count_nonzero(positive))
    if n_pos in (0, positive.size):
        only = "anomalous" if n_pos else "normal"
        raise AdpsError(
            f"{name} contain only {only} samples; the metric is undefined for one class"
        )


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise AdpsError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


# --------------------------------------------------------------------------- the shared ranking


class _Ranking(NamedTuple):
    """Cumulated counts at each distinct threshold of one descending sort."""

    order: np.ndarray  # sample indices, highest score first
    last: np.ndarray  # position (in ``order``) of the last sample of each run of tied scores
    tps: np.ndarray  # true positives at score >= threshold (float64, exact integers)
    fps: np.ndarray  # false positives at score >= threshold


def _rank(scores: np.ndarray, positive: np.ndarray) -> _Ranking:
    # Stability is irrelevant: every run of tied scores is collapsed to its last element.
    order = np.argsort(scores)[::-1]
    ranked = scores[order]
    last = np.append(np.flatnonzero(ranked[1:] != ranked[:-1]), ranked.size - 1)
    tps = np.cumsum(positive[order], dtype=np.float64)[last]
    return _Ranking(order, last, tps, last + 1.0 - tps)


def _auroc(r: _Ranking) -> float:
    # Trapezoids over distinct thresholds = P(anomalous > normal) with ties counted 1/2. Twice
    # each trapezoid is an integer and their sum is 2*P*N*AUC < 2**53 up to ~1e8 samples, so the
    # sum is exact and the single division is the only rounding.
    tps, fps = np.r_[0.0, r.tps], np.r_[0.0, r.fps]
    return float(np.sum(np.diff(fps) * (tps[1:] + tps[:-1])) / (2.0 * tps[-1] * fps[-1]))


def _ap(r: _Ranking) -> float:
    # Step-wise sum of (recall increase) x precision, no interpolation (scikit-learn's AP).
    return float(np.sum(np.diff(r.tps, prepend=0.0) * r.tps / (r.tps + r.fps)) / r.tps[-1])


def _f1_max(r: _Ranking) -> float:
    # F1 = 2PR/(P+R) = 2 TP / (TP + FP + #positives); 0 when TP = 0, like the PR-curve convention.
    return float(np.max(2.0 * r.tps / (r.tps + r.fps + r.tps[-1])))


def _binary_scores(r: _Ranking) -> dict[str, float]:
    return {"auroc": _auroc(r), "ap": _ap(r), "f1_max": _f1_max(r)}


def _cut_pro(
    fpr: np.ndarray, pro: np.ndarray, fpr_limit: float
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """The curve's points with FPR <= ``fpr_limit``, and the PRO interpolated at the limit.

    The curve runs from (0, 0) to (1, 1); FPR is non-decreasing, so ``ins`` is the official
    ``bisect(fpr, fpr_limit)``. The interpolated PRO is None when the limit is a curve point.
    """
    ins = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:ins], pro[:ins]
    if x[-1] < fpr_limit:
        return x, y, float(y[-1] + (pro[ins] - y[-1]) * (fpr_limit - x[-1]) / (fpr[ins] - x[-1]))
    return x, y, None


def _integrate_pro(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Official MVTec ``trapezoid``: area under PRO(FPR) on [0, fpr_limit], divided by the limit.

    When the limit falls between two points the last trapezoid is cut at the linearly
    interpolated PRO; when it is a curve point the cut has zero width.
    """
    x, y, y_lim = _cut_pro(fpr, pro, fpr_limit)
    area = np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x))
    if y_lim is not None:
        area += 0.5 * (y_lim + y[-1]) * (fpr_limit - x[-1])
    return float(area / fpr_limit)


def _pro_points(
    r: _Ranking, pro_weights: np.ndarray, n_regions: int
) -> tuple[np.ndarray, np.ndarray]:
    """The whole PRO curve, (0, 0) ... (1, 1), one point per distinct threshold."""
    # Normal pixels step FP by 1 (so the FP count is the ROC's ``fps``); a pixel of region r steps
    # PRO by 1/|r|, so every region weighs the same whatever its size or image.
    fpr = r.fps / r.fps[-1]
    pro = np.cumsum(pro_weights[r.order], dtype=np.float64)[r.last] / n_regions
    fpr = np.concatenate(([0.0], np.minimum(fpr, 1.0), [1.0]))
    pro = np.concatenate(([0.0], np.minimum(pro, 1.0), [1.0]))
    return fpr, pro


def _aupro(r: _Ranking, pro_weights: np.ndarray, n_regions: int, fpr_limit: float) -> float:
    return _integrate_pro(*_pro_points(r, pro_weights, n_regions), fpr_limit)


def _roc_points(r: _Ranking, drop_intermediate: bool) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``roc_curve`` from the running counts (same points, same order)."""
    fps, tps = r.fps, r.tps
    if drop_intermediate and fps.size > 2:
        # Points collinear with both neighbours are no corner of the curve (sklearn's rule).
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1]


def _pr_points(r: _Ranking, drop_intermediate: bool) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``precision_recall_curve``: recall decreasing, ending at (P=1, R=0)."""
    fps, tps = r.fps, r.tps
    if drop_intermediate and fps.size > 2:
        # Keep the first and last point of each run of equal TP (equal recall), as sklearn does.
        keep = np.r_[True, np.logical_or(np.diff(tps[:-1]), np.diff(tps[1:])), True]
        fps, tps = fps[keep], tps[keep]
    precision = tps / (tps + fps)  # tps + fps >= 1 at every threshold
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


class _Pixels(NamedTuple):
    """All pixels of an evaluation set, pooled."""

    scores: np.ndarray
    pro_weights: np.ndarray  # 1/|region| on anomalous pixels, 0 on normal ones
    n_regions: int

    @property
    def positive(self) -> np.ndarray:
        return self.pro_weights > 0


def _pool(
    maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray
) -> _Pixels:
    """Pool pairs of equally shaped 2-D maps and masks, labelling each mask's regions on its own."""
    weights, n_regions = [], 0
    for mask in masks:
        regions, n = ndimage.label(mask != 0, structure=_CONNECTIVITY)
        inverse_size = np.zeros(n + 1)
        inverse_size[1:] = 1.0 / np.bincount(regions.ravel(), minlength=n + 1)[1:]
        weights.append(inverse_size[regions].ravel())
        n_regions += n
    scores = np.concatenate([np.ravel(m) for m in maps]) if len(maps) else np.empty(0)
    pro_weights = np.concatenate(weights) if weights else np.empty(0)
    return _Pixels(scores, pro_weights, n_regions)


def _prefixed(prefix: str, r: _Ranking) -> dict[str, float]:
    b = _binary_scores(r)
    return {f"{prefix}_auroc": b["auroc"], f"{prefix}_ap": b["ap"], f"{prefix}_f1max": b["f1_max"]}


def _pixel_scores(px: _Pixels, fpr_limit: float, with_curves: bool = True) -> dict[str, float]:
    r = _rank(px.scores, px.positive)
    out = _prefixed("pixel", r) if with_curves else {}
    out["aupro"] = _aupro(r, px.pro_weights, px.n_regions, fpr_limit)
    return out


def _pixel_pair(masks: ArrayLike, maps: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    masks, maps = _stack(masks, "masks"), _check_finite(_stack(maps, "maps"), "maps")
    _same_shape(maps, "maps", masks, "masks")
    return masks, maps


def _pooled_pixels(masks: ArrayLike, maps: ArrayLike, need_regions: bool) -> _Pixels:
    masks, maps = _pixel_pair(masks, maps)
    px = _pool(maps, masks)
    if need_regions and px.n_regions == 0:
        raise AdpsError("masks contain no anomalous region; AUPRO is undefined")
    if px.positive.all():
        raise AdpsError("masks contain no normal pixel; the FPR of AUPRO is undefined")
    return px


# --------------------------------------------------------------------------- public metrics


def image_metrics(labels: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """Image AUROC, AP and F1-max, with scikit-learn's semantics.

    AUROC is the probability that a random anomalous image outscores a random normal one (ties
    count 1/2): threshold-free, so it rates the ranking alone. AP is the step-wise
    ``sum (R_n - R_{n-1}) P_n`` over distinct thresholds, which, unlike AUROC, is sensitive to the
    rare-positive regime. F1-max is the best F1 over all thresholds, i.e. what an oracle-chosen
    threshold would achieve.

    Args:
        labels: (N,) 0 = normal, 1 = anomalous; both classes must occur.
        scores: (N,) finite, higher = more anomalous.

    Returns:
        ``{"image_auroc", "image_ap", "image_f1max"}`` as floats in [0, 1].
    """
    labels, scores = _labels(labels, "labels"), _scores(scores, "scores", ndim=1)
    _same_shape(scores, "scores", labels, "labels")
    _check_two_classes(labels, "labels")
    return _prefixed("image", _rank(scores, labels))


def aupro(masks: ArrayLike, maps: ArrayLike, *, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (official MVTec AD).

    Pixel AUROC is dominated by large defects; PRO instead averages, over every connected GT region
    (8-connectivity, counted per image), the fraction of the region detected, so a small scratch
    weighs as much as a large stain. The false-positive rate is global over all normal pixels of
    all images. Only low FPRs matter in practice, hence the integration limit; the area is divided
    by it so that a perfect map scores 1 and a constant map 0.5 * fpr_limit.

    Args:
        masks: (N,H,W) or (N,1,H,W); non-zero = anomalous. At least one region and one normal
            pixel.
        maps: same shape, finite anomaly maps.
        fpr_limit: upper FPR bound of the integral, in (0, 1].
    """
    _check_fpr_limit(fpr_limit)
    px = _pooled_pixels(masks, maps, need_regions=True)
    return _pixel_scores(px, fpr_limit, with_curves=False)["aupro"]


def pixel_metrics(masks: ArrayLike, maps: ArrayLike, *, fpr_limit: float = 0.3) -> dict[str, float]:
    """Pixel AUROC, AP, F1-max (as :func:`image_metrics`) and AUPRO (as :func:`aupro`).

    All pixels of all images are pooled into one evaluation set (normal images contribute only
    negatives), which is what DRAEM and the MVTec tool do per category.

    Args:
        masks: (N,H,W) or (N,1,H,W); non-zero = anomalous. Both classes must occur.
        maps: same shape, finite anomaly maps.
        fpr_limit: AUPRO integration limit, in (0, 1].

    Returns:
        ``{"pixel_auroc", "pixel_ap", "pixel_f1max", "aupro"}`` as floats in [0, 1].
    """
    _check_fpr_limit(fpr_limit)
    masks, maps = _pixel_pair(masks, maps)
    px = _pool(maps, masks)
    _check_two_classes(px.positive, "masks")
    return _pixel_scores(px, fpr_limit)


# --------------------------------------------------------------------------- curves


def _binary_ranking(labels: ArrayLike, scores: ArrayLike, need_negatives: bool = True) -> _Ranking:
    labels, scores = _labels(labels, "labels"), _scores(scores, "scores", ndim=1)
    _same_shape(scores, "scores", labels, "labels")
    if need_negatives:
        _check_two_classes(labels, "labels")
    elif not labels.any():
        raise AdpsError("labels contain no anomalous sample; recall is undefined")
    return _rank(scores, labels)


def _flat_pair(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Any-shape labels (non-zero = anomalous) and scores, e.g. masks and maps, as 1-D arrays."""
    labels, scores = _to_numpy(labels, "labels"), _to_numpy(scores, "scores")
    _same_shape(scores, "scores", labels, "labels")
    return np.ravel(labels) != 0, np.ravel(scores)


def roc_curve(
    labels: ArrayLike, scores: ArrayLike, *, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr)``: the points of ``sklearn.metrics.roc_curve``.

    One point per distinct score (ties are one threshold, "anomalous if score >= t"), from
    (0, 0) to (1, 1) in increasing FPR; with ``drop_intermediate`` the points collinear with
    both neighbours are dropped, exactly as scikit-learn does. The trapezoid area is
    :func:`image_metrics`' AUROC.

    Args:
        labels: any shape, non-zero = anomalous (image labels, or masks for pixel curves);
            both classes must occur.
        scores: same shape, finite (image scores, or anomaly maps).
    """
    labels, scores = _flat_pair(labels, scores)
    return _roc_points(_binary_ranking(labels, scores), drop_intermediate)


def pr_curve(
    labels: ArrayLike, scores: ArrayLike, *, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall curve ``(precision, recall)``: the points of
    ``sklearn.metrics.precision_recall_curve``.

    Recall decreases along the arrays; the last point is (precision 1, recall 0), which has no
    threshold. ``sum(-diff(recall) * precision[:-1])`` is :func:`image_metrics`' AP.

    Args:
        labels: any shape, non-zero = anomalous; at least one anomalous sample.
        scores: same shape, finite.
        drop_intermediate: drop points whose recall equals both neighbours' (sklearn's option).
    """
    labels, scores = _flat_pair(labels, scores)
    return _pr_points(_binary_ranking(labels, scores, need_negatives=False), drop_intermediate)


def pro_curve(
    masks: ArrayLike, maps: ArrayLike, *, fpr_limit: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve ``(fpr, pro)`` of the official MVTec algorithm (see :func:`aupro`).

    One point per distinct map value, from (0, 0) to (1, 1), FPR non-decreasing: exactly the
    points AUPRO integrates. With ``fpr_limit`` the curve stops there, ending with the PRO
    linearly interpolated at the limit (when the limit is not a curve point), so
    ``trapezoid(pro, fpr) / fpr_limit == aupro(masks, maps, fpr_limit=fpr_limit)``.

    Args:
        masks: (N,H,W) or (N,1,H,W); non-zero = anomalous. At least one region and one normal
            pixel.
        maps: same shape, finite anomaly maps.
        fpr_limit: None for the whole curve, else in (0, 1].
    """
    if fpr_limit is not None:
        _check_fpr_limit(fpr_limit)
    px = _pooled_pixels(masks, maps, need_regions=True)
    fpr, pro = _pro_points(_rank(px.scores, px.positive), px.pro_weights, px.n_regions)
    return (fpr, pro) if fpr_limit is None else truncate_pro_curve(fpr, pro, fpr_limit=fpr_limit)


def truncate_pro_curve(
    fpr: ArrayLike, pro: ArrayLike, *, fpr_limit: float
) -> tuple[np.ndarray, np.ndarray]:
    """A whole PRO curve (from :func:`pro_curve` or :func:`pixel_curves`) cut at ``fpr_limit``.

    Keeps the points with FPR <= limit and, when the limit is not a curve point, ends with the
    PRO linearly interpolated at it: the region AUPRO integrates.
    """
    _check_fpr_limit(fpr_limit)
    fpr, pro = np.asarray(fpr, dtype=np.float64), np.asarray(pro, dtype=np.float64)
    x, y, y_lim = _cut_pro(fpr, pro, fpr_limit)
    return (x, y) if y_lim is None else (np.r_[x, fpr_limit], np.r_[y, y_lim])


def pixel_curves(masks: ArrayLike, maps: ArrayLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`roc_curve`, :func:`pr_curve` and :func:`pro_curve` of pooled pixels from ONE sort.

    Pixel curves of a test set cost a sort of millions of values each; the report needs all
    three, so they are read off a single ranking. Returns ``{"roc": (fpr, tpr), "pr":
    (precision, recall), "pro": (fpr, pro)}`` (default options of each function).
    """
    px = _pooled_pixels(masks, maps, need_regions=True)
    r = _rank(px.scores, px.positive)
    return {
        "roc": _roc_points(r, True),
        "pr": _pr_points(r, False),
        "pro": _pro_points(r, px.pro_weights, px.n_regions),
    }


def f1_max_threshold(labels: ArrayLike, scores: ArrayLike) -> float:
    """The score ``t`` whose decision "anomalous if score >= t" reaches F1-max.

    Among thresholds with equal F1 the lowest is returned (it catches the most defects). The
    F1 calibration builds on it but refuses a threshold that flags every normal image; this
    function never refuses, so a report can show such a threshold. Both classes must occur.
    """
    labels, scores = _labels(labels, "labels"), _scores(scores, "scores", ndim=1)
    r = _binary_ranking(labels, scores)
    f1 = 2.0 * r.tps / (r.tps + r.fps + r.tps[-1])
    best = f1.size - 1 - int(np.argmax(f1[::-1]))
    return float(scores[r.order[r.last[best]]])


# --------------------------------------------------------------------------- evaluation helpers


def _available(mask_available: ArrayLike | None, n: int) -> np.ndarray:
    if mask_available is None:
        return np.ones(n, dtype=bool)
    available = _labels(mask_available, "mask_available")
    if available.size != n:
        raise AdpsError(f"mask_available has {available.size} entries for {n} images")
    return available


def _image_pair(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = _labels(labels, "labels"), _scores(scores, "scores", 1)
    _same_shape(scores, "scores", labels, "labels")
    return labels, scores


def _report(
    labels: np.ndarray, scores: np.ndarray, px: _Pixels | None, fpr_limit: float
) -> dict[str, float | None]:
    """The flat result dict; a metric that is undefined for these data is None, not 0."""
    out: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    if 0 < labels.sum() < labels.size:
        out.update(image_metrics(labels, scores))
    if px is not None and 0 < np.count_nonzero(px.positive) < px.scores.size:
        out.update(_pixel_scores(px, fpr_limit))
    return out


def compute_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    masks: ArrayLike | None = None,
    maps: ArrayLike | None = None,
    *,
    mask_available: ArrayLike | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float | None]:
    """All metrics of one category at the evaluation resolution of the maps.

    Args:
        labels: (N,) 0/1 image labels.
        scores: (N,) finite image scores.
        masks: (N,H,W) or (N,1,H,W), non-zero = anomalous; None = no pixel ground truth.
        maps: anomaly maps of the same shape (numpy or torch); unused when ``masks`` is None.
        mask_available: optional (N,) bool; pixel metrics pool only images whose mask exists.
        fpr_limit: AUPRO integration limit.

    Returns:
        :data:`METRIC_KEYS`: ``image_auroc, image_ap, image_f1max, pixel_auroc, pixel_ap,
        pixel_f1max, aupro``. A metric the data cannot define is None rather than a misleading
        number: image metrics when the labels have one class; pixel metrics when there are no
        masks, no available mask, or the pooled pixels have one class.
    """
    _check_fpr_limit(fpr_limit)
    labels, scores = _image_pair(labels, scores)
    px = None
    if masks is not None:
        masks, maps = _pixel_pair(masks, maps)
        if maps.shape[0] != scores.size:
            raise AdpsError(f"maps has {maps.shape[0]} maps for {scores.size} images")
        keep = _available(mask_available, scores.size)
        px = _pool(maps[keep], masks[keep])
    return _report(labels, scores, px, fpr_limit)


def compute_metrics_original_resolution(
    labels: ArrayLike,
    scores: ArrayLike,
    masks: Sequence[ArrayLike | None],
    maps: Sequence[ArrayLike],
    *,
    mask_available: ArrayLike | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float | None]:
    """:func:`compute_metrics` for images of different sizes, each scored at its mask's resolution.

    The official MVTec tool evaluates at the GT PNG's size, so each map is upsampled to its mask's
    (h_i, w_i) with bilinear interpolation, ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` (maps already at that size are used as they are); masks are never
    resized, so region sizes are the dataset's own. Pixels of all images are then pooled in
    float32.

    Args:
        labels, scores: as in :func:`compute_metrics`.
        masks: sequence of N 2-D masks, non-zero = anomalous; an entry may be None when its
            ``mask_available`` flag is False (unavailable images are skipped).
        maps: sequence of N 2-D maps (numpy or torch), any sizes.
        mask_available: optional (N,) bool.
    """
    import torch
    import torch.nn.functional as F

    _check_fpr_limit(fpr_limit)
    labels, scores = _image_pair(labels, scores)
    if not len(maps) == len(masks) == scores.size:
        raise AdpsError(f"got {len(masks)} masks, {len(maps)} maps and {scores.size} image scores")
    pooled_maps, pooled_masks = [], []
    for i in np.flatnonzero(_available(mask_available, scores.size)).tolist():
        amap, mask = _scores(maps[i], f"maps[{i}]", 2), _to_numpy(masks[i], f"masks[{i}]")
        if mask.ndim != 2:
            raise AdpsError(f"masks[{i}] must be 2-D, got shape {mask.shape}")
        amap = amap.astype(np.float32, copy=False)
        if amap.shape != mask.shape:
            t = torch.from_numpy(np.ascontiguousarray(amap))[None, None]
            resized = F.interpolate(t, size=mask.shape, mode="bilinear", align_corners=False)
            amap = resized[0, 0].numpy()
        pooled_maps.append(amap)
        pooled_masks.append(mask)
    return _report(labels, scores, _pool(pooled_maps, pooled_masks), fpr_limit)
