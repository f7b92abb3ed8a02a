"""The memory prior measured on one trained model: the PSM's map alone (the paper), the prior
alone, and late fusions of the two, at several memory sizes and PSM boosts.

The checkpoint's weights are kept; for each memory size the prior is fitted on the dataset's
normal training images exactly as ``adps train --prior memory`` does (leave-one-image-out
statistics), and the PSM and prior maps of the test images are computed once, so every boost is
a function of the same maps. Prints a markdown table (image AUROC, AP,
F1-max, pixel AUROC, AP, AUPRO, fit seconds, batch-1 latency, peak memory) and writes it as JSON.

    python benchmarks/bench_prior.py --model runs/recipes/weld-C-30m/welding/model.pt \\
        --data ../shared/datasets/battery_weld/welding --sizes 1024 4096 16384
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from adps.config import ModelConfig, from_dict, to_dict
from adps.data.cache import load_tensor_stack
from adps.data.spec import DataSpec
from adps.engine.checkpoint import Checkpoint
from adps.engine.evaluate import _peak_memory
from adps.engine.prior import fit_prior
from adps.metrics import compute_metrics
from adps.models.adps import ADPS


def latency_ms(model: ADPS, image: torch.Tensor, repeats: int = 10) -> float:
    x = image[None].float().div(255).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return 1000 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--category", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096])
    parser.add_argument("--boosts", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--neighbors", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    ckpt = Checkpoint.load(args.model)
    base = ckpt.model_config
    spec = DataSpec(args.data, category=args.category)
    size = base.image_size
    train_images, _, _ = load_tensor_stack(spec.open("train", size), progress=False)
    test = spec.open("test", size)
    images, masks, labels = load_tensor_stack(test, progress=False)
    has_mask = [r.has_mask for r in test.records]
    masks, labels = masks[:, 0].numpy(), labels.numpy()

    rows = []

    def record(name: str, maps: torch.Tensor, model: ADPS, **extra) -> None:
        with torch.no_grad():
            scores = model.score(maps).numpy()
        m = compute_metrics(labels, scores, masks, maps[:, 0].numpy(), mask_available=has_mask)
        rows.append({"name": name, **dict(m.items()), **extra})
        r = rows[-1]
        print(
            f"| {name} | "
            + " | ".join(
                f"{100 * r[k]:.1f}"
                for k in (
                    "image_auroc",
                    "image_ap",
                    "image_f1max",
                    "pixel_auroc",
                    "pixel_ap",
                    "aupro",
                )
            )
            + f" | {extra.get('fit_s', 0):.1f} | {extra.get('latency_ms', 0):.1f} |",
            flush=True,
        )

    print(f"{spec.name}: {len(train_images)} train, {len(images)} test images, model {args.model}")
    print(
        "| map | image AUROC | image AP | image F1-max | pixel AUROC | pixel AP | AUPRO "
        "| fit s | batch-1 ms |\n|---|---|---|---|---|---|---|---|---|"
    )
    for memory_size in args.sizes:
        config = from_dict(
            ModelConfig,
            {
                **to_dict(base),
                "prior": "memory",
                "memory_size": memory_size,
                "memory_neighbors": args.neighbors,
            },
        )
        model = ADPS(config, pretrained=False)
        model.load_state_dict(ckpt.state, strict=False)  # the bank is fitted below
        fit = fit_prior(model, train_images)
        model.eval()
        psm_maps, prior_maps = [], []
        with torch.no_grad():
            for i in range(0, len(images), 8):
                x = images[i : i + 8].float().div(255).contiguous(memory_format=torch.channels_last)
                psm_map, teacher = model.psm_map(x)
                psm_maps.append(psm_map)
                prior_maps.append(model.memory(teacher, (size, size)))
        psm_map, prior_map = torch.cat(psm_maps), torch.cat(prior_maps)
        if memory_size == args.sizes[0]:
            plain = ADPS(base, pretrained=False)
            plain.load_state_dict(ckpt.state)
            record(
                "PSM alone (the paper)",
                psm_map,
                plain.eval(),
                latency_ms=latency_ms(plain.eval(), images[0]),
            )
        latency = latency_ms(model, images[0])
        peak, _ = _peak_memory(torch.device("cpu"))
        for boost in [0.0, *args.boosts]:
            fused = model.memory.fuse(psm_map, prior_map, boost)
            name = (
                f"prior alone, memory {fit.bank_size}"
                if boost == 0
                else f"fused, boost {boost:g}, memory {fit.bank_size}"
            )
            record(
                name,
                fused,
                model,
                fit_s=fit.seconds,
                latency_ms=latency,
                memory=fit.bank_size,
                boost=boost,
                peak_rss_mb=peak,
            )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
