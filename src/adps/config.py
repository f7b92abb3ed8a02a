"""Typed configs. Defaults are the paper's; every "OUR CHOICE" of the method spec is a field.

Configs are plain dataclasses so they serialise into checkpoints as dicts and come back exactly
(``from_dict``); a checkpoint alone is then enough to rebuild the model and its pre-processing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from adps.data.synthesis import SynthesisConfig
from adps.errors import AdpsError

Fusion = Literal["wmb", "diff", "conv"]
Variant = Literal["full", "no_psm_wmb", "no_student", "no_teacher"]


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    image_size: int = 256  # [P] 256 x 256 for every dataset
    k: int = 8  # [P] patches per side for the student; 1 = symmetric baseline
    # OUR CHOICE: the paper's default splits at the input only; (1,) also re-cuts every patch's
    # stage-1 features into k x k pieces (the "asymmetric layers" ablation).
    split_after_stages: tuple[int, ...] = ()
    fusion: Fusion = "wmb"  # [P] WMB; "diff" = Method (1) T - S, "conv" = Method (2)
    mask_type: Literal["cosine", "mse"] = "cosine"  # how the WMB weight is computed (Table VII)
    variant: Variant = "full"  # Table VIII ablations
    # OUR CHOICE: PSM up-block widths; None = the per-backbone table of the method spec.
    psm_widths: tuple[int, int, int, int] | None = None
    student_init: Literal["random", "teacher"] = "random"  # OUR CHOICE (STPM): random
    sigma: float = 4.0  # OUR CHOICE: Gaussian sigma of the image score (RD4AD convention)
    cos_eps: float = 1e-8
    psm_init: Literal["pytorch", "draem"] = "pytorch"


@dataclass
class TrainConfig:
    epochs: int = 300  # [P]
    batch_size: int = 32  # [P]
    lr: float = 1e-4  # [P] Adam
    lr_milestones: tuple[float, ...] = (0.8, 0.9)  # [P] x gamma at 80% and 90% of training
    lr_gamma: float = 0.2
    lambda_seg: float = 1.0  # [P] lambda
    focal_gamma: float = 2.0  # OUR CHOICE (DRAEM FocalLoss default)
    distill_loss: Literal["cosine", "mse"] = "cosine"  # [P] cosine (Table VII)
    mse_margin: float = 1.0  # OUR CHOICE: hinge margin pushing MSE apart on anomalous positions
    # OUR CHOICE (DRAEM): an epoch draws as many samples as there are training images.
    steps_per_epoch: int | None = None
    seed: int = 0
    rotate_prob: float = 0.3  # DRAEM code: rotate the normal image by +-90 deg with prob 0.3
    texture_dir: str | None = None  # DTD-style folder; None = textures from the training images
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    checkpoint_every: int = 50  # epochs
    checkpoint_minutes: float = 10.0  # also after any epoch ending this long after the last save
    # Share of the normal training images held out to calibrate the image threshold at the end
    # of training (0 = no calibration; the pixel threshold 0.5 then decides).
    calibration_holdout: float = 0.0
    target_false_alarm_rate: float = 0.01
    amp: bool = True  # bf16 autocast on CUDA; CPU always trains in float32
    channels_last: bool = True


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuilds a (nested) config; unknown keys are an error so typos do not pass silently."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise AdpsError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    values = {}
    for key, value in data.items():
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        elif key == "psm_widths" and isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return cls(**values)
