"""Tiling: high-resolution parts seen at the resolution their defects need.

A model of working size T sees a whole image resized to T, so an 8-pixel scratch on a
2048-pixel part becomes one pixel and vanishes. With ``ModelConfig.tiling`` the image is
instead scaled by ``tile_scale`` (1 = native pixels) into a *frame*, training draws random
T-sized crops of the frames, and inference cuts each frame into overlapping tiles, runs them in
batches and blends the tile maps with a window that is highest at a tile's centre (where the
model sees the most context) and never zero, so seams do not show and every pixel is covered.
Only one batch of tiles and two frame-sized accumulators are held at a time, so a 20-megapixel
image needs no more memory than its map.

:class:`TiledForward` wraps any forward (torch, TorchScript, ONNX): it has the same call
signature, so evaluation, calibration and the predictor tile the same way around every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adps.config import ModelConfig
from adps.data.datasets import AnomalyDataset, image_size
from adps.data.spec import DataSpec
from adps.engine.inference import Forward
from adps.errors import AdpsError
from adps.models.adps import image_score

Size = tuple[int, int]


@dataclass(frozen=True)
class Tiling:
    tile: Size  # (height, width): the model's working size
    overlap: float = 0.25  # share of a tile shared with its neighbour
    scale: float = 1.0  # resize factor applied to the image before tiling

    @classmethod
    def of(cls, config: ModelConfig) -> Tiling | None:
        """The tiling a model's configuration asks for, or None (whole images resized)."""
        if not config.tiling:
            return None
        return cls(config.size, config.tile_overlap, config.tile_scale)

    def frame(self, height: int, width: int) -> Size:
        """An image's size after scaling by ``scale`` (what is tiled)."""
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def starts(self, length: int, tile: int) -> list[int]:
        """Tile offsets along one side: evenly spaced, at most ``tile * (1 - overlap)`` apart,
        the first at 0 and the last flush with the end (one tile when ``length <= tile``)."""
        if length <= tile:
            return [0]
        count = 1 + math.ceil((length - tile) / max(1.0, tile * (1.0 - self.overlap)) - 1e-9)
        return [round(i * (length - tile) / (count - 1)) for i in range(count)]

    def boxes(self, height: int, width: int) -> list[Size]:
        """Top-left corners of every tile of a ``height x width`` frame, row-major."""
        th, tw = self.tile
        return [(y, x) for y in self.starts(height, th) for x in self.starts(width, tw)]

    def window(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(th, tw) blending weights: a separable Hann window sampled at pixel centres, so it
        is highest in the middle of a tile and positive up to its edges."""
        th, tw = self.tile

        def hann(n: int) -> torch.Tensor:
            return torch.sin(math.pi * (torch.arange(n, device=device) + 0.5) / n) ** 2

        return hann(th)[:, None] * hann(tw)[None, :]

    def to_dict(self) -> dict:
        return {"tile": list(self.tile), "overlap": self.overlap, "scale": self.scale}


class TiledForward:
    """A forward over whole frames that runs ``forward`` on their tiles.

    Takes (B, 3, H, W) frames (uint8 or float, already scaled by the tiling's ``scale``) and
    returns ``(maps (B, 1, H, W), scores (B,))`` like any forward. Frames smaller than a tile
    are padded by edge replication and the padding is cut from the map. The score is
    ``score(map)`` of the blended map (the model's image score, e.g. the max of its smoothed
    map), never a per-tile score.
    """

    def __init__(
        self,
        forward: Forward,
        tiling: Tiling,
        score: Callable[[torch.Tensor], torch.Tensor],
        tile_batch: int = 8,
    ):
        if tile_batch < 1:
            raise AdpsError(f"tile_batch must be >= 1, got {tile_batch}")
        self.forward, self.tiling, self.score, self.tile_batch = forward, tiling, score, tile_batch
        self._weights: dict[tuple, torch.Tensor] = {}

    def __call__(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = torch.stack([self.map(frame) for frame in frames])[:, None]
        return maps, self.score(maps)

    def map(self, frame: torch.Tensor) -> torch.Tensor:
        """(3, H, W) frame -> (H, W) float32 blended anomaly map."""
        th, tw = self.tiling.tile
        h, w = frame.shape[-2:]
        pad_h, pad_w = max(0, th - h), max(0, tw - w)
        if pad_h or pad_w:
            frame = F.pad(frame[None].float(), (0, pad_w, 0, pad_h), mode="replicate")[0].to(
                frame.dtype
            )
        height, width = frame.shape[-2:]
        boxes = self.tiling.boxes(height, width)
        total = None
        for i in range(0, len(boxes), self.tile_batch):
            chunk = boxes[i : i + self.tile_batch]
            tiles = torch.stack([frame[:, y : y + th, x : x + tw] for y, x in chunk])
            tile_maps, _ = self.forward(tiles)
            tile_maps = tile_maps[:, 0].float()
            if total is None:
                device = tile_maps.device
                window = self.tiling.window(device)
                total = torch.zeros((height, width), device=device)
            for (y, x), tile_map in zip(chunk, tile_maps, strict=True):
                total[y : y + th, x : x + tw] += tile_map * window
        assert total is not None  # a grid has at least one tile
        return (total / self._weight_sum(height, width, total.device))[:h, :w]

    def _weight_sum(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """The summed windows of a frame size (the same for every frame of that size)."""
        key = (height, width, str(device))
        if key not in self._weights:
            th, tw = self.tiling.tile
            window = self.tiling.window(device)
            weights = torch.zeros((height, width), device=device)
            for y, x in self.tiling.boxes(height, width):
                weights[y : y + th, x : x + tw] += window
            self._weights[key] = weights
        return self._weights[key]


def score_function(config: ModelConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's image score of (B, 1, H, W) maps (kind, sigma and share from ``config``)."""
    return lambda maps: image_score(maps, config.image_score, config.sigma, config.score_top_share)


def tiled(forward: Forward, config: ModelConfig, tile_batch: int = 8) -> Forward:
    """``forward`` itself, or a :class:`TiledForward` around it when ``config`` tiles."""
    tiling = Tiling.of(config)
    if tiling is None:
        return forward
    return TiledForward(forward, tiling, score_function(config), tile_batch)


def grid_tiles(frames: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    """Every tile of a (N, 3, H, W) stack without overlap (the last flush with the end)."""
    th, tw = tiling.tile
    flat = Tiling(tiling.tile, 0.0, tiling.scale)
    return torch.cat(
        [
            torch.stack([f[:, y : y + th, x : x + tw] for y, x in flat.boxes(*f.shape[-2:])])
            for f in frames
        ]
    )


def working_size(config: ModelConfig, first_image: str) -> Size:
    """The size a split is decoded at: the model's, or when tiling, its first image's size
    scaled by ``tile_scale`` (the other images are resized to it, so they stack)."""
    tiling = Tiling.of(config)
    if tiling is None:
        return config.size
    return tiling.frame(*image_size(first_image))


def open_split(spec: DataSpec, split: str, config: ModelConfig) -> AnomalyDataset:
    """A split of ``spec`` at the size ``config`` works at (:func:`working_size`)."""
    if not config.tiling:
        return spec.open(split, config.image_size)
    return at_working_size(spec.open(split, None), config)


def at_working_size(dataset: AnomalyDataset, config: ModelConfig) -> AnomalyDataset:
    """``dataset`` decoded at the size ``config`` works at (:func:`working_size`)."""
    return dataset.resized(working_size(config, str(dataset.records[0].image)))


__all__ = [
    "TiledForward",
    "Tiling",
    "at_working_size",
    "grid_tiles",
    "open_split",
    "score_function",
    "tiled",
    "working_size",
]
