"""Fitting the memory prior: the bank from the normal training images, then the prior's
statistics on normal images (its scale for late fusion, its standardisation for early fusion).

The statistics must come from normal images the bank does not hold, or the prior is near zero
on them and its spread is underestimated. With a held-out split (``--calibrate-holdout``) those
images are used; otherwise each training image is scored against the bank without its own
entries (leave-one-image-out), which is what a new normal image sees. Nothing here depends on
the PSM, so the trainer fits the prior before training, for either fusion.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from adps.engine.device import inference_batch_size
from adps.models.adps import ADPS
from adps.models.memory import embed, greedy_coreset, leave_one_out_distances

_SCALE_QUANTILE = 0.999  # late fusion: 0.5 is "farther from normal than this share of normal"


@dataclass
class PriorFit:
    bank_size: int  # features kept after the coreset
    features: int  # features of the training images before the coreset
    statistics: str  # "holdout" or "leave-one-out"
    seconds: float


def image_batches(
    images: torch.Tensor, device: torch.device, batch_size: int | None, desc: str, progress: bool
):
    """(B, 3, H, W) float batches in [0, 1], channels-last on ``device``, of a uint8 stack, with
    a progress bar: how the memory's fit and the fusion's fit read their images."""
    batch_size = (
        inference_batch_size(device, batch_size) if device.type == "cuda" else (batch_size or 8)
    )
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress):
        yield (
            images[i : i + batch_size]
            .to(device)
            .float()
            .div_(255.0)
            .contiguous(memory_format=torch.channels_last)
        )


def _statistics(prior: torch.Tensor) -> torch.Tensor:
    """Mean, standard deviation and 99.9th percentile of normal prior values."""
    values = prior.flatten().double()
    top = values.kthvalue(max(1, math.ceil(_SCALE_QUANTILE * len(values)))).values
    return torch.stack([values.mean(), values.std(), top]).clamp_min(1e-12).float()


@torch.no_grad()
def image_features(
    model: ADPS,
    images: torch.Tensor,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str = "memory",
) -> torch.Tensor:
    """(N x h x w, C) embedded teacher features of ``images`` (N, 3, H, W) uint8, image by
    image, each image's positions row-major: what the memory chooses its rows from."""
    device = model.mean.device
    # one (positions, channels) table filled batch by batch: the features are held once
    features = torch.empty(0, device=device)
    n, row = len(images), 0
    for batch in image_batches(images, device, batch_size, desc, progress):
        embedding = embed(model.teacher(model.normalize(batch)))
        b, c, h, w = embedding.shape
        if not len(features):
            features = torch.empty(n * h * w, c, device=device)
        features[row : row + b * h * w] = embedding.permute(0, 2, 3, 1).reshape(-1, c)
        row += b * h * w
    return features


@torch.no_grad()
def holdout_statistics(
    model: ADPS, holdout: torch.Tensor, batch_size: int | None = None, progress: bool = False
) -> torch.Tensor:
    """The prior's statistics (mean, standard deviation, 99.9th percentile) on ``holdout``
    (N, 3, H, W) uint8, normal images the bank does not hold, at the embedding's stride."""
    memory = model.memory
    assert memory is not None  # callers check
    prior = torch.cat(
        [
            memory.distances(
                embed(model.teacher(model.normalize(batch))), model.config.memory_neighbors
            )
            for batch in image_batches(
                holdout, model.mean.device, batch_size, "memory stats", progress
            )
        ]
    )
    return _statistics(prior)


def _coreset(features: torch.Tensor, size: int, seed: int, progress: bool) -> torch.Tensor:
    with tqdm(total=size, desc="memory coreset", unit="row", disable=not progress) as bar:
        return greedy_coreset(features, size, seed, progress=lambda k: bar.update(k - bar.n))


@torch.no_grad()
def fit_prior(
    model: ADPS,
    images: torch.Tensor,
    holdout: torch.Tensor | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    seed: int = 0,
) -> PriorFit:
    """Fills ``model.memory`` from ``images`` (N, 3, H, W) uint8 normal training images.

    The bank is the greedy coreset of their embedded teacher features, of at most
    ``config.memory_size`` rows, each tagged with its image. The prior's values on normal images
    the bank does not hold (``holdout``, else the training images leave-one-image-out), at the
    embedding's stride, give its statistics.
    """
    start = time.perf_counter()
    memory = model.memory
    if memory is None:
        raise ValueError("the model has no memory prior (config.prior is 'none')")
    device = model.mean.device
    neighbors = model.config.memory_neighbors

    features = image_features(model, images, batch_size, progress)
    sources = torch.arange(len(images), device=device).repeat_interleave(
        len(features) // len(images)
    )
    size = min(model.config.memory_size, len(features))
    chosen = _coreset(features, size, seed, progress)
    memory.set_bank(features[chosen], sources[chosen])

    if holdout is None:  # leave-one-image-out: no image matches its own features
        with tqdm(
            total=len(features), desc="memory stats", unit="row", disable=not progress
        ) as bar:
            prior = leave_one_out_distances(
                features,
                sources,
                memory.bank,
                memory.sources,
                neighbors,
                progress=lambda k: bar.update(k - bar.n),
            )
        memory.stats = _statistics(prior).to(device)
    else:
        memory.stats = holdout_statistics(model, holdout, batch_size, progress).to(device)
    return PriorFit(
        len(chosen),
        len(features),
        "leave-one-out" if holdout is None else "holdout",
        time.perf_counter() - start,
    )


