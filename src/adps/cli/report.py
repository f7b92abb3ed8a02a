"""adps report: evaluate a checkpoint on a test split and write a one-file HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from adps.cli.options import add_device_argument
from adps.data.spec import add_data_arguments, dataset_name, open_dataset


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="evaluate a model and write an HTML report",
        description="Evaluate a checkpoint on the test split and write ONE self-contained HTML "
                    "file (images and plots embedded; open it offline or mail it): the metrics "
                    "table, ROC and precision-recall curves at image and pixel level, the "
                    "per-region-overlap curve (FPR 0-0.3), the histogram of normal vs defective "
                    "image scores with the decision threshold, and a gallery (input, ground "
                    "truth, heatmap, predicted mask, score, decision) with the worst missed "
                    "defects and false alarms first. Decisions use the checkpoint's calibrated "
                    "image threshold (`adps calibrate`); without one, the F1-optimal threshold of "
                    "the test set is used and the report says so.",
        epilog="example: adps report --model runs/bottle/model.pt --data mvtec --category bottle "
               "--out bottle.html")
    p.add_argument("--model", required=True, type=Path, help="checkpoint (model.pt)")
    add_data_arguments(p)
    add_device_argument(p)
    p.add_argument("--out", type=Path, default=Path("report.html"),
                   help="HTML file to write (default: report.html)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: 1 on CPU, 32 on GPU)")
    p.add_argument("--eval-resolution", choices=("working", "original"), default="working",
                   help="score the metrics table at the model's size or at each image's original "
                        "size (MVTec's official protocol); curves and gallery use the model's size")
    p.add_argument("--max-gallery", type=int, default=60,
                   help="at most this many gallery images, most wrong first (default 60)")
    p.add_argument("--title", help="page title (default: 'adps report: <dataset>')")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def open_test_dataset(args: argparse.Namespace, size: int):
    """The test split named by the data arguments, resized to the model's working size."""
    return open_dataset(args, "test", size)


def write_report(args: argparse.Namespace, ckpt: dict, model, dataset, result, out: Path) -> Path:
    """The HTML report of an evaluation, with the checkpoint's thresholds (shared with `test`)."""
    from adps.data.cache import load_tensor_stack
    from adps.report.html import build_report

    images, _, _ = load_tensor_stack(dataset, cache_dir=args.cache_dir, progress=False)
    thresholds = ckpt.get("thresholds") or {}
    name = dataset_name(args)
    info = {"model": str(args.model), "data": str(args.data), "dataset": name,
            "backbone": model.config.backbone, "metrics resolution": args.eval_resolution}
    return build_report(result, images, out, image_threshold=thresholds.get("image"),
                        pixel_threshold=thresholds.get("pixel", 0.5),
                        title=getattr(args, "title", None) or f"adps report: {name}", info=info,
                        max_gallery=getattr(args, "max_gallery", 60))


def run(args: argparse.Namespace) -> int:
    from adps.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from adps.engine.evaluate import evaluate, markdown_header, markdown_row

    ckpt = load_checkpoint(args.model)
    model = model_from_checkpoint(ckpt)
    dataset = open_test_dataset(args, model.config.image_size)
    result = evaluate(model, dataset, args.device, args.batch_size, args.eval_resolution,
                      progress=not args.no_progress, cache_dir=args.cache_dir)
    out = write_report(args, ckpt, model, dataset, result, args.out)
    print(markdown_header())
    print(markdown_row(dataset_name(args), result.metrics))
    print(f"report: {out}")
    return 0
