"""The training images' look at the teacher's BatchNorm layers, and moving a new look onto it.

The teacher's BatchNorm statistics are ImageNet's, not the line's, so after a photometric
change of the line (a re-aimed lamp, a camera's new gain) they cannot simply be re-estimated on
the new images (:mod:`adps.engine.norms` does that for the student and the PSM): the memory
holds the teacher's features of the old look, and the PSM learned from them. Instead, training
records how each of the teacher's layers normalised the training images (the per-channel mean
and spread of its output, :func:`teacher_norm_targets`), and an update moves each layer's
statistics so that the new images leave it with that same mean and spread
(:func:`align_teacher_norms`): the new parts then reach the memory and the PSM in the form they
were learned in. On battery weld under a dimmer lamp (benchmarks/bench_update.py, the first three
deals) it raised recall after a memory-only update from 58.4-60.6 % to 60.2-64.5 % (62.9-63.9 %
before the change), and the PSM's image AUROC on the new look from 0.91 to 0.94.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from adps.engine.prior import image_batches
from adps.models.adps import ADPS

# images the alignment measures, in one batch (each layer's statistics must be final before
# the next layer's input is measured): a seeded choice where there are more
ALIGN_IMAGES = 32


def teacher_norms(net: ADPS) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The teacher's BatchNorm layers by name, in the order a forward pass reaches them."""
    return {
        name: module
        for name, module in net.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and name.startswith("teacher.")
    }


def _normalised_moments(
    layer: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor
) -> torch.Tensor:
    """(2, C): the mean and standard deviation of ``layer``'s normalised output, before its
    affine transform, for inputs of per-channel ``mean`` and (biased) ``var``."""
    running_mean, running_var = _running(layer)
    scale = (running_var + layer.eps).sqrt()
    return torch.stack([(mean - running_mean) / scale, var.clamp_min(0).sqrt() / scale])


def _running(layer: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's running mean and variance (a teacher's layers track them)."""
    assert layer.running_mean is not None and layer.running_var is not None
    return layer.running_mean, layer.running_var


@torch.no_grad()
def teacher_norm_targets(
    net: ADPS, images: torch.Tensor, batch_size: int = 8
) -> dict[str, torch.Tensor]:
    """Per teacher BatchNorm layer, (2, C) float32 on the CPU: the per-channel mean and standard
    deviation of its normalised output over ``images`` (uint8 (N, 3, H, W), the training
    images) and every position: the look that :func:`align_teacher_norms` moves new images to.
    ``net``'s teacher must be as training left it (its statistics ImageNet's)."""
    layers = teacher_norms(net)
    # per layer: the sums of its inputs and of their squares per channel, and the positions
    sums: dict[str, list] = {name: [0.0, 0.0, 0] for name in layers}

    def record(name: str):
        def hook(_module, inputs):
            x, acc = inputs[0].double(), sums[name]
            acc[0] = acc[0] + x.sum((0, 2, 3))
            acc[1] = acc[1] + x.pow(2).sum((0, 2, 3))
            acc[2] += x.numel() // x.shape[1]

        return hook

    hooks = [layer.register_forward_pre_hook(record(name)) for name, layer in layers.items()]
    was_training = net.training
    net.eval()
    try:
        for batch in image_batches(images, net.mean.device, batch_size, "teacher look", False):
            net.teacher(net.normalize(batch))
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    targets = {}
    for name, layer in layers.items():
        total, squares, count = sums[name]
        mean = total / count
        moments = _normalised_moments(layer, mean.float(), (squares / count - mean.pow(2)).float())
        targets[name] = moments.cpu()
    return targets


@torch.no_grad()
def align_teacher_norms(
    net: ADPS, images: torch.Tensor, targets: Mapping[str, torch.Tensor], seed: int = 0
) -> int:
    """Sets each teacher BatchNorm layer's running statistics so that ``images`` (uint8
    (N, 3, H, W), the new normal images) leave it with the ``targets``' normalised mean and
    standard deviation (:func:`teacher_norm_targets`), layer after layer in one pass, each
    layer measured on inputs its aligned predecessors produced. At most
    :data:`ALIGN_IMAGES` images, a seeded choice. A channel constant in training or on the new
    images (no spread to match) keeps its statistics. Returns the number of layers aligned."""
    layers = teacher_norms(net)
    missing = sorted(set(layers) - set(targets))
    if missing:
        raise ValueError(f"no targets for the teacher's layers {missing[:3]}")
    if len(images) > ALIGN_IMAGES:
        generator = torch.Generator().manual_seed(seed)
        images = images[torch.randperm(len(images), generator=generator)[:ALIGN_IMAGES]]

    def align(name: str):
        def hook(layer, inputs):
            running_mean, running_var = _running(layer)
            x = inputs[0].float()
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
            target = targets[name].to(x.device)
            spread = var.sqrt() / (running_var + layer.eps).sqrt()
            ok = (target[1] > 1e-6) & (spread > 1e-5)  # a constant channel has none to match
            scale = var.clamp_min(1e-12).sqrt() / target[1].clamp_min(1e-6)
            running_mean.copy_(torch.where(ok, mean - target[0] * scale, running_mean))
            running_var.copy_(torch.where(ok, (scale.pow(2) - layer.eps).clamp_min(0), running_var))

        return hook

    hooks = [layer.register_forward_pre_hook(align(name)) for name, layer in layers.items()]
    was_training = net.training
    net.eval()
    try:
        net.teacher(net.normalize(images.to(net.mean.device).float().div_(255.0)))
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return len(layers)


__all__ = ["ALIGN_IMAGES", "align_teacher_norms", "teacher_norm_targets", "teacher_norms"]
