"""Fitting the memory prior: the bank from the normal training images, then the statistics that
put its map on the PSM map's scale.

The statistics must come from normal images the bank does not hold, or the prior is near zero
on them and its spread is underestimated. With a held-out split (``--calibrate-holdout``) those
images are used; otherwise each training image is scored against the bank without its own
entries (leave-one-image-out), which is what a new normal image sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
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


@torch.no_grad()
def fit_prior(model: ADPS, images: torch.Tensor, holdout: torch.Tensor | None = None,
              batch_size: int | None = None, progress: bool = False, seed: int = 0) -> PriorFit:
    """Fills ``model.memory`` from ``images`` (N, 3, H, W) uint8 normal training images.

    The bank is the greedy coreset of their embedded teacher features, of at most
    ``config.memory_size`` rows. Then the PSM's and the prior's maps of normal images the bank
    does not hold (``holdout``, else the training images leave-one-image-out) give each map's
    mean and standard deviation over pixels, with which :meth:`MemoryPrior.fuse` mixes them.
    """
    start = time.perf_counter()
    memory = model.memory
    if memory is None:
        raise ValueError("the model has no memory prior (config.prior is 'none')")
    was_training = model.training
    model.eval()
    device = model.mean.device
    size = tuple(images.shape[-2:])

    embeddings, psm_maps = [], []
    for batch in _batches(images, device, batch_size, "memory", progress):
        psm_map, teacher = model.psm_map(batch)
        embeddings.append(embed(teacher))
        if holdout is None:
            psm_maps.append(psm_map)
    embedding = torch.cat(embeddings)
    n, c, h, w = embedding.shape
    features = embedding.permute(0, 2, 3, 1).reshape(-1, c)
    sources = torch.arange(n, device=device).repeat_interleave(h * w)
    chosen = greedy_coreset(features, min(model.config.memory_size, len(features)), seed)
    memory.set_bank(features[chosen])
    bank_sources = sources[chosen]

    if holdout is None:  # leave-one-image-out: no image matches its own features
        prior = torch.cat([
            nearest_distances(features[i:i + _QUERY_CHUNK], memory.bank, memory.neighbors,
                              query_groups=sources[i:i + _QUERY_CHUNK], bank_groups=bank_sources)
            for i in range(0, len(features), _QUERY_CHUNK)])
        prior = prior.mean(dim=1).view(n, 1, h, w)
        prior_maps = [torch.nn.functional.interpolate(prior, size=size, mode="bilinear",
                                                      align_corners=False)]
    else:
        prior_maps = []
        for batch in _batches(holdout, device, batch_size, "memory stats", progress):
            psm_map, teacher = model.psm_map(batch)
            psm_maps.append(psm_map)
            prior_maps.append(memory(teacher, size))
    psm_all, prior_all = torch.cat(psm_maps).double(), torch.cat(prior_maps).double()
    memory.stats = torch.stack([psm_all.mean(), psm_all.std().clamp_min(1e-12),
                                prior_all.mean(), prior_all.std().clamp_min(1e-12)]).float()
    model.train(was_training)
    return PriorFit(len(chosen), len(features), "leave-one-out" if holdout is None else "holdout",
                    time.perf_counter() - start)


__all__ = ["PriorFit", "fit_prior"]
