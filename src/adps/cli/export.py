"""adps export: one deployable graph (ONNX, TorchScript or OpenVINO) from images to map and
score."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or OpenVINO",
        description="Export a checkpoint as one graph: (B, 3, H, W) RGB images (uint8 0..255 "
        "or float32 0..1) at the model's size H x W (one tile of a tiled model) -> "
        "anomaly map (B, 1, H, W) and score (B,), normalisation included, dynamic "
        "batch size. The image size, tiling, input type and thresholds travel "
        "inside the file, so `adps predict --model model.onnx` needs nothing else. "
        "The export is checked against the torch model before it is written.",
    )
    p.add_argument("--model", required=True, type=Path, help="checkpoint (model.pt)")
    p.add_argument(
        "--format",
        choices=("onnx", "torchscript", "openvino"),
        default="onnx",
        help="onnx (onnxruntime), torchscript, or openvino (model.xml + model.bin; "
        "needs pip install 'adps[openvino]')",
    )
    p.add_argument(
        "--input-dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="what the graph takes (default uint8, as images come from a camera)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output file (default: next to the checkpoint, model.onnx / model.ts)",
    )
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    p.add_argument(
        "--precision",
        choices=("f32", "bf16"),
        default="f32",
        help="openvino: the inference precision stored in the file (default f32, "
        "the torch model's maps; bf16 is faster on CPUs with native bf16 and moves the "
        "maps: docs/benchmarks/inference.md measures both)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adps.errors import AdpsError
    from adps.export import export_onnx, export_openvino, export_torchscript

    suffix = {"onnx": ".onnx", "torchscript": ".ts", "openvino": ".xml"}[args.format]
    out = args.out or args.model.with_suffix(suffix)
    if args.format == "onnx":
        path = export_onnx(args.model, out, input_dtype=args.input_dtype, opset=args.opset)
    elif args.format == "openvino":
        try:
            path = export_openvino(
                args.model, out, input_dtype=args.input_dtype, precision=args.precision
            )
        except ImportError as exc:
            raise AdpsError(
                f"--format openvino needs the openvino package ({exc}); install "
                "it with pip install 'adps[openvino]'"
            ) from exc
    else:
        path = export_torchscript(args.model, out, input_dtype=args.input_dtype)
    print(
        f"exported {args.format} ({args.input_dtype} input, dynamic batch, verified against "
        f"torch): {path}"
    )
    return 0
