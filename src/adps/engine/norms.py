"""Re-estimating a trained model's BatchNorm statistics on new normal images, without training.

A photometric change of the line (a re-aimed lamp, a camera's new gain) moves the activations
of the student and the PSM, while their BatchNorm layers go on normalising with the statistics
of the old line: the PSM then ranks new parts worse although nothing it learned is wrong. The
statistics are re-estimated here, with no gradient step, on the new images with the usual
synthetic defects, the kind of batches training estimated them on (AdaBN: Li et al., "Revisiting
Batch Normalization For Practical Domain Adaptation", 2016). The teacher's statistics are
ImageNet's, not the line's: they are aligned instead (:mod:`adps.engine.teacher_look`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adps.config import TrainConfig
from adps.data.synthesis import AnomalySynthesizer, TextureBank
from adps.engine.train import random_crops, random_rotate, step_micro_batch
from adps.models.adps import ADPS

MIN_SAMPLES = 64  # synthetic samples at the least: the new images repeat with new defects


def student_and_psm_norms(net: ADPS) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers whose statistics an update may re-estimate: all but the teacher's."""
    return [
        module
        for name, module in net.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not name.startswith("teacher.")
    ]


@torch.no_grad()
def refresh_norm_statistics(
    net: ADPS,
    images: torch.Tensor,
    config: TrainConfig,
    textures: TextureBank | None,
    seed: int = 0,
    groups: torch.Tensor | None = None,
) -> int:
    """Replaces the running statistics of :func:`student_and_psm_norms` by their average over
    batches of ``images`` (uint8 (N, 3, H, W), frames when the model tiles) as training draws
    them: random crops of frames, ``config``'s rotation and synthetic defects, and training's
    micro-batch size, since a BatchNorm layer's statistics are those of the batches it saw.
    Each image is drawn at least once, and :data:`MIN_SAMPLES` times in all at the least.

    ``groups`` (N,): the images' numbers in ``memory.sources``, for a model whose PSM takes the
    memory's prior (early fusion), so each image's own rows are left out as in training.

    Returns the number of layers re-estimated. ``net`` is left in eval mode.
    """
    layers = student_and_psm_norms(net)
    if not layers or len(images) == 0:
        return 0
    device = next(net.parameters()).device
    size = net.config.size
    micro = step_micro_batch(config, size, device)
    samples = max(len(images), MIN_SAMPLES)
    draws = torch.Generator().manual_seed(seed)
    order = torch.cat(
        [
            torch.randperm(len(images), generator=draws)
            for _ in range(math.ceil(samples / len(images)))
        ]
    )[:samples]
    generator = torch.Generator(device).manual_seed(seed)
    crops = torch.Generator(images.device).manual_seed(seed)
    synthesizer = AnomalySynthesizer(textures, config.synthesis)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches, not a decaying one
    net.train()
    try:
        for index in order.split(micro):
            if tuple(images.shape[-2:]) == tuple(size):
                batch = images[index]
            else:  # frames of a tiling model: a random tile of each, as training crops them
                batch = random_crops(images, index.to(images.device), size, crops)
            batch = batch.to(device)
            x = random_rotate(batch.float().div_(255.0), config.rotate_prob, 90.0, generator)
            x, _ = synthesizer(x, generator)
            net(x, groups=None if groups is None else groups[index].to(device))
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        net.eval()
    return len(layers)


__all__ = ["MIN_SAMPLES", "refresh_norm_statistics", "student_and_psm_norms"]
