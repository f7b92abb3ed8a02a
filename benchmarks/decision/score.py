"""Image scores (the pass/fail decision) compared on the maps benchmarks/decision/run.sh dumps:
the PSM alone, the memory alone, the fused map adps ships, and label-free combinations of the
two maps' image scores, each standardised on normal images the model did not learn from.

    python benchmarks/decision/score.py runs/decision/*.npz [--out FILE.json] [--results]

Every score is a function of the saved maps, so the comparison costs no model evaluation. The
standardized decision is adps's own (adps.models.memory.standardized_score) with its statistics
computed as adps.engine.prior.fit_decision computes them on the training images (the memory's
leave-one-image-out, the PSM's on the images it learned from). ``--results`` writes the rows
adps publishes (PSM alone, memory alone, fused map, standardized decision) to
benchmarks/results/decision.json.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from adps.metrics import compute_metrics
from adps.models.adps import image_score
from adps.models.memory import late_fusion, standardized_score

ROOT = Path(__file__).resolve().parents[2]
CONCLUSION = (
    "The standardized decision is the default because it ranks best on image AUROC on every set "
    "and seed where the image metrics do not saturate (screw 95.0 / 96.3 against the fused map's "
    "93.9 / 94.2 and the memory's 92.4 / 93.8; weld 96.8 / 98.0 against 96.4 / 97.2 and 94.7 / "
    "94.7) and leaves the maps as they were. Against PatchCore with an equal bank it is ahead on "
    "the mean of two PatchCore runs by 3.25 image AUROC points on weld (97.4 against 94.15; "
    "PatchCore's runs gave 93.9 and 94.4) and by 1.35 on screw (95.65 against 94.3; 94.9 and "
    "93.7, so 0.75 against the better run). Its F1-max is level with the memory alone's, not "
    "above it (screw 94.5 against 94.6, weld 96.6 against 96.8): the targets of the issue are not"
    " all met."
)
DATASETS = {"bottle": "bottle", "weld": "battery weld", "screw": "screw (image level)"}
WELD_SPLIT = "disjoint (benchmarks/splits/battery_weld.json)"
# the rows adps publishes: candidate name -> label
PUBLISHED = {
    "PSM alone": "adps, PSM alone",
    "memory alone": "adps, memory alone",
    "fused (today)": "adps, fused map (image_decision fused)",
    "standardized, w 1": "adps, standardized decision (default)",
}
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


def decision(sQ, sP, nQ, nP, weight: float) -> np.ndarray:
    """adps's standardized decision, statistics as fit_decision takes them ((n - 1) std)."""
    stats = torch.tensor([nQ.mean(), nQ.std(ddof=1), nP.mean(), nP.std(ddof=1)])
    return standardized_score(torch.from_numpy(sQ), torch.from_numpy(sP), stats, weight).numpy()


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
        "standardized, w 1": (decision(sQ, sP, nQ, nP, 1.0), teF),
        "standardized, w 0.5": (decision(sQ, sP, nQ, nP, 0.5), teF),
        "z memory + z PSM": (zQ + zP, None),
        "max(z memory, z PSM)": (np.maximum(zQ, zP), None),
        "z memory + z fused": (zQ + zF, None),
        "z memory + 0.5 z PSM": (zQ + 0.5 * zP, None),
        "z memory + 0.25 z PSM": (zQ + 0.25 * zP, None),
        "z memory + 2 z PSM": (zQ + 2 * zP, None),
    }
    tQ, tP = score(teQ, "top_mean"), score(teP, "top_mean")
    mQ, mP = score(trQ, "top_mean"), score(trP, "top_mean")
    out["z memory + z PSM, top 1% means"] = (standardise(tQ, mQ) + standardise(tP, mP), None)
    for share in (0.001, 0.01):
        out[f"fused, top {share:.1%} mean"] = (score(teF, "top_mean", share), None)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("maps", nargs="+", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--results", action="store_true", help="write benchmarks/results/decision.json")
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
    if args.results:
        write_results(rows)


def write_results(rows: list[dict]) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    machine = "2-core AMD EPYC CPU, no GPU"
    source = f"measured on {time.strftime('%Y-%m-%d')} (adps at commit {commit}); models not kept"
    command = (
        "bash benchmarks/decision/run.sh 0 1 && "
        "python benchmarks/decision/score.py runs/decision/*.npz --results"
    )
    out = []
    for r in rows:
        if r["score"] not in PUBLISHED:
            continue
        name, seed = r["run"].rsplit("-s", 1)
        row = {
            "run": f"decision-{name}-s{seed}",
            "label": PUBLISHED[r["score"]],
            "dataset": DATASETS[name],
            "settings": {
                "scoring": r["score"],
                "recipe": "fast (default), 256 px, k 8, 280 steps of 16, memory 4096 rows",
            },
            "seed": int(seed),
            "bank_size": 4096,
            "metrics": r["metrics"],
            "command": command,
            "source": source,
            "machine": machine,
        }
        if name == "weld":
            row["test_split"] = WELD_SPLIT
        out.append(row)
    doc = {
        "benchmark": "decision",
        "title": "The decision: what the trained model adds over a memory of the same size",
        "units": {"metrics": "percent"},
        "command": command,
        "machine": machine,
        "source": source,
        "note": "One model per set and seed (benchmarks/decision/run.sh), its maps scored four "
        "ways: the PSM's map alone, the memory's prior alone (a PatchCore-like memory of 4096 "
        "rows, 1 neighbour), the fused map and its score (image_decision fused, the default "
        "until this study), and the standardized decision (the memory's and the PSM's image "
        "scores, each standardised on the training images, the memory's leave-one-image-out, "
        "summed: the default since). Pixel metrics are those of the map each row decides on; "
        "the standardized decision's map is the fused map.",
        "conclusion": CONCLUSION,
        "rows": out,
    }
    path = ROOT / "benchmarks" / "results" / "decision.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
