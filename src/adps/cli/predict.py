"""adps predict: score images, write maps, masks, overlays and a CSV of decisions."""

from __future__ import annotations

import argparse
from pathlib import Path

from adps.cli.options import add_backend_arguments, add_inference_arguments
from adps.data.decode import DEFAULT_MAX_PIXELS
from adps.data.inputs import collect_inputs, skipped_summary

__all__ = ["add_parser", "collect_inputs", "run", "skipped_summary"]

EXIT_SOME_FAILED = 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict anomaly maps and decisions for images",
        description="Run a model (checkpoint .pt, ONNX .onnx, OpenVINO .xml or TorchScript "
        ".ts) on files, folders or glob patterns. Writes into --out: overlays/ (heatmap over the "
        "image), masks/ (binary mask PNG at the original resolution), "
        "predictions.csv (path, score, decision, defect area in pixels) and "
        "predictions.json. Unreadable inputs are reported and skipped; the exit "
        f"code is {EXIT_SOME_FAILED} when any input failed. Under torchrun "
        "(torchrun --nproc-per-node N adps predict ..., also across nodes) each "
        "process scores a disjoint share of the inputs and rank 0 writes one "
        "merged CSV/JSON in input order. Files in a folder without an image "
        "extension (.png, .jpg, .jpeg, .bmp, .tif, .tiff; GIF and WebP are not "
        "taken) are skipped, and the summary says how many and which.",
    )
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    add_inference_arguments(p, "model.pt, model.onnx, model.xml or model.ts")
    add_backend_arguments(p)
    p.add_argument("--out", type=Path, default=Path("predictions"), help="output folder")
    p.add_argument("--recursive", "-r", action="store_true", help="search folders recursively")
    p.add_argument("--no-images", action="store_true", help="write only the CSV/JSON")
    p.add_argument(
        "--max-pixels",
        type=_pixels,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="refuse images larger than this many pixels, read from the file's "
        f"header before decoding (default {DEFAULT_MAX_PIXELS:,}, "
        f"{3 * DEFAULT_MAX_PIXELS / 1e9:g} GB as RGB: any real frame, line-scan "
        "included, fits; 0 or none = no limit). Tiled models score large "
        "images tile by tile, but the whole image is held in memory",
    )
    r = p.add_argument_group(
        "engine",
        "--engine ray scores the inputs as a stream on Ray Data (pip install 'adps[ray]'): "
        "parallel decode tasks feed a pool of actors that each hold the model and write the "
        "masks and overlays as they go; the driver writes the same predictions.csv/json in "
        "input order. Memory is bounded by the batches in flight, not by the number of inputs",
    )
    r.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (or the torchrun ranks); ray: a Ray actor pool (default local)",
    )
    r.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="Ray cluster to run on: auto = the one started on this machine with 'ray start', "
        "or ray://HOST:10001 (default: start a local Ray instance for this run). On a "
        "cluster, --out and the inputs must be on storage every node sees at the same path",
    )
    r.add_argument(
        "--actors",
        type=int,
        metavar="N",
        help="predictors running at once (default: the cluster's CPUs / --cpus-per-actor)",
    )
    r.add_argument(
        "--cpus-per-actor",
        type=float,
        metavar="N",
        help="CPUs each actor reserves, and its torch/OpenMP threads (default 1)",
    )
    r.add_argument(
        "--gpus-per-actor",
        type=float,
        metavar="N",
        help="GPUs each actor reserves, a fraction shares one (default 0; with --device cuda)",
    )
    p.set_defaults(func=run)


