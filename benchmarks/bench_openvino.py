"""OpenVINO at f32 and bf16 inference precision against torch, on a trained model's test split:
batch-1 latency, and what bf16 costs in accuracy (map differences and every metric).

    .venv/bin/python benchmarks/bench_openvino.py --model runs/recipes/weld-C-20m/welding/model.pt \
        --data ../shared/datasets/battery_weld/welding [--fit-prior]

``--fit-prior`` first adds the late-fused memory prior to a model trained without it, fitted on
the training split as ``--recipe fast`` does, so the default recipe's graph is what is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adps.data.cache import load_tensor_stack
from adps.data.spec import DataSpec
from adps.engine.calibrate import f1_optimal_threshold
from adps.engine.checkpoint import Checkpoint
from adps.engine.inference import TorchForward
from adps.engine.prior import fit_prior
from adps.engine.runtime import OpenVinoRunner
from adps.export import export_openvino
from adps.metrics import compute_metrics
from adps.models.adps import ADPS


def latency(run, x, repeats: int) -> float:
    run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--category")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument(
        "--fit-prior",
        action="store_true",
        help="add the memory prior (fitted on the training split) before timing",
    )
    args = p.parse_args()
    ckpt = Checkpoint.load(args.model)
    spec = DataSpec(args.data, category=args.category)
    if args.fit_prior:
        config = dataclasses.replace(ckpt.model_config, prior="memory")
        model = ADPS(config, pretrained=False)
        model.load_state_dict(ckpt.state, strict=False)  # the bank is fitted next
        train_images, _, _ = load_tensor_stack(
            spec.open("train", config.image_size), progress=False
        )
        fit_prior(model, train_images)
        ckpt = Checkpoint.of(model.eval(), thresholds=ckpt.thresholds)
    model = ckpt.model()
    dataset = spec.open("test", model.config.image_size)
    images, masks, labels = load_tensor_stack(dataset, progress=False)
    has_mask = np.array([r.has_mask for r in dataset.records])
    cpu = torch.device("cpu")
    torch_forward = TorchForward(model, cpu)
    runs = {"torch fp32 (channels-last)": lambda x: torch_forward(torch.from_numpy(x))}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_openvino(ckpt, Path(tmp) / "model.xml")
        for precision in ("f32", "bf16"):
            runs[f"OpenVINO {precision}"] = OpenVinoRunner(path, precision=precision)
        x1 = images[:1].numpy()
        results = {}
        for name, run in runs.items():
            maps, scores = zip(
                *(run(images[i : i + 1].numpy()) for i in range(len(images))), strict=True
            )
            maps = np.concatenate([np.asarray(m) for m in maps])[:, 0]
            scores = np.concatenate([np.asarray(s) for s in scores])
            metrics = compute_metrics(
                labels.numpy(), scores, masks[:, 0].numpy(), maps, mask_available=has_mask
            )
            results[name] = (maps, scores, metrics, latency(run, x1, args.repeats))
    ref_maps, ref_scores = results["torch fp32 (channels-last)"][:2]
    # decisions compared at torch's F1-optimal image threshold on these images (the stored one
    # belongs to the model before --fit-prior)
    cut = f1_optimal_threshold(labels.numpy(), ref_scores).threshold
    keys = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro")
    print(
        f"{args.model}{' + memory prior' if args.fit_prior else ''}: {len(images)} test "
        f"images, torch threads {torch.get_num_threads()}"
    )
    print(
        "| runtime | batch-1 ms | max map diff | mean map diff | max score diff | "
        f"decisions changed (score >= {cut:.4f}) | " + " | ".join(keys) + " |"
    )
    print("|---|---|---|---|---|---|" + "---|" * len(keys))
    for name, (maps, scores, metrics, ms) in results.items():
        print(
            f"| {name} | {ms:.1f} | {np.abs(maps - ref_maps).max():.4f} | "
            f"{np.abs(maps - ref_maps).mean():.5f} | {np.abs(scores - ref_scores).max():.4f} | "
            f"{int(((scores >= cut) != (ref_scores >= cut)).sum())} of {len(scores)} | "
            + " | ".join(f"{100 * metrics[k]:.1f}" for k in keys)
            + " |"
        )


if __name__ == "__main__":
    main()
