"""The one forward path of every inference: evaluation, calibration and the predictor.

A *forward* takes a batch of images, uint8 (B, 3, H, W) in 0..255 or float in [0, 1], at the
model's size, and returns ``(anomaly maps (B, 1, H, W), scores (B,))``. :class:`TorchForward`
is the torch one (a checkpoint's model or a TorchScript export); the ONNX runner has the same
call signature. Evaluation, calibration at the end of training and the predictor all go
through it, so they cannot pre-process differently.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from adps.engine.device import inference_batch_size

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TorchForward:
    """A torch module as a forward: eval mode, no grad, channels-last input on ``device``.

    ``takes_uint8``: the module converts uint8 itself (a TorchScript export of a uint8 graph);
    otherwise uint8 batches are scaled to [0, 1] here, as the model expects.
    """

    def __init__(self, module: torch.nn.Module, device: torch.device, takes_uint8: bool = False):
        self.module = module.to(device).eval()
        self.device = device
        self.takes_uint8 = takes_uint8

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = batch.to(self.device, non_blocking=True)
        if batch.dtype == torch.uint8 and not self.takes_uint8:
            batch = batch.float().div_(255.0)
        return self.module(batch.contiguous(memory_format=torch.channels_last))


def infer(
    forward: Forward,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Maps (N, H, W) and scores (N,) on the CPU for a stack of images; also the model seconds.

    Results stay on the device until the end, so the loop never waits on the host; on CUDA the
    clock is read after a synchronisation, so the seconds are the model's, not the launch's.
    """
    batch_size = inference_batch_size(device, batch_size)
    maps, scores = [], []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in tqdm(
        range(0, len(images), batch_size), desc="infer", unit="batch", disable=not progress
    ):
        amap, score = forward(images[i : i + batch_size])
        maps.append(amap[:, 0].float())
        scores.append(score.float())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return torch.cat(maps).cpu(), torch.cat(scores).cpu(), seconds
