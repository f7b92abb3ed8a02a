"""Image scores compared on one trained model: the paper's max of the smoothed map against the
mean of its top q % (and other smoothing widths), from the same maps.

The maps are computed once; every score variant is a function of them, so the comparison costs
one evaluation. Prints image AUROC, AP and F1-max per variant as a markdown table.

    python benchmarks/bench_image_score.py --model runs/recipes/C-fast/bottle/model.pt \\
        --data ../shared/datasets/mvtec_ad --category bottle
"""

from __future__ import annotations

import argparse

import torch

from adps.data.spec import DataSpec
from adps.engine.checkpoint import Checkpoint
from adps.engine.evaluate import evaluate
from adps.engine.tiling import open_split
from adps.metrics import image_metrics
from adps.models.adps import image_score

VARIANTS = [
    ("max", 4.0, None),
    ("max", 8.0, None),
    ("top_mean", 4.0, 0.001),
    ("top_mean", 4.0, 0.01),
    ("top_mean", 4.0, 0.05),
    ("top_mean", 4.0, 0.1),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--category", default=None)
    args = parser.parse_args()

    model = Checkpoint.load(args.model).model()
    spec = DataSpec(args.data, category=args.category)
    result = evaluate(model, open_split(spec, "test", model.config), "cpu", progress=False)
    maps = result.maps[:, None]
    print(f"{spec.name}: {len(result.labels)} test images, model {args.model}")
    print("| image score | image AUROC | image AP | image F1-max |\n|---|---|---|---|")
    for kind, sigma, share in VARIANTS:
        with torch.no_grad():
            scores = image_score(maps, kind, sigma, share or 0.01).numpy()
        m = image_metrics(result.labels, scores)
        name = (
            f"max, sigma {sigma:g}"
            if kind == "max"
            else f"top {100 * share:g}% mean, sigma {sigma:g}"
        )
        print(
            f"| {name} | {100 * m['image_auroc']:.1f} | {100 * m['image_ap']:.1f} | "
            f"{100 * m['image_f1max']:.1f} |"
        )


if __name__ == "__main__":
    main()
