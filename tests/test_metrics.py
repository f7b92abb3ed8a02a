"""adps.metrics against independent references: scikit-learn, a brute-force AUPRO, and the pinned
values of docs/metrics.md (sections 4.3 and 6)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from adps.errors import AdpsError
from adps.metrics import (
    aupro,
    compute_metrics,
    compute_metrics_original_resolution,
    image_metrics,
    pixel_metrics,
)

KEYS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
PIXEL_KEYS = KEYS[3:]


# --------------------------------------------------------------------------- references


def sklearn_metrics(y, s) -> dict[str, float]:
    y, s = np.ravel(y) != 0, np.ravel(s)
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)
    return {"auroc": roc_auc_score(y, s), "ap": average_precision_score(y, s), "f1_max": f1.max()}


def brute_aupro(maps, masks, limit=0.3) -> float:
    """Threshold at every distinct score; FPR and per-region overlap straight from boolean masks."""
    maps, gt = np.asarray(maps, float), np.asarray(masks) != 0
    regions = []  # (image index, region mask)
    for i, g in enumerate(gt):
        lab, n = ndimage.label(g, structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr = (pred & ~gt).sum() / (~gt).sum()
        pro = np.mean([pred[i][reg].mean() for i, reg in regions])
        points.append((fpr, pro))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= limit:
            break
        if x1 > limit:  # cut the segment at the limit
            y1, x1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0), limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / limit


def keyed(level: str, values: dict) -> dict:
    """A reference dict {"auroc", "ap", "f1_max", "aupro"} under adps's names for ``level``."""
    names = {
        "auroc": f"{level}_auroc",
        "ap": f"{level}_ap",
        "f1_max": f"{level}_f1max",
        "aupro": "aupro",
    }
    return {names[k]: v for k, v in values.items()}


def assert_close(got: dict, want: dict, tol=1e-9):
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=tol), key


# --------------------------------------------------------------------------- pinned values


@pytest.mark.parametrize(
    ("labels", "scores", "want"),
    [
        ([1] * 10 + [0] * 90, [0.3] * 100, {"auroc": 0.5, "ap": 0.1, "f1_max": 2 * 0.1 / 1.1}),
        ([1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.2, 0.1], {"auroc": 5 / 6, "ap": 5 / 6, "f1_max": 0.8}),
        ([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1], {"auroc": 0.875, "ap": 5 / 6}),
        ([0, 1, 0, 1], [0.1, 0.7, 0.2, 0.9], {"auroc": 1.0, "ap": 1.0, "f1_max": 1.0}),
    ],
)
def test_image_metrics_pinned(labels, scores, want):
    assert_close(image_metrics(labels, scores), keyed("image", want))


WORKED_GT = np.array([[[1, 1, 0, 0], [0, 0, 0, 0]]])
WORKED_MAP = np.array([[[0.9, 0.4, 0.8, 0.1], [0.2, 0.3, 0.05, 0.0]]])
NORMAL_GT = np.zeros((1, 2, 4))
NORMAL_MAP = np.array([[[0.85, 0, 0, 0], [0, 0, 0, 0]]])
PROBE_GT = np.zeros((1, 3, 3))
PROBE_GT[0, 0, 0] = PROBE_GT[0, 1, 1] = PROBE_GT[0, 1, 2] = 1
PROBE_MAP = np.zeros((1, 3, 3))
PROBE_MAP[0, 0, 0] = 1


@pytest.mark.parametrize(
    ("maps", "masks", "want"),
    [
        (WORKED_MAP, WORKED_GT, 13 / 18),
        (np.r_[WORKED_MAP, NORMAL_MAP], np.r_[WORKED_GT, NORMAL_GT], 16 / 21),
        (PROBE_MAP, PROBE_GT, 0.43333333333333335),  # 8-connectivity (4-connectivity: 0.575)
    ],
)
def test_aupro_pinned(maps, masks, want):
    assert aupro(masks, maps) == pytest.approx(want, abs=1e-12)
    assert brute_aupro(maps, masks) == pytest.approx(want, abs=1e-12)


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 32, 32), np.uint8)
    masks[0, 3:9, 4:12] = 255
    masks[0, 20:23, 20:30] = 255
    masks[2, 10:20, 15:17] = 255
    maps = rng.random(masks.shape).astype(np.float32)
    return masks, maps


def test_pixel_pinned_cases(blobs):
    masks, _ = blobs
    gt = (masks > 0).astype(float)
    assert_close(
        pixel_metrics(masks, gt), keyed("pixel", {"auroc": 1, "ap": 1, "f1_max": 1, "aupro": 1})
    )
    const = pixel_metrics(masks, np.full(masks.shape, 7.0))
    assert_close(const, keyed("pixel", {"auroc": 0.5, "ap": gt.mean(), "aupro": 0.15}))
    assert_close(pixel_metrics(masks, 1 - gt), keyed("pixel", {"auroc": 0.0, "aupro": 0.0}))


