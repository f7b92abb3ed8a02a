"""adps predict: score images, write maps, masks, overlays and a CSV of decisions."""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
from pathlib import Path

from adps.cli.options import add_backend_arguments, add_inference_arguments
from adps.data.datasets import DEFAULT_MAX_PIXELS

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


def collect_inputs(
    inputs: list[str],
    recursive: bool,
) -> tuple[list[tuple[Path, str]], list[tuple[str, str]], list[Path]]:
    """(file, output name) pairs, (input, reason) for inputs that match nothing, and the
    files of the folders that were skipped for their extension.

    Output names keep a file's path relative to the folder it was found in, so two folders'
    ``001.png`` do not overwrite each other.
    """
    from adps.data.datasets import list_files

    files: list[tuple[Path, str]] = []
    missing: list[tuple[str, str]] = []
    skipped: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found, others = list_files(path, recursive=recursive)
            skipped += others
            files += [(p, str(p.relative_to(path))) for p in found]
            if not found:
                missing.append(
                    (
                        item,
                        "folder holds no images"
                        + ("" if recursive else " (use --recursive for sub-folders)"),
                    )
                )
        elif path.is_file():
            files.append((path, path.name))
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=recursive))
            matches = [m for m in matches if m.is_file()]
            files += [(m, m.name) for m in matches]
            if not matches:
                missing.append((item, "no such file, folder or matching pattern"))
    names: dict[str, int] = {}
    unique = []
    for path, name in files:
        count = names.get(name, 0)
        names[name] = count + 1
        unique.append(
            (path, name if count == 0 else f"{Path(name).stem}_{count}{Path(name).suffix}")
        )
    return unique, missing, skipped


def skipped_summary(skipped: list[Path]) -> str:
    """One line that counts and names the files a folder held that are not images."""
    from adps.data.datasets import name_some

    kinds = ", ".join(sorted({p.suffix.lower() or "(no extension)" for p in skipped}))
    return (
        f"skipped {len(skipped)} file(s) without an image extension ({kinds}): "
        f"{name_some([str(p) for p in skipped])}"
    )


def _png(array, path: Path) -> None:
    from PIL import Image

    from adps.fileio import atomic_write

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def _write_outputs(pred, name: Path, args: argparse.Namespace) -> dict:
    """The CSV row of one prediction, after writing its mask and overlay PNGs."""
    import numpy as np

    from adps.data.datasets import read_image
    from adps.report.plots import overlay

    row = {"path": pred.path, **pred.summary()}
    if not args.no_images:
        mask_path = args.out / "masks" / name.with_suffix(".png")
        overlay_path = args.out / "overlays" / name.with_suffix(".png")
        _png((pred.mask * 255).astype(np.uint8), mask_path)
        _png(
            overlay(read_image(pred.path, max_pixels=None), pred.anomaly_map, pred.mask),
            overlay_path,
        )  # no limit: the file passed it on its way in
        row.update(mask=str(mask_path), overlay=str(overlay_path))
    return row


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

    from tqdm import tqdm

    from adps.engine.device import resolve_device
    from adps.engine.distributed import init_distributed, shutdown_distributed
    from adps.errors import AdpsError
    from adps.export import load_predictor as load
    from adps.fileio import atomic_write_text

    files, failures, skipped = collect_inputs(args.inputs, args.recursive)
    if not files:
        for item, reason in failures:
            print(f"skipped {item}: {reason}", file=sys.stderr)
        if skipped:
            print(skipped_summary(skipped), file=sys.stderr)
        raise AdpsError("no input images found")
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
                rows.extend(
                    _write_outputs(pred, Path(out_name[str(pred.path)]), args) for pred in batch
                )
                bar.update(len(batch) + len(failed))
        if ctx.enabled:
            order = {str(path): i for i, (path, _) in enumerate(files)}
            rows, shard_failures = _gather(ctx, rows, shard_failures, order)
        failures += shard_failures
    finally:
        shutdown_distributed(ctx)
    if not ctx.is_main:  # rank 0 writes the table and reports the failures once
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer,
        fieldnames=["path", "score", "decision", "defect_area"],
        extrasaction="ignore",
        lineterminator="\n",
    )
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.out / "predictions.csv", buffer.getvalue())
    atomic_write_text(
        args.out / "predictions.json",
        json.dumps(
            {
                "model": str(args.model),
                "runtime": predictor.runtime,
                "decision_rule": predictor.thresholds.rule(),
                "pixel_threshold": predictor.thresholds.pixel,
                "predictions": rows,
                "failures": [{"path": p, "reason": r} for p, r in failures],
            },
            indent=2,
        ),
    )
    n_bad = sum(r["decision"] == "anomalous" for r in rows)
    print(
        f"{len(rows)} images: {n_bad} anomalous, {len(rows) - n_bad} normal "
        f"(decision: {predictor.thresholds.rule()}); results in {args.out}; runtime: "
        f"{predictor.runtime}"
    )
    if skipped:
        print(skipped_summary(skipped), file=sys.stderr)
    for item, reason in failures:
        print(f"failed {item}: {reason}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} input(s) failed", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0
