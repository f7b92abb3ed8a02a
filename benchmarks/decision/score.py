"""Image scores (the pass/fail decision) compared on the maps benchmarks/decision/run.sh dumps:
the PSM alone, the memory alone, the fused map adps ships, and label-free combinations of the
two maps' image scores, each standardised on normal images the model did not learn from.

    python benchmarks/decision/score.py runs/decision/*.npz [--out FILE.json]

Every score is a function of the saved maps, so the comparison costs no model evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from adps.metrics import compute_metrics
from adps.models.adps import image_score
from adps.models.memory import late_fusion

KEYS = ("image_auroc", "image_ap", "image_f1max", "pixel_ap", "aupro")


def score(maps: np.ndarray, kind: str = "max", share: float = 0.01) -> np.ndarray:
    """The image scores adps computes from (N, H, W) maps (sigma 4, as the model's default)."""
    return image_score(torch.from_numpy(maps[:, None]).float(), kind, 4.0, share).numpy()


def fused(psm: np.ndarray, prior: np.ndarray, z) -> np.ndarray:
    scaled = torch.from_numpy(prior) / float(z["stats"][2])
    out = late_fusion(
        torch.from_numpy(psm), scaled, float(z["psm_boost"]), float(z["prior_exponent"])
    )
    return out.numpy()


def standardise(test: np.ndarray, normal: np.ndarray) -> np.ndarray:
    return (test - normal.mean()) / max(normal.std(), 1e-12)


def candidates(z) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """name -> (image scores, the map the pixel metrics use or None)."""
    teP, teQ, trP, trQ = z["teP"], z["teQ"], z["trP"], z["trQ"]
    teF, trF = fused(teP, teQ, z), fused(trP, trQ, z)
    sP, sQ, sF = score(teP), score(teQ), score(teF)
    nP, nQ, nF = score(trP), score(trQ), score(trF)
    zP, zQ, zF = standardise(sP, nP), standardise(sQ, nQ), standardise(sF, nF)
    out = {
        "PSM alone": (sP, teP),
        "memory alone": (sQ, teQ),
        "fused (today)": (sF, teF),
        "z memory + z PSM": (zQ + zP, None),
        "max(z memory, z PSM)": (np.maximum(zQ, zP), None),
        "z memory + z fused": (zQ + zF, None),
        "z memory + 0.5 z PSM": (zQ + 0.5 * zP, None),
    }
    for share in (0.001, 0.01):
        out[f"fused, top {share:.1%} mean"] = (score(teF, "top_mean", share), None)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("maps", nargs="+", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rows = []
    for path in args.maps:
        z = np.load(path)
        labels, masks, has_mask = z["labels"], z["masks"], z["has_mask"]
        print(f"\n{path.stem}: {len(labels)} test images, {int(labels.sum())} defective")
        print(f"{'score':32s} " + " ".join(f"{k[:11]:>11s}" for k in KEYS))
        for name, (scores, maps) in candidates(z).items():
            m = compute_metrics(
                labels,
                scores,
                masks if maps is not None else None,
                maps,
                mask_available=has_mask if maps is not None else None,
            )
            values = {
                k: round(100 * float(m[k]), 1)
                for k in KEYS
                if k in m and m[k] is not None and not math.isnan(m[k])
            }
            print(f"{name:32s} " + " ".join(f"{values.get(k, float('nan')):11.1f}" for k in KEYS))
            rows.append({"run": path.stem, "score": name, "metrics": values})
    if args.out:
        args.out.write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
