"""adps demo: the whole workflow on a built-in procedural dataset, on CPU, in a few minutes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from adps.cli.options import add_device_argument

DEMO_MODEL: dict[str, Any] = {
    "image_size": 128,
    "k": 4,
}  # 32 px student patches, as the paper's k=8 at 256
DEMO_TRAIN: dict[str, Any] = {
    "epochs": 30,
    "batch_size": 16,
    "steps_per_epoch": 8,
    "checkpoint_every": 10,
    # 20 of the 100 normal images set the image threshold for 5% false alarms
    "calibration_holdout": 0.2,
    "target_false_alarm_rate": 0.05,
}
DEMO_DATA: dict[str, Any] = {"n_train": 100, "n_test_good": 20, "n_test_defect": 40}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build a small dataset, train, evaluate (no data needed)",
        description="Generate a procedural dataset of brushed-metal surfaces (normal training "
        "images; test defects: scratches, dents and stains, drawn by a generator "
        "unlike the training synthesis), train a small but real ADPS model "
        "(EfficientNet-Lite0 teacher, 128 px, k=4) on 80 of the 100 normal images, "
        "set the image threshold on the other 20, evaluate, and write metrics, "
        "a report and the model. Takes a few minutes on a 2-core CPU.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".adps-cache/demo-data"),
        help="where the generated dataset is kept (reused across runs)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=DEMO_TRAIN["epochs"],
        help=f"training epochs of {DEMO_TRAIN['steps_per_epoch']} steps "
        f"(default {DEMO_TRAIN['epochs']})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for data and training")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adps.cli.report import write_report
    from adps.config import ModelConfig, TrainConfig
    from adps.data.procedural import make_demo_dataset
    from adps.data.spec import DataSpec
    from adps.engine.checkpoint import Checkpoint
    from adps.engine.evaluate import evaluate
    from adps.engine.train import train
    from adps.report.tables import markdown_header, markdown_row, write_evaluation

    start = time.perf_counter()
    size = DEMO_MODEL["image_size"]
    category = make_demo_dataset(args.data_dir, size=size, seed=args.seed, **DEMO_DATA)
    print(f"dataset: {category} (procedural brushed metal; test defects: scratch, dent, stain)")
    spec = DataSpec(category)
    model_config = ModelConfig(**DEMO_MODEL)
    train_config = TrainConfig(**{**DEMO_TRAIN, "epochs": args.epochs, "seed": args.seed})
    result = train(
        model_config,
        train_config,
        spec.open("train", size),
        args.out,
        device=args.device,
        progress=not args.no_progress,
    )
    print(
        f"trained {result.epochs} epochs in {result.seconds:.0f} s "
        f"({result.images_per_second:.0f} images/s)"
    )
    ckpt = Checkpoint.load(result.checkpoint)
    evaluation = evaluate(
        ckpt.model(), spec.open("test", size), args.device, progress=not args.no_progress
    )
    write_evaluation(evaluation, args.out, "demo", {"train_seconds": result.seconds})
    report = write_report(
        evaluation,
        args.out / "report.html",
        ckpt=ckpt,
        model_path=result.checkpoint,
        spec=spec,
        eval_resolution="working",
        title="adps demo: procedural brushed metal",
    )
    print(markdown_header())
    print(markdown_row("demo", evaluation.metrics))
    threshold = ckpt.thresholds.decision
    flagged = evaluation.scores >= threshold
    labels = evaluation.labels.astype(bool)
    print(
        f"\nimage threshold {threshold:.4f} (set on 20 held-out normal images for a "
        f"5% false-alarm rate): {int(flagged[labels].sum())} of {int(labels.sum())} defective "
        f"and {int(flagged[~labels].sum())} of {int((~labels).sum())} normal test images "
        f"flagged"
    )
    print(
        f"\nmodel:   {result.checkpoint}\nmetrics: {args.out / 'metrics.json'}\n"
        f"report:  {report}\ntotal time: {time.perf_counter() - start:.0f} s"
    )
    return 0
