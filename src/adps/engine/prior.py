"""Fitting the memory prior: the bank from the normal training images, then the statistics that
put its map on a known scale.

The statistics must come from normal images the bank does not hold, or the prior is near zero
on them and its spread is underestimated. With a held-out split (``--calibrate-holdout``) those
images are used; otherwise each training image is scored against the bank without its own
entries (leave-one-image-out), which is what a new normal image sees.

Late fusion fits after training (it also needs the trained PSM's statistics); early fusion
fits before, since the PSM trains on the prior.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from adps.engine.device import inference_batch_size
from adps.models.adps import ADPS
from adps.models.memory import embed, greedy_coreset, nearest_distances

_QUERY_CHUNK = 8192  # query rows per distance block when scoring the training set


@dataclass
class PriorFit:
    bank_size: int  # features kept after the coreset
    features: int  # features of the training images before the coreset
    statistics: str  # "holdout" or "leave-one-out"
    seconds: float


def _batches(images: torch.Tensor, device: torch.device, batch_size: int | None, desc: str,
             progress: bool):
    batch_size = inference_batch_size(device, batch_size) if device.type == "cuda" else (
        batch_size or 8)
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch",
                  disable=not progress):
        yield images[i:i + batch_size].to(device).float().div_(255.0).contiguous(
            memory_format=torch.channels_last)


def _mean_std(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    values = torch.cat(maps).double()
    return [values.mean(), values.std().clamp_min(1e-12)]


@torch.no_grad()
def fit_prior(model: ADPS, images: torch.Tensor, holdout: torch.Tensor | None = None,
              batch_size: int | None = None, progress: bool = False, seed: int = 0) -> PriorFit:
    """Fills ``model.memory`` from ``images`` (N, 3, H, W) uint8 normal training images.

    The bank is the greedy coreset of their embedded teacher features, of at most
    ``config.memory_size`` rows, each tagged with its image. Then prior maps of normal images the
    bank does not hold (``holdout``, else the training images leave-one-image-out) give the
    prior's mean and standard deviation over pixels; for late fusion the PSM's maps of the same
    images give the PSM's, with which :meth:`MemoryPrior.fuse` mixes the two.
    """
    start = time.perf_counter()
    memory = model.memory
    if memory is None:
        raise ValueError("the model has no memory prior (config.prior is 'none')")
    was_training = model.training
    model.eval()
    device = model.mean.device
    size = tuple(images.shape[-2:])

    embedding = torch.cat([embed(model.teacher(model.normalize(batch)))
                           for batch in _batches(images, device, batch_size, "memory", progress)])
    n, c, h, w = embedding.shape
    features = embedding.permute(0, 2, 3, 1).reshape(-1, c)
    sources = torch.arange(n, device=device).repeat_interleave(h * w)
    chosen = greedy_coreset(features, min(model.config.memory_size, len(features)), seed)
    memory.set_bank(features[chosen], sources[chosen])

    normal = images if holdout is None else holdout
    if holdout is None:  # leave-one-image-out: no image matches its own features
        prior = torch.cat([nearest_distances(features[i:i + _QUERY_CHUNK], memory.bank,
                                             memory.neighbors,
                                             query_groups=sources[i:i + _QUERY_CHUNK],
                                             bank_groups=memory.sources)
                           for i in range(0, len(features), _QUERY_CHUNK)])
        prior_maps = [F.interpolate(prior.mean(dim=1).view(n, 1, h, w), size=size,
                                    mode="bilinear", align_corners=False)]
    else:
        prior_maps = [memory(model.teacher(model.normalize(batch)), size)
                      for batch in _batches(holdout, device, batch_size, "memory stats", progress)]
    psm_stats = [torch.tensor(0.0), torch.tensor(1.0)]
    if not model.early_prior:
        psm_stats = _mean_std([model.psm_map(batch)[0] for batch in
                               _batches(normal, device, batch_size, "PSM stats", progress)])
    memory.stats = torch.stack(psm_stats + _mean_std(prior_maps)).float().to(device)
    model.train(was_training)
    return PriorFit(len(chosen), len(features), "leave-one-out" if holdout is None else "holdout",
                    time.perf_counter() - start)


__all__ = ["PriorFit", "fit_prior"]