@torch.no_grad()
def extend_prior(
    model: ADPS,
    images: torch.Tensor,
    holdout: torch.Tensor,
    batch_size: int | None = None,
    progress: bool = False,
    seed: int = 0,
) -> PriorFit:
    """Adds ``images`` (N, 3, H, W) uint8, new normal images, to ``model``'s fitted memory.

    The new bank is the greedy coreset of the old bank's rows and the new images' features
    together, of at most ``config.memory_size`` rows: the old bank stands for the images it was
    chosen from (each of their features lies within the old coverage radius of one of its
    rows), so the coreset covers old and new normal alike without the old images (the update's
    tests bound its coverage radius against a coreset fitted on every feature). The old rows
    keep their image numbers; the new images are numbered after them, in order
    (``max(sources) + 1`` on). The prior's statistics are re-estimated on ``holdout``, normal
    images the bank does not hold, as :func:`fit_prior` does with a hold-out.
    """
    start = time.perf_counter()
    memory = model.memory
    if memory is None or not memory.fitted:
        raise ValueError("the model has no fitted memory prior to extend")
    device = model.mean.device
    new = image_features(model, images, batch_size, progress)
    first = int(memory.sources.max()) + 1 if len(memory.sources) else 0
    new_sources = torch.arange(first, first + len(images), device=device).repeat_interleave(
        len(new) // len(images)
    )
    features = torch.cat([memory.bank.to(device), new])
    sources = torch.cat([memory.sources.to(device), new_sources])
    size = min(model.config.memory_size, len(features))
    chosen = _coreset(features, size, seed, progress)
    memory.set_bank(features[chosen], sources[chosen])
    memory.stats = holdout_statistics(model, holdout, batch_size, progress).to(device)
    return PriorFit(len(chosen), len(features), "holdout", time.perf_counter() - start)


@torch.no_grad()
def decision_scores(
    model: ADPS,
    images: torch.Tensor,
    leave_own_out: bool,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(memory scores (N,), PSM scores (N,)): the two image scores that the standardized
    decision combines, of ``images`` (N, 3, H, W) uint8. With ``leave_own_out`` the images are
    the memory's source images, in its order, and each is scored without its own bank rows."""
    memory = model.memory
    assert memory is not None  # the standardized decision needs the memory prior
    was_training, device = model.training, model.mean.device
    model.eval()
    neighbors, memory_scores, psm_scores, start = model.config.memory_neighbors, [], [], 0
    for batch in image_batches(images, device, batch_size, "decision stats", progress):
        psm_map, teacher = model.psm_map(batch)
        assert teacher is not None  # the memory prior needs the teacher
        groups = torch.arange(start, start + len(batch), device=device) if leave_own_out else None
        prior = F.interpolate(
            memory.distances(embed(teacher), neighbors, groups),
            size=batch.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        memory_scores.append(model.score(prior))
        psm_scores.append(model.score(psm_map))
        start += len(batch)
    model.train(was_training)
    return torch.cat(memory_scores), torch.cat(psm_scores)


def fit_decision(
    model: ADPS,
    images: torch.Tensor,
    holdout: torch.Tensor | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Fits the standardized decision's statistics (``MemoryPrior.score_stats``) after training
    and returns them: the memory's and the PSM's image scores on normal images the model did
    not learn from, the ``holdout`` where there is one; else the training ``images`` (N, 3, H, W)
    uint8, the memory's sources in its order, each scored leave-one-image-out by the memory.

    The PSM has learned from its training images, so there its scores are lower and tighter
    than on new normal images: its standardised score runs high on new parts, which weights
    it up a little; a hold-out (``TrainConfig.calibration_holdout``) or ``adps calibrate`` on
    a folder of normal images avoids that.
    """
    if model.memory is None:
        raise ValueError("the model has no memory prior (config.prior is 'none')")
    source = images if holdout is None else holdout
    if len(source) < 2:
        raise ValueError(
            f"the decision's statistics need 2 normal images or more, got {len(source)}"
        )
    memory_scores, psm_scores = decision_scores(
        model, source, holdout is None, batch_size, progress
    )
    stats = decision_statistics(memory_scores, psm_scores)
    model.memory.set_score_stats(stats)
    return stats


def decision_statistics(memory_scores: torch.Tensor, psm_scores: torch.Tensor) -> torch.Tensor:
    """(memory mean, memory std, PSM mean, PSM std) of (N,) image scores of normal images
    (:func:`decision_scores`): ``MemoryPrior.score_stats``."""
    stats = torch.stack(
        [memory_scores.mean(), memory_scores.std(), psm_scores.mean(), psm_scores.std()]
    )
    stats[1::2] = stats[1::2].clamp_min(1e-6)  # a constant score standardises to 0, not inf
    return stats


__all__ = [
    "PriorFit",
    "decision_scores",
    "decision_statistics",
    "extend_prior",
    "fit_decision",
    "fit_prior",
    "holdout_statistics",
    "image_batches",
    "image_features",
]
