"""Arguments shared by the commands that train: model and training configs, device, output.

Flags cover the fields people change; ``--config FILE.yaml`` (sections ``model:`` and
``train:``) sets any field of the typed configs, and flags given explicitly win over the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from adps.config import ModelConfig, TrainConfig, from_dict, to_dict
from adps.errors import AdpsError

# flag dest -> (config section, field)
_FIELDS = {
    "backbone": ("model", "backbone"), "image_size": ("model", "image_size"),
    "k": ("model", "k"), "fusion": ("model", "fusion"), "variant": ("model", "variant"),
    "sigma": ("model", "sigma"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "seed": ("train", "seed"), "textures": ("train", "texture_dir"),
    "checkpoint_every": ("train", "checkpoint_every"),
    "checkpoint_minutes": ("train", "checkpoint_minutes"),
    "steps_per_epoch": ("train", "steps_per_epoch"),
    "calibrate_holdout": ("train", "calibration_holdout"),
    "target_far": ("train", "target_false_alarm_rate"),
}


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group("model (defaults: the paper's, EfficientNet-Lite0 teacher)")
    m.add_argument("--config", type=Path, help="YAML file with 'model:' and 'train:' sections")
    m.add_argument("--backbone", help="teacher/student backbone (default efficientnet_lite0)")
    m.add_argument("--teacher-weights", metavar="FILE",
                   help="state-dict file for the teacher (needed for resnet18/wide_resnet50_2)")
    m.add_argument("--allow-download", action="store_true",
                   help="let torchvision download the teacher's ImageNet weights once")
    m.add_argument("--image-size", type=int, help="working size in pixels (default 256)")
    m.add_argument("-k", type=int, help="student patches per side (default 8; 1 = symmetric)")
    m.add_argument("--fusion", choices=("wmb", "diff", "conv"), help="WMB or an ablation")
    m.add_argument("--variant", choices=("full", "no_psm_wmb", "no_student", "no_teacher"),
                   help="framework ablation (default full)")
    m.add_argument("--sigma", type=float, help="Gaussian sigma of the image score (default 4)")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, help="epochs (default 300, the paper's)")
    t.add_argument("--steps-per-epoch", type=int,
                   help="steps per epoch (default: training images / batch size)")
    t.add_argument("--batch-size", type=int, help="images per step (default 32)")
    t.add_argument("--lr", type=float, help="Adam learning rate (default 1e-4)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--textures", metavar="DIR",
                   help="texture folder for synthetic defects (e.g. DTD images); default: "
                        "recoloured training images")
    t.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints (default 50)")
    t.add_argument("--checkpoint-minutes", type=float,
                   help="also checkpoint after an epoch once this many minutes have passed "
                        "since the last save (default 10)")
    t.add_argument("--calibrate-holdout", type=float, metavar="SHARE",
                   help="hold out this share of the training images and, after training, set "
                        "the image threshold for --target-far on them (default 0: no)")
    t.add_argument("--target-far", type=float,
                   help="target false-alarm rate for --calibrate-holdout (default 0.01)")
    add_device_argument(parser)


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    sections: dict[str, dict] = {"model": {}, "train": {}}
    if getattr(args, "config", None):
        try:
            loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise AdpsError(f"cannot read the config file ({exc})", args.config) from exc
        unknown = set(loaded) - set(sections)
        if unknown or not isinstance(loaded, dict):
            raise AdpsError(f"expected only 'model:' and 'train:' sections, got {sorted(loaded)}",
                            args.config)
        for key in sections:
            sections[key].update(loaded.get(key) or {})
    for dest, (section, name) in _FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            sections[section][name] = value
    model = from_dict(ModelConfig, {**to_dict(ModelConfig()), **sections["model"]})
    train = from_dict(TrainConfig, {**to_dict(TrainConfig()), **sections["train"]})
    return model, train
