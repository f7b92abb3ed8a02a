"""adps report: evaluate a checkpoint on a test split and write a one-file HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from adps.cli.options import (
    add_data_arguments,
    add_eval_resolution_argument,
    add_inference_arguments,
    add_overlap_argument,
    data_spec,
)

if TYPE_CHECKING:
    from adps.data.fingerprint import Overlap
    from adps.data.spec import DataSpec
    from adps.engine.checkpoint import Checkpoint
    from adps.engine.evaluate import EvalResult


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="evaluate a model and write an HTML report",
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
        "--out bottle.html",
    )
    add_inference_arguments(p, "checkpoint (model.pt)")
    add_data_arguments(p)
    add_eval_resolution_argument(p)
    add_overlap_argument(p, "test")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("report.html"),
        help="HTML file to write (default: report.html)",
    )
    p.add_argument(
        "--max-gallery",
        type=int,
        default=60,
        help="at most this many gallery images, most wrong first (default 60)",
    )
    p.add_argument("--title", help="page title (default: 'adps report: <dataset>')")
    p.set_defaults(func=run)


def evaluate_checkpoint(
    args: argparse.Namespace, spec: DataSpec
) -> tuple[Checkpoint, EvalResult, Overlap]:
    """(checkpoint, evaluation, overlap) of ``--model`` on the test split of ``spec``, with the
    inference flags (shared with `test`). Test images the model learned from are refused
    before anything is scored, unless ``--allow-overlap``."""
    from adps.data.fingerprint import check_overlap
    from adps.engine.checkpoint import Checkpoint
    from adps.engine.evaluate import evaluate
    from adps.engine.tiling import open_split

    ckpt = Checkpoint.load(args.model)
    dataset = open_split(spec, "test", ckpt.model_config)
    overlap = check_overlap(
        ckpt.fingerprint,
        [r.image for r in dataset.records],
        f"the test images of {spec.name}",
        args.allow_overlap,
    )
    if overlap:
        print(f"warning: --allow-overlap: {overlap.summary()}; the figures below are inflated")
    return (
        ckpt,
        evaluate(
            ckpt.model(),
            dataset,
            args.device,
            args.batch_size,
            args.eval_resolution,
            progress=not args.no_progress,
            cache_dir=spec.cache_dir,
        ),
        overlap,
    )


def write_report(
    result: EvalResult,
    out: Path,
    *,
    ckpt: Checkpoint,
    model_path: Path,
    spec: DataSpec,
    eval_resolution: str,
    title: str | None = None,
    max_gallery: int = 60,
    overlap: Overlap | None = None,
) -> Path:
    """The HTML report of a checkpoint's evaluation, with its thresholds (shared with `test`)."""
    from adps.report.html import build_report

    info = {
        "model": str(model_path),
        "data": str(spec.data),
        "dataset": spec.name,
        "backbone": ckpt.model_config.backbone,
        "metrics resolution": eval_resolution,
    }
    if overlap:
        info["overlap with training (allowed)"] = overlap.summary()
    return build_report(
        result,
        out,
        thresholds=ckpt.thresholds,
        title=title or f"adps report: {spec.name}",
        info=info,
        max_gallery=max_gallery,
    )


def run(args: argparse.Namespace) -> int:
    from adps.report.tables import markdown_header, markdown_row

    spec = data_spec(args)
    ckpt, result, overlap = evaluate_checkpoint(args, spec)
    out = write_report(
        result,
        args.out,
        ckpt=ckpt,
        model_path=args.model,
        spec=spec,
        eval_resolution=args.eval_resolution,
        title=args.title,
        max_gallery=args.max_gallery,
        overlap=overlap,
    )
    print(markdown_header())
    print(markdown_row(spec.name, result.metrics))
    print(f"report: {out}")
    return 0
