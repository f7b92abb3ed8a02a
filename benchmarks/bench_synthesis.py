"""Throughput of DRAEM-style anomaly synthesis (adps.data.synthesis), in images per second.

Measures ``AnomalySynthesizer.__call__`` on random 256x256 batches of 32 with the default config
(half the batch altered), on CPU (torch's default thread count) and on CUDA when available. Textures
come from the shared DTD folder when it exists, else from the batch itself. Each device gets warm-up
calls first; CUDA timings are bracketed by ``torch.cuda.synchronize()`` so queued kernels count.
On CUDA one extra call runs under ``torch.cuda.set_sync_debug_mode("error")`` to confirm that a call
needs no host synchronisation (so it does not stall a launch-bound training loop and can be captured
in a CUDA graph).

Run: ``PYTHONPATH=src python benchmarks/bench_synthesis.py [--iters N]``. Target on a GPU: >= 10,000
img/s; the CPU number is informational.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from adps.data.synthesis import AnomalySynthesizer, TextureBank

DTD_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "dtd" / "images"
SIZE, BATCH = 256, 32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(device: torch.device, iters: int, warmup: int) -> float:
    """Images per second of the synthesizer on ``device`` (mean over ``iters`` batches)."""
    textures = TextureBank.from_folder(DTD_IMAGES, SIZE, device) if DTD_IMAGES.is_dir() else None
    synth = AnomalySynthesizer(textures)
    generator = torch.Generator(device).manual_seed(0)
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=generator, device=device)
    for _ in range(warmup):
        synth(images, generator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        synth(images, generator)
    _sync(device)
    seconds = time.perf_counter() - start
    source = f"DTD ({len(textures)} textures)" if textures is not None else "the batch itself"
    threads = f"{torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    rate = iters * BATCH / seconds
    print(
        f"{device.type:4s} [{name}]: {rate:10.1f} img/s  "
        f"({iters} batches of {BATCH}x3x{SIZE}x{SIZE} after {warmup} warm-up, "
        f"{seconds / iters * 1000:.1f} ms/batch, textures from {source})"
    )
    return rate


def check_sync_free(device: torch.device) -> str:
    """One warmed-up CUDA call with synchronising CUDA calls turned into errors.

    Returns a one-line verdict.
    """
    textures = TextureBank.from_folder(DTD_IMAGES, SIZE, device) if DTD_IMAGES.is_dir() else None
    synth = AnomalySynthesizer(textures)
    generator = torch.Generator(device).manual_seed(0)
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=generator, device=device)
    synth(images, generator)  # warm-up: moves the bank and caches constants on the device
    torch.cuda.synchronize(device)
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        synth(images, generator)
    except RuntimeError as err:
        return f"NOT sync-free ({str(err).splitlines()[0]})"
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return "sync-free (no host synchronisation under torch.cuda.set_sync_debug_mode('error'))"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--iters", type=int, default=20, help="timed batches per device (CUDA: 10x)"
    )
    args = parser.parse_args()
    bench(torch.device("cpu"), args.iters, warmup=3)
    if torch.cuda.is_available():
        rate = bench(torch.device("cuda"), args.iters * 10, warmup=20)
        print(f"cuda target >= 10,000 img/s: {'met' if rate >= 10_000 else 'NOT met'}")
        print(f"cuda call: {check_sync_free(torch.device('cuda'))}")
    else:
        print("cuda: not available, skipped")


if __name__ == "__main__":
    main()
