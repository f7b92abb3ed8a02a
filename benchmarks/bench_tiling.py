"""Tiled inference on large images: megapixels per second and peak memory, per tile batch.

Each row runs in a fresh process (so its peak memory is its own): it builds the predictor of a
tiled model (``--model`` a tiled checkpoint, or the pretrained Lite0 teacher with a random
student/PSM at ``--tile``/``-k``, whose timing does not depend on the weights), predicts one
random image of ``--megapixels`` (aspect 3:2, uint8) ``--repeats`` times after one warm-up, and
prints the median seconds, megapixels per second, tiles per second and the process's peak
resident memory (CPU) or peak allocated memory (CUDA), next to the image's own size in memory.

    .venv/bin/python benchmarks/bench_tiling.py --megapixels 20 --tile-batches 1 4 16
    .venv/bin/python benchmarks/bench_tiling.py --device cuda --tile-batches 16 64 256
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adps.config import ModelConfig
from adps.engine.checkpoint import Checkpoint
from adps.engine.device import resolve_device
from adps.engine.evaluate import _peak_memory
from adps.export import load_predictor
from adps.models.adps import ADPS


def child(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model_path = args.model
    if model_path is None:
        config = ModelConfig(
            image_size=args.tile,
            k=args.k,
            tiling=True,
            tile_overlap=args.overlap,
            psm_output_stride=2,
        )
        model_path = Path(tempfile.mkdtemp()) / "model.pt"
        Checkpoint.of(ADPS(config)).save(model_path)
    predictor = load_predictor(model_path, args.device, args.tile_batch, backend="torch")
    width = round(math.sqrt(args.megapixels * 1e6 * 1.5))
    height = round(width / 1.5)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    predictor(image)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        predictor(image)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tiling = predictor.tiling
    frame = tiling.frame(height, width)
    tiles = len(tiling.boxes(*frame))
    peak, kind = _peak_memory(device)
    return {
        "tile_batch": args.tile_batch,
        "height": height,
        "width": width,
        "tiles": tiles,
        "tile": list(tiling.tile),
        "overlap": tiling.overlap,
        "scale": tiling.scale,
        "seconds": seconds,
        "megapixels_per_s": height * width / 1e6 / seconds,
        "tiles_per_s": tiles / seconds,
        "peak_mib": peak,
        "memory_kind": kind,
        "image_mib": image.nbytes / 2**20,
        "repeats": args.repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="a tiled checkpoint (default: a random one)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("-k", type=int, default=8)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--megapixels", type=float, default=20.0)
    p.add_argument("--tile-batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    p.add_argument("--tile-batch", type=int, help=argparse.SUPPRESS)  # the child's row
    args = p.parse_args()
    if args.tile_batch is not None:
        print(json.dumps(child(args)))
        return
    rows = []
    print("| tile batch | image | tiles | s/image | MP/s | tiles/s | peak MiB | image MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in args.tile_batches:
        command = [
            sys.executable,
            __file__,
            "--tile-batch",
            str(batch),
            "--tile",
            str(args.tile),
            "-k",
            str(args.k),
            "--overlap",
            str(args.overlap),
            "--megapixels",
            str(args.megapixels),
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
        ]
        if args.model is not None:
            command += ["--model", str(args.model)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"| {batch} | {row['height']} x {row['width']} | {row['tiles']} | "
            f"{row['seconds']:.2f} | {row['megapixels_per_s']:.2f} | {row['tiles_per_s']:.1f} "
            f"| {row['peak_mib']:.0f} ({row['memory_kind']}) | {row['image_mib']:.0f} |",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
