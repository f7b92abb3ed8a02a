"""Evaluation: run a test split, compute every metric of the protocol, report speed and memory."""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adps.data.cache import load_tensor_stack
from adps.data.datasets import AnomalyDataset
from adps.engine.device import inference_batch_size, resolve_device
from adps.errors import AdpsError
from adps.fileio import atomic_write_text
from adps.metrics import compute_metrics, compute_metrics_original_resolution
from adps.models.adps import ADPS

METRIC_KEYS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap",
               "pixel_f1max", "aupro")


@dataclass
class EvalResult:
    metrics: dict[str, float | None]
    scores: np.ndarray  # (N,)
    labels: np.ndarray  # (N,)
    maps: torch.Tensor  # (N, H, W) float32 at the model's working size
    masks: torch.Tensor  # (N, H, W) uint8 at the working size
    has_mask: np.ndarray  # (N,) bool: pixel ground truth exists for this image
    paths: list[str]
    seconds: float  # model time only
    images_per_second: float
    peak_memory_mb: float
    memory_kind: str  # "cuda" (max allocated) or "cpu-rss" (process peak resident set)
    extra: dict = field(default_factory=dict)


@torch.no_grad()
def infer(model: ADPS, images: torch.Tensor, batch_size: int | None = None, progress: bool = False,
          amp: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Maps (N, H, W) and scores (N,) for a uint8 or [0, 1] float stack; returns model seconds.

    Batches go to the model's device one at a time; results stay there until the end, so the
    loop never waits on the host.
    """
    device = next(model.parameters()).device
    batch_size = inference_batch_size(device, batch_size)
    model.eval()
    maps, scores = [], []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in tqdm(range(0, len(images), batch_size), desc="infer", unit="batch",
                  disable=not progress):
        batch = images[i:i + batch_size].to(device, non_blocking=True)
        if batch.dtype == torch.uint8:
            batch = batch.float().div_(255.0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            amap, score = model(batch.contiguous(memory_format=torch.channels_last))
        maps.append(amap[:, 0].float())
        scores.append(score.float())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return torch.cat(maps).cpu(), torch.cat(scores).cpu(), seconds


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "cpu-rss"


def evaluate(model: ADPS, dataset: AnomalyDataset, device: str = "auto",
             batch_size: int | None = None,
             eval_resolution: str = "working", progress: bool = True,
             cache_dir: str | Path | None = None) -> EvalResult:
    """Every metric of ``metrics.md`` on one test split.

    ``eval_resolution="working"`` scores maps against masks at the model's size (nearest-resized
    GT, DRAEM/ADPS convention); ``"original"`` upsamples each map bilinearly to its image's
    original size (MVTec's official protocol).
    """
    if eval_resolution not in ("working", "original"):
        raise AdpsError(f"eval_resolution must be 'working' or 'original', not '{eval_resolution}'")
    size = model.config.image_size
    if dataset.size != (size, size):
        raise AdpsError(f"the test dataset must be resized to the model's {size} x {size} "
                        f"(got {dataset.size})")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    images, masks, labels = load_tensor_stack(dataset, cache_dir=cache_dir, progress=progress)
    maps, scores, seconds = infer(model, images, batch_size, progress)
    has_mask = np.array([r.has_mask for r in dataset.records])
    labels_np = labels.numpy()
    scores_np = scores.numpy()
    if eval_resolution == "working":
        metrics = compute_metrics(scores_np, labels_np, maps.numpy(), masks[:, 0].numpy(),
                                  mask_available=has_mask)
    else:
        originals = [dataset.original_mask(i).numpy() for i in range(len(dataset))]
        metrics = compute_metrics_original_resolution(
            scores_np, labels_np, [m.numpy() for m in maps], originals, mask_available=has_mask)
    peak, kind = _peak_memory(dev)
    return EvalResult(metrics, scores_np, labels_np, maps, masks[:, 0], has_mask,
                      [str(r.image) for r in dataset.records], seconds,
                      len(images) / seconds if seconds > 0 else 0.0, peak, kind)


def format_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown_row(name: str, metrics: dict[str, float | None]) -> str:
    return "| " + " | ".join([name] + [format_percent(metrics.get(k)) for k in METRIC_KEYS]) + " |"


def markdown_header(extra_columns: tuple[str, ...] = ()) -> str:
    columns = ["name", *METRIC_KEYS, *extra_columns]
    return "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)


def write_evaluation(result: EvalResult, out_dir: str | Path, name: str,
                     extra: dict | None = None) -> Path:
    """Writes ``metrics.json`` (fractions in [0, 1], plus speed) and ``metrics.md`` (one row)."""
    out = Path(out_dir)
    payload = {"name": name, "metrics": result.metrics, "num_images": int(len(result.scores)),
               "images_per_second": result.images_per_second,
               "peak_memory_mb": result.peak_memory_mb, "memory_kind": result.memory_kind,
               **(extra or {})}
    atomic_write_text(out / "metrics.json", json.dumps(payload, indent=2))
    atomic_write_text(out / "metrics.md", markdown_header() + "\n" + markdown_row(name, result.metrics) + "\n")
    return out / "metrics.json"
