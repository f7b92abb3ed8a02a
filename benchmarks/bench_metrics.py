"""Wall time of adps.metrics.compute_metrics on one core, versus scikit-learn.

Data: 100 anomaly maps of 256x256 (6.55 M pixels, float32): smoothed noise plus a bump on each
defect; half of the images carry 1-3 elliptic defect blobs (realistic, multi-region masks).
Measured: compute_metrics (image metrics + pixel AUROC/AP/F1-max + AUPRO@0.3, input validation
and region labelling included), best of --repeat runs, process pinned to one CPU with BLAS/OpenMP
threads set to 1. Reference: scikit-learn roc_auc_score + average_precision_score on the same
pooled pixels (no F1-max, no AUPRO), best of --repeat runs.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_metrics.py
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402

from adps.metrics import compute_metrics  # noqa: E402


def make_data(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(0, n, 2):  # every other image is anomalous
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(3, size / 8, 2)
            masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    noise = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), sigma=(0, 4, 4))
    maps = (noise * 5 + ndimage.gaussian_filter(masks * 1.5, sigma=(0, 3, 3))).astype(np.float32)
    return maps, masks


def best_time(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)

    maps, masks = make_data(args.n, args.size)
    labels = masks.reshape(args.n, -1).any(1)
    scores = maps.reshape(args.n, -1).max(1)
    n_regions = sum(ndimage.label(m, np.ones((3, 3)))[1] for m in masks)
    print(
        f"data: {args.n} maps of {args.size}x{args.size} = {maps.size / 1e6:.2f} M pixels "
        f"(float32), {masks.mean():.2%} anomalous pixels, {n_regions} GT regions, "
        f"{labels.sum()} anomalous images"
    )
    print(f"threads: 1 (CPU affinity {sorted(os.sched_getaffinity(0))}), best of {args.repeat}")

    ours, got = best_time(lambda: compute_metrics(labels, scores, masks, maps), args.repeat)
    y, s = masks.ravel(), maps.ravel()
    ref, (auroc, ap) = best_time(
        lambda: (roc_auc_score(y, s), average_precision_score(y, s)), args.repeat
    )
    print(f"adps compute_metrics (all 7 metrics incl. AUPRO): {ours:6.2f} s")
    print(f"sklearn roc_auc_score + average_precision_score:  {ref:6.2f} s")
    print(f"ratio sklearn(AUROC+AP) / adps(all metrics): {ref / ours:.2f}x")
    print(
        f"agreement with sklearn: |d pixel_auroc| = {abs(got['pixel_auroc'] - auroc):.1e}, "
        f"|d pixel_ap| = {abs(got['pixel_ap'] - ap):.1e}"
    )
    print("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in got.items()))


if __name__ == "__main__":
    main()
