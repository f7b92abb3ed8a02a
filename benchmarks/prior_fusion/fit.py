"""How well `adps calibrate --fit-fusion` chooses the late fusion from a few labelled defects,
on the maps dump.py wrote: for each random split, the fusion is fitted (adps.engine.fusion, the
code calibrate runs) on N defective images with their masks, and every map is scored on the
rest of the test set (all normal images, the other defective ones). Prints the mean over the
splits for the PSM alone, the prior alone, the default fusion and the fitted one.

    python benchmarks/prior_fusion/fit.py OUT.npz [--defects 10] [--splits 5]
"""

import argparse

import numpy as np
import torch

from adps.engine.fusion import choose_fusion
from adps.metrics import compute_metrics
from adps.models.adps import image_score
from adps.models.memory import late_fusion

KEYS = ("image_auroc", "image_f1max", "pixel_auroc", "pixel_ap", "aupro")
p = argparse.ArgumentParser()
p.add_argument("dump")
p.add_argument("--defects", type=int, default=10, help="labelled defective images to fit on")
p.add_argument("--splits", type=int, default=5)
args = p.parse_args()
z = np.load(args.dump)
labels, masks, has_mask = z["labels"], z["masks"] > 0.5, z["has_mask"]
scale = np.percentile(z["trQ"], 99.9)  # as fit_prior: normal images the bank does not hold
psm, prior = torch.from_numpy(z["teP"]).float(), torch.from_numpy(z["teQ"] / scale).float()


def metrics(rows, maps):
    maps = maps[rows][:, None]
    scores = image_score(maps, "max", 4.0).numpy()
    m = compute_metrics(
        labels[rows], scores, masks[rows], maps[:, 0].numpy(), mask_available=has_mask[rows]
    )
    return np.array([100 * m[k] for k in KEYS])


rows_of = {"PSM alone": [], "prior alone": [], "default fusion (1, 2)": [], "fitted fusion": []}
chosen = []
labelled = np.flatnonzero((labels == 1) & has_mask)
for seed in range(args.splits):
    fit_rows = np.random.default_rng(seed).choice(labelled, args.defects, replace=False)
    rest = np.setdiff1d(np.arange(len(labels)), fit_rows)
    fit = choose_fusion(torch.from_numpy(masks[fit_rows]), psm[fit_rows], prior[fit_rows])
    chosen.append(f"({fit.exponent:g}, {fit.boost:g})")
    rows_of["PSM alone"].append(metrics(rest, psm))
    rows_of["prior alone"].append(metrics(rest, prior))
    rows_of["default fusion (1, 2)"].append(metrics(rest, late_fusion(psm, prior, 2.0)))
    rows_of["fitted fusion"].append(metrics(rest, late_fusion(psm, prior, fit.boost, fit.exponent)))
print(
    f"{args.dump}: fitted on {args.defects} defective images, {args.splits} splits; chosen "
    f"(exponent, boost): {', '.join(chosen)}"
)
print("| map | " + " | ".join(KEYS) + " |\n|---|" + "---|" * len(KEYS))
for name, rows in rows_of.items():
    mean, spread = np.mean(rows, axis=0), np.std(rows, axis=0)
    print(
        f"| {name} | "
        + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in zip(mean, spread, strict=True))
        + " |"
    )
