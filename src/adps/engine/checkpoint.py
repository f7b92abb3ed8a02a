"""Checkpoints: weights + configs + pre-processing + thresholds, written atomically.

A checkpoint alone rebuilds the predictor: it holds the full model state (teacher included, so
no weights package is needed at deployment), both configs, the backbone's normalisation and the
calibrated thresholds. Only tensors and plain containers are stored, so loading uses
``torch.load(weights_only=True)`` and never unpickles arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adps.version import __version__
from adps.config import ModelConfig, TrainConfig, from_dict, to_dict
from adps.engine.calibrate import Calibration, Thresholds
from adps.engine.fusion import FusionFit
from adps.errors import AdpsError
from adps.fileio import atomic_save
from adps.models.adps import ADPS
from adps.models.backbones import get_backbone

FORMAT = "adps-checkpoint-v1"


def make_checkpoint(model: ADPS, train_config: TrainConfig | None,
                    thresholds: Thresholds = Thresholds(), **extra: Any) -> dict:
    spec = get_backbone(model.config.backbone)
    return {
        "format": FORMAT,
        "adps_version": __version__,
        "model_config": to_dict(model.config),
        "train_config": None if train_config is None else to_dict(train_config),
        "preprocess": {"backbone": spec.name, "mean": list(spec.mean), "std": list(spec.std),
                       "image_size": model.config.image_size, "input_range": [0.0, 1.0]},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "thresholds": thresholds.to_dict(),
        **extra,
    }


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AdpsError("checkpoint not found", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AdpsError(f"cannot be read as an adps checkpoint ({exc})", path) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AdpsError(f"is not an adps checkpoint (expected format {FORMAT})", path)
    return ckpt


def model_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu") -> ADPS:
    """Rebuilds the eval-mode model; teacher weights come from the checkpoint, not a package."""
    config = from_dict(ModelConfig, ckpt["model_config"])
    model = ADPS(config, pretrained=False)
    model.load_state_dict(ckpt["model"], strict=True)
    return model.to(device).eval()


def checkpoint_thresholds(ckpt: dict) -> Thresholds:
    return Thresholds.from_dict(ckpt.get("thresholds"))


def store_thresholds(ckpt: dict, calibration: Calibration, path: str | Path) -> Path:
    """Writes ``ckpt`` with the calibrated image threshold (and its provenance) to ``path``."""
    thresholds = checkpoint_thresholds(ckpt).calibrated(calibration)
    return atomic_save({**ckpt, "thresholds": thresholds.to_dict()}, path)


def with_fusion(ckpt: dict, fit: FusionFit) -> dict:
    """``ckpt`` with the fitted late fusion in its model config and the scores that chose it.
    An image threshold set for the old fusion no longer applies: calibrate after this."""
    config = {**ckpt["model_config"], "prior_exponent": fit.exponent, "psm_boost": fit.boost}
    return {**ckpt, "model_config": config, "fusion_fit": fit.to_dict()}
