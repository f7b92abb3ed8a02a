"""adps test: evaluate a trained model on a dataset's test split."""

from __future__ import annotations

import argparse
from pathlib import Path

from adps.cli.options import (
    add_data_arguments,
    add_eval_resolution_argument,
    add_inference_arguments,
    add_overlap_argument,
    data_spec,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "test",
        help="evaluate a model on a test split",
        description="Evaluate a checkpoint on the test split: image AUROC/AP/F1-max, pixel "
        "AUROC/AP/F1-max and AUPRO (official MVTec algorithm, FPR 0.3). Writes "
        "OUT/metrics.json and OUT/metrics.md and prints the markdown row.",
    )
    add_inference_arguments(p, "checkpoint (model.pt)")
    add_data_arguments(p)
    add_eval_resolution_argument(p)
    add_overlap_argument(p, "test")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the model's)")
    p.add_argument("--report", action="store_true", help="also write OUT/report.html")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adps.cli.report import evaluate_checkpoint, write_report
    from adps.report.tables import markdown_header, markdown_row, write_evaluation

    spec = data_spec(args)
    ckpt, result, overlap = evaluate_checkpoint(args, spec)
    out = args.out or args.model.parent
    path = write_evaluation(
        result,
        out,
        spec.name,
        {
            "eval_resolution": args.eval_resolution,
            "checkpoint": str(args.model),
            "overlap": {**overlap.to_dict(), "allowed": args.allow_overlap},
        },
    )
    print(markdown_header())
    print(markdown_row(spec.name, result.metrics))
    print(
        f"{result.images_per_second:.1f} images/s, peak memory {result.peak_memory_mb:.0f} MiB "
        f"({result.memory_kind}); metrics: {path}"
    )
    if args.report:
        report = write_report(
            result,
            out / "report.html",
            ckpt=ckpt,
            model_path=args.model,
            spec=spec,
            eval_resolution=args.eval_resolution,
            overlap=overlap,
        )
        print(f"report: {report}")
    return 0
