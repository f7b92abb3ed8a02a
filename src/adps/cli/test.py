"""adps test: evaluate a trained model on a dataset's test split."""

from __future__ import annotations

import argparse
from pathlib import Path

from adps.cli.options import add_device_argument
from adps.data.spec import add_data_arguments, dataset_name, open_dataset


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "test", help="evaluate a model on a test split",
        description="Evaluate a checkpoint on the test split: image AUROC/AP/F1-max, pixel "
                    "AUROC/AP/F1-max and AUPRO (official MVTec algorithm, FPR 0.3). Writes "
                    "OUT/metrics.json and OUT/metrics.md and prints the markdown row.")
    p.add_argument("--model", required=True, type=Path, help="checkpoint (model.pt)")
    add_data_arguments(p)
    add_device_argument(p)
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: 1 on CPU, 32 on GPU)")
    p.add_argument("--eval-resolution", choices=("working", "original"), default="working",
                   help="score maps at the model's size or at each image's original size "
                        "(MVTec's official protocol)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the model's)")
    p.add_argument("--report", action="store_true", help="also write OUT/report.html")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adps.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from adps.engine.evaluate import evaluate, markdown_header, markdown_row, write_evaluation

    ckpt = load_checkpoint(args.model)
    model = model_from_checkpoint(ckpt)
    dataset = open_dataset(args, "test", model.config.image_size)
    result = evaluate(model, dataset, args.device, args.batch_size, args.eval_resolution,
                      progress=not args.no_progress, cache_dir=args.cache_dir)
    out = args.out or args.model.parent
    name = dataset_name(args)
    path = write_evaluation(result, out, name, {"eval_resolution": args.eval_resolution,
                                                "checkpoint": str(args.model)})
    print(markdown_header())
    print(markdown_row(name, result.metrics))
    print(f"{result.images_per_second:.1f} images/s, peak memory {result.peak_memory_mb:.0f} MiB "
          f"({result.memory_kind}); metrics: {path}")
    if args.report:
        from adps.cli.report import write_report

        print(f"report: {write_report(args, ckpt, model, dataset, result, out / 'report.html')}")
    return 0
