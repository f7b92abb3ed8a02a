"""Score the peer runs with adps's own metrics (run with the adps venv, not the peer venv).

Reads benchmarks/peers/out/<dataset>.npz written by patchcore.py, computes
``adps.metrics.compute_metrics(labels, scores, masks, maps)`` at the 256 x 256 working
resolution, writes out/patchcore.json ({dataset: {metrics..., fit_seconds, images, ...}}) and
prints a markdown table (metrics in percent).

  /work/main/.venv/bin/python benchmarks/peers/score.py [bottle weld ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from adps.metrics import METRIC_KEYS, compute_metrics

OUT = Path(__file__).resolve().parent / "out"
COLUMNS = [
    ("image_auroc", "image AUROC"),
    ("image_ap", "image AP"),
    ("pixel_auroc", "pixel AUROC"),
    ("pixel_ap", "pixel AP"),
    ("aupro", "AUPRO"),
]


def _round(v):
    return None if v is None else round(v, 1)


def score(path: Path) -> dict:
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    metrics = compute_metrics(z["labels"], z["scores"], z["masks"], z["maps"])
    return {
        **{k: metrics[k] for k in METRIC_KEYS},
        "fit_seconds": round(meta["fit_seconds"], 1),
        "fit_cpu_seconds": _round(meta.get("fit_cpu_seconds")),  # None: not recorded (older run)
        "infer_seconds": round(meta["infer_seconds"], 1),
        "images": {
            "train": meta["train_images"],
            "test": int(z["labels"].size),
            "anomalous": int(z["labels"].sum()),
        },
        "resolution": list(z["maps"].shape[1:]),
        **{
            k: meta[k]
            for k in (
                "memory_bank",
                "threads",
                "anomalib",
                "torch",
                "timm",
                "backbone",
                "layers",
                "num_neighbors",
                "coreset_sampling_ratio",
                "mean",
                "std",
                "backbone_tensors_checked",
            )
        },
        "malloc_env": meta.get("malloc_env", {}),
    }


def main(names: list[str]) -> None:
    names = names or sorted(p.stem for p in OUT.glob("*.npz"))
    if not names:
        sys.exit(f"no .npz in {OUT}: run patchcore.py first")
    results = {name: score(OUT / f"{name}.npz") for name in names}
    (OUT / "patchcore.json").write_text(json.dumps(results, indent=2) + "\n")
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    sec = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    print(
        "| dataset | " + " | ".join(c for _, c in COLUMNS) + " | fit s | fit CPU s | inference s |"
    )
    print("|---" * (len(COLUMNS) + 4) + "|")
    for name, r in results.items():
        print(
            f"| {name} | "
            + " | ".join(pct(r[k]) for k, _ in COLUMNS)
            + f" | {sec(r['fit_seconds'])} | {sec(r['fit_cpu_seconds'])}"
            + f" | {sec(r['infer_seconds'])} |"
        )
    print(f"\nwrote {OUT / 'patchcore.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])