# --------------------------------------------------------------------------- against references


def test_random_pixels_with_ties_match_references(blobs):
    masks, maps = blobs
    maps = np.round(maps * 40) / 40  # many ties
    got = pixel_metrics(masks, maps)
    assert_close(got, keyed("pixel", sklearn_metrics(masks, maps)))
    assert got["aupro"] == pytest.approx(brute_aupro(maps, masks), abs=1e-9)
    for limit in (0.05, 0.3, 1.0):
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(
            brute_aupro(maps, masks, limit), abs=1e-9
        )


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=40).filter(
        lambda xs: len({y for y, _ in xs}) == 2
    )
)
def test_image_metrics_match_sklearn(pairs):
    labels, scores = np.array(pairs).T
    assert_close(
        image_metrics(labels, scores / 7.0), keyed("image", sklearn_metrics(labels, scores / 7.0))
    )


@st.composite
def pixel_sets(draw):
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    cells = n * h * w
    masks = np.array(draw(st.lists(st.booleans(), min_size=cells, max_size=cells))).reshape(n, h, w)
    levels = draw(st.integers(1, 8))  # few levels = many ties
    maps = np.array(draw(st.lists(st.integers(0, levels), min_size=cells, max_size=cells)))
    return masks, maps.reshape(n, h, w) / levels


@settings(max_examples=120, deadline=None)
@given(pixel_sets(), st.sampled_from([0.3, 0.1, 1.0]))
def test_pixel_metrics_match_references(data, limit):
    masks, maps = data
    if masks.all() or not masks.any():
        with pytest.raises(AdpsError):
            pixel_metrics(masks, maps)
        return
    got = pixel_metrics(masks, maps, fpr_limit=limit)
    assert_close(got, keyed("pixel", sklearn_metrics(masks, maps)))
    assert got["aupro"] == pytest.approx(brute_aupro(maps, masks, limit), abs=1e-6)
    assert all(0.0 <= v <= 1.0 for v in got.values())


# --------------------------------------------------------------------------- compute_metrics


def test_compute_metrics_keys_and_values(blobs):
    masks, maps = blobs
    labels = masks.reshape(4, -1).max(1) > 0
    scores = maps.reshape(4, -1).max(1)
    got = compute_metrics(labels, scores, masks, maps)
    assert list(got) == list(KEYS)
    assert all(isinstance(v, float) for v in got.values())
    # one name per metric: the parts return exactly the keys of the whole
    assert got == {**image_metrics(labels, scores), **pixel_metrics(masks, maps)}


def test_compute_metrics_accepts_tensors_and_channel_dim(blobs):
    masks, maps = blobs
    labels, scores = [1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3]
    want = compute_metrics(labels, scores, masks, maps)
    got = compute_metrics(
        torch.tensor(labels),
        torch.tensor(scores),
        torch.from_numpy(masks)[:, None],
        torch.from_numpy(maps)[:, None],
    )
    assert got == pytest.approx(want)


def test_compute_metrics_without_pixel_truth(blobs):
    masks, maps = blobs
    labels, scores = [1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3]
    got = compute_metrics(labels, scores, None, maps)
    assert all(got[k] is None for k in PIXEL_KEYS) and got["image_auroc"] == 1.0
    none_available = compute_metrics(labels, scores, masks, maps, mask_available=[0, 0, 0, 0])
    assert all(none_available[k] is None for k in PIXEL_KEYS)
    empty = compute_metrics(labels, scores, np.zeros_like(masks), maps)  # single pixel class
    assert all(empty[k] is None for k in PIXEL_KEYS) and empty["image_auroc"] == 1.0


def test_compute_metrics_single_image_class_gives_none(blobs):
    masks, maps = blobs
    got = compute_metrics([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], masks, maps)
    assert got["image_auroc"] is None and got["image_ap"] is None and got["image_f1max"] is None
    assert got["aupro"] == pixel_metrics(masks, maps)["aupro"]


def test_mask_available_selects_images(blobs):
    masks, maps = blobs
    scores, labels = [0.9, 0.1, 0.8, 0.3], [1, 0, 1, 0]
    got = compute_metrics(labels, scores, masks, maps, mask_available=[True, False, True, True])
    want = pixel_metrics(masks[[0, 2, 3]], maps[[0, 2, 3]])
    assert got["pixel_auroc"] == want["pixel_auroc"] and got["aupro"] == want["aupro"]


