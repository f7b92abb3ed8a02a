"""Evaluation: run a test split, compute every metric of the protocol, report speed and memory.

Formatting the result (metrics.json, markdown rows, the HTML report) is :mod:`adps.report`'s job;
this module only computes.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adps.data.cache import load_tensor_stack
from adps.data.datasets import AnomalyDataset
from adps.engine.device import inference_batch_size, resolve_device
from adps.engine.inference import TorchForward, infer
from adps.engine.tiling import tiled
from adps.errors import AdpsError
from adps.metrics import compute_metrics, compute_metrics_original_resolution
from adps.models.adps import ADPS


@dataclass
class EvalResult:
    metrics: dict[str, float | None]
    scores: np.ndarray  # (N,)
    labels: np.ndarray  # (N,)
    images: torch.Tensor  # (N, 3, H, W) uint8 at the model's working size (for reports)
    maps: torch.Tensor  # (N, H, W) float32 at the model's working size
    masks: torch.Tensor  # (N, H, W) uint8 at the working size
    has_mask: np.ndarray  # (N,) bool: pixel ground truth exists for this image
    paths: list[str]
    seconds: float  # model time only
    images_per_second: float
    peak_memory_mb: float
    memory_kind: str  # "cuda" (max allocated) or "cpu-rss" (process peak resident set)
    extra: dict = field(default_factory=dict)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "cpu-rss"


def evaluate(
    model: ADPS,
    dataset: AnomalyDataset,
    device: str = "auto",
    batch_size: int | None = None,
    eval_resolution: str = "working",
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> EvalResult:
    """Every metric of ``metrics.md`` on one test split.

    ``eval_resolution="working"`` scores maps against masks at the model's size (nearest-resized
    GT, DRAEM/ADPS convention); ``"original"`` upsamples each map bilinearly to its image's
    original size (MVTec's official protocol). A tiled model's working size is its frame (the
    split's size scaled by ``tile_scale``, see :func:`adps.engine.tiling.open_split`), and its
    maps are blended from tiles there.
    """
    if eval_resolution not in ("working", "original"):
        raise AdpsError(f"eval_resolution must be 'working' or 'original', not '{eval_resolution}'")
    size = model.config.size
    if dataset.size is None or (not model.config.tiling and dataset.size != size):
        raise AdpsError(
            f"the test dataset must be resized to the model's {size[0]} x {size[1]} "
            f"(got {dataset.size}); open it with adps.engine.tiling.open_split"
        )
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    images, masks, labels = load_tensor_stack(dataset, cache_dir=cache_dir, progress=progress)
    forward = tiled(TorchForward(model, dev), model.config, inference_batch_size(dev, batch_size))
    maps, scores, seconds = infer(
        forward, images, dev, 1 if model.config.tiling else batch_size, progress
    )
    has_mask = np.array([r.has_mask for r in dataset.records])
    labels_np = labels.numpy()
    scores_np = scores.numpy()
    if eval_resolution == "working":
        metrics = compute_metrics(
            labels_np, scores_np, masks[:, 0].numpy(), maps.numpy(), mask_available=has_mask
        )
    else:
        originals = [dataset.original_mask(i).numpy() for i in range(len(dataset))]
        metrics = compute_metrics_original_resolution(
            labels_np, scores_np, originals, [m.numpy() for m in maps], mask_available=has_mask
        )
    peak, kind = _peak_memory(dev)
    return EvalResult(
        metrics,
        scores_np,
        labels_np,
        images,
        maps,
        masks[:, 0],
        has_mask,
        [str(r.image) for r in dataset.records],
        seconds,
        len(images) / seconds if seconds > 0 else 0.0,
        peak,
        kind,
    )
