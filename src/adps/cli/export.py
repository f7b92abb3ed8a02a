"""adps export: one deployable graph (ONNX, TorchScript or OpenVINO) from images to map and
score, or a Triton Inference Server model repository around the ONNX graph."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX, TorchScript, OpenVINO or a Triton model repository",
        description="Export a checkpoint as one graph: (B, 3, H, W) RGB images (uint8 0..255 "
        "or float32 0..1) at the model's size H x W (one tile of a tiled model) -> "
        "anomaly map (B, 1, H, W) and score (B,), normalisation included, dynamic "
        "batch size. The image size, tiling, input type and thresholds travel "
        "inside the file, so `adps predict --model model.onnx` needs nothing else. "
        "The export is checked against the torch model before it is written. "
        "--format triton writes a Triton Inference Server model repository "
        "(OUT/NAME/config.pbtxt, OUT/NAME/VERSION/model.onnx; docs/guide/deploying.md).",
    )
    p.add_argument("--model", required=True, type=Path, help="checkpoint (model.pt)")
    p.add_argument(
        "--format",
        choices=("onnx", "torchscript", "openvino", "triton"),
        default="onnx",
        help="onnx (onnxruntime), torchscript, openvino (model.xml + model.bin; "
        "needs pip install 'adps[openvino]'), or triton (a Triton Inference Server model "
        "repository around the ONNX graph, for its onnxruntime backend)",
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
        help="output file (default: next to the checkpoint, model.onnx / model.ts); for "
        "triton the repository folder (default: triton/ next to the checkpoint)",
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
    triton = p.add_argument_group(
        "triton", "with --format triton only (Triton's model configuration, config.pbtxt)"
    )
    triton.add_argument(
        "--name", help="the model's name in the repository (default: the checkpoint's stem)"
    )
    triton.add_argument(
        "--model-version",
        type=int,
        metavar="N",
        help="the version folder to write (default 1)",
    )
    triton.add_argument(
        "--max-batch-size", type=int, metavar="N", help="images per batch at most (default 8)"
    )
    triton.add_argument(
        "--preferred-batch-sizes",
        type=int,
        nargs="+",
        metavar="N",
        help="batch sizes the dynamic batcher aims for (default: none, batches up to "
        "--max-batch-size, as Triton recommends)",
    )
    triton.add_argument(
        "--max-queue-delay-us",
        type=int,
        metavar="US",
        help="how long a request may wait for others to batch with, in microseconds (default 5000)",
    )
    triton.add_argument(
        "--instance-kind",
        # adps.export_triton.INSTANCE_KINDS, not imported here so that --help stays light
        choices=("auto", "cpu", "gpu"),
        help="where the model runs: auto (GPU when the server has one, the default), cpu, gpu",
    )
    triton.add_argument(
        "--instance-count", type=int, metavar="N", help="model instances (default 1)"
    )
    triton.add_argument("--force", action="store_true", help="replace an existing version folder")
    p.set_defaults(func=run)


_TRITON_FLAGS = {
    "name": "--name",
    "model_version": "--model-version",
    "max_batch_size": "--max-batch-size",
    "preferred_batch_sizes": "--preferred-batch-sizes",
    "max_queue_delay_us": "--max-queue-delay-us",
    "instance_kind": "--instance-kind",
    "instance_count": "--instance-count",
    "force": "--force",
}


def run_triton(args: argparse.Namespace) -> int:
    from adps.export_triton import TritonSettings, export_triton

    given = {
        key: getattr(args, key)
        for key in ("max_batch_size", "max_queue_delay_us", "instance_kind", "instance_count")
        if getattr(args, key) is not None
    }
    if args.preferred_batch_sizes is not None:
        given["preferred_batch_sizes"] = tuple(args.preferred_batch_sizes)
    result = export_triton(
        args.model,
        args.out or args.model.parent / "triton",
        name=args.name,
        version=1 if args.model_version is None else args.model_version,
        settings=TritonSettings(**given),
        input_dtype=args.input_dtype,
        opset=args.opset,
        force=args.force,
    )
    check = (
        "validated with Triton's model-config schema"
        if result.validated
        else "not validated: install tritonclient to check it against Triton's schema"
    )
    print(
        f"exported a Triton model repository ({args.input_dtype} input, dynamic batching, "
        f"ONNX verified against torch): {result.config_path} ({check}), {result.model_path}"
    )
    print(
        f"model '{result.model_dir.name}': {result.parameters['adps_model_id']}, image "
        f"threshold {result.parameters['adps_image_threshold']}; serve it with "
        f"tritonserver --model-repository={result.model_dir.parent.resolve()}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from adps.errors import AdpsError
    from adps.export import export_onnx, export_openvino, export_torchscript

    if args.format == "triton":
        return run_triton(args)
    stray = [flag for key, flag in _TRITON_FLAGS.items() if getattr(args, key) not in (None, False)]
    if stray:
        raise AdpsError(f"{', '.join(stray)}: only with --format triton")
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