def test_original_resolution_resizes_bilinearly(blobs):
    masks, maps = blobs
    small = [m[::2, ::2] for m in maps]  # 16x16 maps for 32x32 masks
    got = compute_metrics_original_resolution(
        [1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3], list(masks), small
    )
    up = torch.nn.functional.interpolate(
        torch.from_numpy(np.stack(small))[:, None],
        size=(32, 32),
        mode="bilinear",
        align_corners=False,
    )[:, 0].numpy()
    want = pixel_metrics(masks, up)
    assert got["pixel_auroc"] == pytest.approx(want["pixel_auroc"], abs=1e-12)
    assert got["aupro"] == pytest.approx(want["aupro"], abs=1e-12)


def test_original_resolution_mixed_sizes_and_missing_masks(blobs):
    masks, maps = blobs
    big_mask = np.zeros((40, 24), bool)
    big_mask[5:9, 3:7] = True
    maps_list = [maps[0], maps[1], np.ones((10, 6), np.float32)]
    masks_list = [masks[0], None, big_mask]
    got = compute_metrics_original_resolution(
        [1, 0, 1], [0.9, 0.1, 0.8], masks_list, maps_list, mask_available=[1, 0, 1]
    )
    flat_maps = np.r_[maps[0].ravel(), np.ones(40 * 24)]  # a constant map stays constant
    assert_close(
        got,
        keyed("pixel", sklearn_metrics(np.r_[masks[0].ravel(), big_mask.ravel()], flat_maps)),
        tol=1e-7,  # pooled in float32
    )
    same = compute_metrics_original_resolution([1, 0], [0.9, 0.1], list(masks[:2]), list(maps[:2]))
    assert same["aupro"] == pixel_metrics(masks[:2], maps[:2])["aupro"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: image_metrics([1, 0], [0.5]), "shape"),
        (lambda: image_metrics([1, 0], [np.nan, 0.1]), "scores"),
        (lambda: image_metrics([1, 1], [0.2, 0.1]), "labels"),
        (lambda: image_metrics([2, 0], [0.2, 0.1]), "labels"),
        (lambda: pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5))), "shape"),
        (lambda: pixel_metrics(np.eye(3)[None], np.full((1, 3, 3), np.inf)), "maps"),
        (lambda: pixel_metrics(np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), "masks"),
        (lambda: aupro(np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), "no anomalous region"),
        (lambda: aupro(np.ones((1, 3, 3)), np.zeros((1, 3, 3))), "no normal pixel"),
        (lambda: aupro(np.eye(3)[None], np.zeros((1, 3, 3)), fpr_limit=0), "fpr_limit"),
        (
            lambda: compute_metrics(
                [1, 0], [1, 0], np.eye(2)[None].repeat(3, 0), np.zeros((3, 2, 2))
            ),
            "3 maps for 2 images",
        ),
        (
            lambda: compute_metrics(
                [1, 0], [1, 0], np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), mask_available=[1]
            ),
            "mask_available",
        ),
        (
            lambda: compute_metrics([1, 0], [1, 0], np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2))),
            "masks",
        ),
    ],
)
def test_user_errors_raise_adps_error(call, match):
    with pytest.raises(AdpsError, match=match):
        call()


# --------------------------------------------------------------------------- curves

from sklearn.metrics import roc_curve as sk_roc_curve  # noqa: E402

from adps.metrics import (  # noqa: E402
    f1_max_threshold,
    pixel_curves,
    pr_curve,
    pro_curve,
    roc_curve,
    truncate_pro_curve,
)


def brute_pro_points(maps, masks):
    """(fpr, pro) at every distinct threshold, from boolean masks, with (0,0) and (1,1) added."""
    maps, gt = np.asarray(maps, float), np.asarray(masks) != 0
    regions = []
    for i, g in enumerate(gt):
        lab, n = ndimage.label(g, structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    fpr, pro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr.append((pred & ~gt).sum() / (~gt).sum())
        pro.append(np.mean([pred[i][reg].mean() for i, reg in regions]))
    return np.array([*fpr, 1.0]), np.array([*pro, 1.0])


def assert_curve(got, want, tol=1e-12):
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=tol)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=40).filter(
        lambda xs: len({y for y, _ in xs}) == 2
    ),
    st.booleans(),
)
def test_curves_match_sklearn(pairs, drop):
    labels, scores = np.array(pairs).T
    scores = scores / 7.0
    assert_curve(
        roc_curve(labels, scores, drop_intermediate=drop),
        sk_roc_curve(labels, scores, drop_intermediate=drop)[:2],
    )
    assert_curve(
        pr_curve(labels, scores, drop_intermediate=drop),
        precision_recall_curve(labels, scores, drop_intermediate=drop)[:2],
    )