def _pixels(text: str) -> int | None:
    """--max-pixels: a count such as 40000000 or 4e7; 0 or none for no limit."""
    if text.strip().lower() in ("0", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(
            f"--max-pixels takes a pixel count (e.g. 4e7), 0 or none, got {text!r}"
        )
    return int(value)


def _gather(
    ctx, rows: list[dict], failures: list, order: dict[str, int]
) -> tuple[list[dict], list]:
    """Every rank's rows and failures on every rank, rows back in input order."""
    import torch.distributed as dist

    shards: list = [None] * ctx.world_size
    dist.all_gather_object(shards, (rows, failures))
    rows = sorted(
        (r for shard_rows, _ in shards for r in shard_rows), key=lambda r: order[r["path"]]
    )
    return rows, [f for _, shard_failures in shards for f in shard_failures]


def run(args: argparse.Namespace) -> int:
    import sys

    from adps.errors import AdpsError

    _check_engine_flags(args)
    files, failures, skipped = collect_inputs(args.inputs, args.recursive)
    if not files:
        for item, reason in failures:
            print(f"skipped {item}: {reason}", file=sys.stderr)
        if skipped:
            print(skipped_summary(skipped), file=sys.stderr)
        raise AdpsError("no input images found")
    result: tuple | None
    if args.engine == "ray":
        result = _run_ray(args, files, failures)
    else:
        result = _run_local(args, files, failures)
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    images, anomalous, failures, rule, runtime = result
    print(
        f"{images} images: {anomalous} anomalous, {images - anomalous} normal "
        f"(decision: {rule}); results in {args.out}; runtime: {runtime}"
    )
    if skipped:
        print(skipped_summary(skipped), file=sys.stderr)
    for item, reason in failures:
        print(f"failed {item}: {reason}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} input(s) failed", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


_RAY_FLAGS = ("ray_address", "actors", "cpus_per_actor", "gpus_per_actor")


def _check_engine_flags(args: argparse.Namespace) -> None:
    import os

    from adps.errors import AdpsError

    if args.engine == "local":
        given = [f"--{n.replace('_', '-')}" for n in _RAY_FLAGS if getattr(args, n) is not None]
        if given:
            raise AdpsError(f"{', '.join(given)} only apply with --engine ray")
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise AdpsError("--engine ray runs its own workers: start it once, not under torchrun")


def _run_ray(args: argparse.Namespace, files: list, failures: list) -> tuple:
    from adps.ray.scoring import PredictOptions, RayOptions, score_files

    ray_options = RayOptions(
        address=args.ray_address,
        actors=args.actors,
        cpus_per_actor=1.0 if args.cpus_per_actor is None else args.cpus_per_actor,
        gpus_per_actor=0.0 if args.gpus_per_actor is None else args.gpus_per_actor,
    )
    options = PredictOptions(
        args.device,
        args.batch_size,
        args.backend,
        args.precision,
        args.max_pixels,
        not args.no_images,
    )
    result = score_files(
        args.model, files, args.out, options, ray_options, failures, not args.no_progress
    )
    return result.images, result.anomalous, result.failures, result.decision_rule, result.runtime


def _run_local(args: argparse.Namespace, files: list, failures: list) -> tuple | None:
    """One process, or one torchrun rank of several: each scores its share of the inputs and
    rank 0 writes the merged table."""
    from tqdm import tqdm

    from adps.engine.device import resolve_device
    from adps.engine.distributed import init_distributed, shutdown_distributed
    from adps.export import load_predictor as load
    from adps.report.predictions import ImageOutputs, PredictionTables, RunInfo

    outputs = ImageOutputs(args.out, not args.no_images)
    ctx = init_distributed("cpu")  # gloo carries the rows between ranks, whatever the device
    try:
        device = args.device
        if ctx.enabled and resolve_device(device).type == "cuda":
            device = f"cuda:{ctx.local_rank}"
        predictor = load(args.model, device, args.batch_size, args.backend, args.precision)
        out_name = {str(path): name for path, name in files}
        shard = [p for p, _ in files][ctx.rank :: ctx.world_size]
        rows: list[dict] = []
        shard_failures = []
        with tqdm(
            total=len(shard),
            unit="img",
            desc="predict",
            disable=args.no_progress or not ctx.is_main,
        ) as bar:
            for batch, failed in predictor.iter_files(shard, max_pixels=args.max_pixels):
                shard_failures += failed
                # written as they come: memory stays at one batch
                rows.extend(outputs.write(pred, out_name[str(pred.path)]) for pred in batch)
                bar.update(len(batch) + len(failed))
        if ctx.enabled:
            order = {str(path): i for i, (path, _) in enumerate(files)}
            rows, shard_failures = _gather(ctx, rows, shard_failures, order)
        failures += shard_failures
    finally:
        shutdown_distributed(ctx)
    if not ctx.is_main:  # rank 0 writes the table and reports the failures once
        return None
    thresholds = predictor.thresholds
    with PredictionTables(args.out) as tables:
        for row in rows:
            tables.add(row)
        tables.finish(
            RunInfo(str(args.model), predictor.runtime, thresholds.rule(), thresholds.pixel),
            failures,
        )
    anomalous = sum(r["decision"] == "anomalous" for r in rows)
    return len(rows), anomalous, failures, thresholds.rule(), predictor.runtime
