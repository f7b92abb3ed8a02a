"""Late fusions of the PSM map and the memory prior compared on the maps dump.py wrote: z-score
sums, quantile-normalised sums and maxima, and products prior x (1 + a x PSM). The late fusion
adps ships (README, "A memory of normal features") was chosen from this table.

    python benchmarks/prior_fusion/compare.py OUT.npz
"""

import sys

import numpy as np
import torch

from adps.metrics import compute_metrics
from adps.models.adps import image_score

z = np.load(sys.argv[1])
trP, trQ, teP, teQ = z["trP"], z["trQ"], z["teP"], z["teQ"]


def ev(name, maps):
    s = image_score(torch.from_numpy(maps[:, None]).float(), "max", 4.0).numpy()
    m = compute_metrics(z["labels"], s, z["masks"], maps, mask_available=z["has_mask"])
    print(
        f"{name:40s} "
        + " ".join(
            f"{100 * m[k]:5.1f}"
            for k in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")
        ),
        flush=True,
    )


def zs(a, ref):
    return (a - ref.mean()) / ref.std()


def qn(a, ref, q=99):
    med = np.median(ref)
    return (a - med) / (np.percentile(ref, q) - med)


print(" " * 40 + " iAUC   iAP   pAUC   pAP  AUPRO")
ev("psm", teP)
ev("prior", teQ)
for w in (0.5, 0.75):
    ev(f"z mean w{w}", (1 - w) * zs(teP, trP) + w * zs(teQ, trQ))
for q in (99, 99.9):
    for w in (0.5,):
        ev(f"q{q} mean w{w}", (1 - w) * qn(teP, trP, q) + w * qn(teQ, trQ, q))
    ev(f"q{q} max", np.maximum(qn(teP, trP, q), qn(teQ, trQ, q)))
ev("z max", np.maximum(zs(teP, trP), zs(teQ, trQ)))
ev("prior * (1+psm)", teQ * (1 + teP))
ev(
    "log-sum: log z",
    np.log1p(np.clip(zs(teP, trP), 0, None)) + np.log1p(np.clip(zs(teQ, trQ), 0, None)),
)
print("--- multiplicative")
for a in (0.5, 1, 2, 4, 10):
    ev(f"prior * (1 + {a} psm)", teQ * (1 + a * teP))
for a in (1, 4):
    ev(
        f"prior/q99 * (1 + {a} psm_z)",
        (teQ / np.percentile(trQ, 99)) * (1 + a * np.clip(zs(teP, trP), 0, None)),
    )
ev("prior * psm", teQ * teP)
print(
    "--- the shipped squash 1 - 2^-r with r = (prior / q99.9)^g x (1 + a psm); g = 1, a = 2 ships"
)
q999 = np.percentile(trQ, 99.9)
for g in (1, 0.75, 0.5, 0.25):
    for a in (2, 4):
        ev(f"g {g}, a {a}", 1 - np.exp2(-((teQ / q999) ** g) * (1 + a * teP)))