def test_curves_agree_with_metrics(blobs):
    masks, maps = blobs
    maps = np.round(maps * 40) / 40
    fpr, tpr = roc_curve(masks, maps)
    precision, recall = pr_curve(masks, maps)
    got = pixel_metrics(masks, maps)
    assert np.trapezoid(tpr, fpr) == pytest.approx(got["pixel_auroc"], abs=1e-12)
    assert np.sum(-np.diff(recall) * precision[:-1]) == pytest.approx(got["pixel_ap"], abs=1e-12)
    assert_curve(
        roc_curve(torch.from_numpy(masks), torch.from_numpy(maps)),
        sk_roc_curve(masks.ravel() > 0, maps.ravel())[:2],
    )
    assert_curve(pr_curve(masks, maps), precision_recall_curve(masks.ravel() > 0, maps.ravel())[:2])


def test_pr_curve_single_class_and_roc_errors():
    precision, recall = pr_curve([1, 1, 1], [0.3, 0.2, 0.1])  # defined without negatives
    assert_curve((precision, recall), precision_recall_curve([1, 1, 1], [0.3, 0.2, 0.1])[:2])
    with pytest.raises(AdpsError, match="labels"):
        roc_curve([1, 1], [0.2, 0.1])
    with pytest.raises(AdpsError, match="no anomalous"):
        pr_curve([0, 0], [0.2, 0.1])
    with pytest.raises(AdpsError, match="shape"):
        roc_curve([1, 0], [0.2])


@pytest.mark.parametrize("levels", [40, None])
def test_pro_curve_matches_brute_force_and_aupro(blobs, levels):
    masks, maps = blobs
    if levels:
        maps = np.round(maps * levels) / levels
    assert_curve(pro_curve(masks, maps), brute_pro_points(maps, masks), tol=1e-12)
    for limit in (0.05, 0.3, 1.0):
        fpr, pro = pro_curve(masks, maps, fpr_limit=limit)
        assert fpr[-1] == pytest.approx(limit) and np.all(np.diff(fpr) >= 0)
        assert np.trapezoid(pro, fpr) / limit == pytest.approx(
            aupro(masks, maps, fpr_limit=limit), abs=1e-12
        )


def test_pro_curve_limit_on_a_curve_point():
    fpr, pro = pro_curve(WORKED_GT, WORKED_MAP)
    limit = float(fpr[2])  # a curve point: no interpolated end point; equal-FPR points stay
    keep = fpr <= limit
    assert 0 < limit < 1 and keep.sum() >= 3
    assert_curve(pro_curve(WORKED_GT, WORKED_MAP, fpr_limit=limit), (fpr[keep], pro[keep]))
    with pytest.raises(AdpsError, match="fpr_limit"):
        pro_curve(WORKED_GT, WORKED_MAP, fpr_limit=1.5)
    with pytest.raises(AdpsError, match="no anomalous region"):
        pro_curve(np.zeros((1, 3, 3)), np.zeros((1, 3, 3)))


def test_pixel_curves_equal_the_separate_functions(blobs):
    masks, maps = blobs
    maps = np.round(maps * 40) / 40
    got = pixel_curves(masks, maps)
    assert_curve(got["roc"], roc_curve(masks, maps))
    assert_curve(got["pr"], pr_curve(masks, maps))
    assert_curve(got["pro"], pro_curve(masks, maps))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=30).filter(
        lambda xs: len({y for y, _ in xs}) == 2
    )
)
def test_f1_max_threshold_is_the_best_decision(pairs):
    labels, scores = np.array(pairs).T
    labels = labels.astype(bool)

    def f1(t):
        pred = scores >= t
        tp = np.sum(pred & labels)
        return 2 * tp / (pred.sum() + labels.sum())

    t = f1_max_threshold(labels, scores)
    best = max(f1(u) for u in np.unique(scores))
    assert (
        f1(t) == pytest.approx(best) == pytest.approx(image_metrics(labels, scores)["image_f1max"])
    )
    assert t == min(u for u in np.unique(scores) if f1(u) == pytest.approx(best))
    calibrated = calibrate_f1(labels, scores)
    if calibrated is not None:  # the calibration builds on it: halfway down to the next lower
        # score (robust to round-off), so it flags exactly the images t flags
        assert np.array_equal(scores >= calibrated, scores >= t)


def calibrate_f1(labels, scores):
    from adps.engine.calibrate import f1_optimal_threshold

    try:
        return f1_optimal_threshold(labels, scores).threshold
    except AdpsError:  # refuses thresholds that flag every normal image
        return None


def test_truncate_pro_curve_equals_pro_curve_with_limit(blobs):
    masks, maps = blobs
    full = pixel_curves(masks, maps)["pro"]
    for limit in (0.01, 0.3, 1.0):
        assert_curve(
            truncate_pro_curve(*full, fpr_limit=limit), pro_curve(masks, maps, fpr_limit=limit)
        )
