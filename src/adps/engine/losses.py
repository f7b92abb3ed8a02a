"""ADPS training losses (docs/method.md): distillation Eq. (7) + focal Eq. (8), Eq. (9)."""

from __future__ import annotations

import functools
import operator

import torch
import torch.nn.functional as F

from adps.config import TrainConfig
from adps.models.adps import cosine_map


def distillation_loss(
    teacher: list[torch.Tensor],
    student: list[torch.Tensor],
    mask: torch.Tensor,
    kind: str = "cosine",
    margin: float = 1.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Eq. (7): pull T/S together on normal positions, push them apart on synthetic anomalies.

    Y is the mask area-downsampled to each level (a soft fraction; the loss is linear in Y).
    OUR CHOICE reductions: mean over positions and batch per level, sum over levels. The MSE
    variant uses ``(1 - Y) d + Y relu(margin - d)`` with ``d = mean_c (T - S)^2``, since squared
    distance has no natural "opposite" the way cosine has -1.
    """
    total = mask.new_zeros(())
    for t, s in zip(teacher, student, strict=True):
        y = F.interpolate(mask.float(), size=t.shape[-2:], mode="area")
        if kind == "cosine":
            cos = cosine_map(t, s, eps)
            level = (1.0 - y) * (1.0 - cos) + y * cos
        else:
            d = (t.float() - s.float()).pow(2).mean(dim=1, keepdim=True)
            level = (1.0 - y) * d + y * F.relu(margin - d)
        total = total + level.mean()
    return total


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Eq. (8) on the 2-channel softmax: -(1-p_t)^gamma log p_t, mean over pixels.

    Computed from log-softmax rather than log(softmax) so bf16 logits cannot produce log(0);
    this replaces DRAEM's 1e-5 smoothing, which served the same purpose.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    logp_t = torch.where(target > 0.5, logp[:, 1:2], logp[:, 0:1])
    return (-(1.0 - logp_t.exp()).pow(gamma) * logp_t).mean()


def adps_loss(
    outputs: dict, mask: torch.Tensor, config: TrainConfig, eps: float = 1e-8
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. (9): L = L_d + lambda * L_s; returns the total and its parts (device tensors)."""
    parts = {}
    if outputs["teacher"] is not None and outputs["student"] is not None:
        parts["distill"] = distillation_loss(
            outputs["teacher"],
            outputs["student"],
            mask,
            config.distill_loss,
            config.mse_margin,
            eps,
        )
    if outputs["logits"] is not None:
        parts["focal"] = config.lambda_seg * focal_loss(outputs["logits"], mask, config.focal_gamma)
    return functools.reduce(operator.add, parts.values()), parts
