"""Arguments shared by several commands: data, inference, model and training configs, device.

Each group of flags is defined once here and turned into plain values (a :class:`DataSpec`,
configs) here, so argparse never reaches below the CLI. For training, flags cover the fields
people change; ``--config FILE.yaml`` (sections ``model:`` and ``train:``) sets any field of the
typed configs, and flags given explicitly win over the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adps.config import (
    DEFAULT_RECIPE,
    RECIPES,
    ModelConfig,
    TrainConfig,
    from_dict,
    load_config_file,
    parse_size,
    recipe,
    size_text,
    to_dict,
)
from adps.data.spec import FORMATS, DataSpec
from adps.engine.schedule import parse_duration
from adps.errors import AdpsError

# flag dest -> (config section, field)
_FIELDS = {
    "backbone": ("model", "backbone"),
    "image_size": ("model", "image_size"),
    "k": ("model", "k"),
    "fusion": ("model", "fusion"),
    "variant": ("model", "variant"),
    "sigma": ("model", "sigma"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "seed": ("train", "seed"),
    "textures": ("train", "texture_dir"),
    "checkpoint_every": ("train", "checkpoint_every"),
    "checkpoint_minutes": ("train", "checkpoint_minutes"),
    "steps_per_epoch": ("train", "steps_per_epoch"),
    "calibrate_holdout": ("train", "calibration_holdout"),
    "target_far": ("train", "target_false_alarm_rate"),
    "psm_output_stride": ("model", "psm_output_stride"),
    "image_score": ("model", "image_score"),
    "score_top_share": ("model", "score_top_share"),
    "image_decision": ("model", "image_decision"),
    "decision_psm_weight": ("model", "decision_psm_weight"),
    "lr_schedule": ("train", "lr_schedule"),
    "warmup": ("train", "warmup"),
    "time_budget": ("train", "time_budget"),
    "amp": ("train", "amp"),
    "micro_batch_pixels": ("train", "micro_batch_pixels"),
    "prior": ("model", "prior"),
    "memory_size": ("model", "memory_size"),
    "tile_overlap": ("model", "tile_overlap"),
    "tile_scale": ("model", "tile_scale"),
    "psm_boost": ("model", "psm_boost"),
    "prior_fusion": ("model", "prior_fusion"),
    "prior_exponent": ("model", "prior_exponent"),
}


def duration(text: str) -> float:
    """A duration flag's value in seconds (90s, 20m, 2h), for argparse's ``type``."""
    try:
        return parse_duration(text)
    except AdpsError as exc:  # argparse reports ArgumentTypeError as a usage error
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _size(text: str) -> int | tuple[int, int]:
    try:
        return parse_size(text)
    except AdpsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)",
    )


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend and --precision: how a checkpoint runs in predict, serve and calibrate."""
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "openvino"),
        default="auto",
        help="runtime for a checkpoint (.pt): auto = OpenVINO on CPU when the "
        "openvino package is installed (converted once, kept in "
        "$ADPS_CACHE_DIR or ~/.cache/adps), else torch; torch = the maps "
        "'adps test' scored. Exports run on their own runtime",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "f32", "bf16"),
        default=None,
        help="OpenVINO's inference precision: f32 = torch's maps within 1e-3 "
        "(default for a checkpoint; an .xml export keeps its own); auto = "
        "bf16 on CPUs with native bf16 (faster; scores move, so "
        "calibrate with the same setting), else f32",
    )


def add_inference_arguments(parser: argparse.ArgumentParser, model_help: str) -> None:
    """--model, --device, --batch-size and --no-progress: what every command that runs a
    trained model takes."""
    parser.add_argument("--model", required=True, type=Path, help=model_help)
    add_device_argument(parser)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass (default: what runs fastest on the "
        "device: 1 for torch on CPU, 32 otherwise)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_overlap_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--allow-overlap",
        action="store_true",
        help=f"go on when some {what} images are images the model learned from "
        "(trained on, or set its threshold), which is refused otherwise: "
        "the figures are then inflated, and the output says so",
    )


def add_eval_resolution_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval-resolution",
        choices=("working", "original"),
        default="working",
        help="score maps against masks at the model's size or at each image's "
        "original size (MVTec's official protocol)",
    )


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data",
        required=required,
        metavar="PATH",
        help="dataset root, or one MVTec-like category folder (train/good, test/...)",
    )
    g.add_argument("--category", help="MVTec category under --data (e.g. bottle)")
    g.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="dataset layout (default: detected from the folders)",
    )
    g.add_argument("--train-dir", help="folder layout: normal training images (relative to --data)")
    g.add_argument("--good-dir", help="folder layout: normal test images")
    g.add_argument("--defect-dir", help="folder layout: defective test images")
    g.add_argument("--mask-dir", help="folder layout: masks of the defective test images")
    g.add_argument(
        "--mask-suffix",
        default=None,
        help="mask file = image stem + this suffix, any extension (default: detected, "
        "'_mask' for MVTec)",
    )
    g.add_argument(
        "--masks-optional",
        action="store_true",
        help="defective images without a mask count for image metrics only",
    )
    g.add_argument(
        "--cache-dir",
        default=None,
        help="keep decoded, resized images here so later runs skip decoding",
    )
    g.add_argument(
        "--split-file",
        metavar="FILE",
        default=None,
        help='pin a published protocol: a JSON or YAML file {"train": [...], '
        '"test": [...]} listing image paths relative to --data (e.g. '
        '"test/crack/003.png"); labels and masks still come from the layout, '
        "and every listed image must exist in it, on one side only, with no "
        "defective image in train",
    )


def data_spec(args: argparse.Namespace, **overrides) -> DataSpec:
    """The :class:`DataSpec` the data flags describe (``overrides`` replace single fields)."""
    values = {
        name: getattr(args, name)
        for name in (
            "data",
            "category",
            "format",
            "train_dir",
            "good_dir",
            "defect_dir",
            "mask_dir",
            "mask_suffix",
            "masks_optional",
            "cache_dir",
            "split_file",
        )
    }
    return DataSpec(**{**values, **overrides})


def recipe_defaults(name: str = DEFAULT_RECIPE) -> dict[str, str]:
    """Flag dest -> the value recipe ``name`` gives its config field, as ``--help`` prints it.

    Generated from the configs, so the help cannot name a default the command does not use
    (tests/test_config.py compares the two)."""
    configs = {"model": ModelConfig.from_recipe(name), "train": TrainConfig.from_recipe(name)}
    shown = {}
    for dest, (section, field) in _FIELDS.items():
        value = getattr(configs[section], field)
        if isinstance(value, bool):
            text = "on" if value else "off"
        elif value is None:
            text = "none"
        elif isinstance(value, float):
            text = f"{value:g}"
        elif field == "image_size":
            text = size_text(value)
        else:
            text = str(value)
        shown[dest] = text
    return shown


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    d = recipe_defaults()
    m = parser.add_argument_group(
        f"model (defaults: the {DEFAULT_RECIPE} recipe's, EfficientNet-Lite0 teacher; "
        "--recipe paper for the paper's)"
    )
    m.add_argument("--config", type=Path, help="YAML file with 'model:' and 'train:' sections")
    m.add_argument("--backbone", help=f"teacher/student backbone (default {d['backbone']})")
    m.add_argument(
        "--teacher-weights",
        metavar="FILE",
        help="state-dict file for the teacher (needed for resnet18/wide_resnet50_2)",
    )
    m.add_argument(
        "--allow-download",
        action="store_true",
        help="let torchvision download the teacher's ImageNet weights once",
    )
    m.add_argument(
        "--image-size",
        type=_size,
        metavar="N|HxW",
        help="working size in pixels: 256, or height x width such as 640x256 for "
        "elongated parts (each side a multiple of 16 x k; default "
        f"{d['image_size']})",
    )
    m.add_argument(
        "-k", type=int, help=f"student patches per side (default {d['k']}; 1 = symmetric)"
    )
    m.add_argument(
        "--fusion",
        choices=("wmb", "diff", "conv"),
        help=f"WMB or an ablation (default {d['fusion']})",
    )
    m.add_argument(
        "--variant",
        choices=("full", "no_psm_wmb", "no_student", "no_teacher"),
        help=f"framework ablation (default {d['variant']})",
    )
    m.add_argument(
        "--sigma", type=float, help=f"Gaussian sigma of the image score (default {d['sigma']})"
    )
    m.add_argument(
        "--psm-output-stride",
        type=int,
        choices=(1, 2, 4),
        help="1 = the paper's full-resolution PSM; 2 or 4 stop it earlier and "
        f"upsample its logits (faster; default {d['psm_output_stride']})",
    )
    m.add_argument(
        "--image-score",
        choices=("max", "top_mean"),
        help="image score from the smoothed map: its max (the paper) or the mean of "
        f"its top --score-top-share of pixels (default {d['image_score']})",
    )
    m.add_argument(
        "--score-top-share",
        type=float,
        metavar="SHARE",
        help=f"share of pixels for --image-score top_mean (default {d['score_top_share']})",
    )
    m.add_argument(
        "--image-decision",
        choices=("auto", "fused", "standardized"),
        help="what decides pass/fail with the memory prior: the image score of the fused map "
        "(fused), or the memory's and the PSM's own image scores, each in standard deviations "
        "above normal images, summed (standardized); auto = standardized with the memory "
        f"prior's late fusion on whole images, else fused (default {d['image_decision']})",
    )
    m.add_argument(
        "--decision-psm-weight",
        type=float,
        metavar="W",
        help="standardized decision: the PSM's weight beside the memory's 1 "
        f"(default {d['decision_psm_weight']})",
    )
    m.add_argument(
        "--prior",
        choices=("none", "memory"),
        help="memory: also remember the teacher's features of the normal training "
        "images and mix each position's distance to them into the map (more "
        "robust on real defects unlike the synthetic ones); none: the paper "
        f"(default {d['prior']})",
    )
    m.add_argument(
        "--memory-size",
        type=int,
        metavar="N",
        help=f"features kept in the memory after coreset selection (default {d['memory_size']})",
    )
    m.add_argument(
        "--psm-boost",
        type=float,
        metavar="A",
        help="late fusion: the prior is multiplied by 1 + A x the PSM's probability "
        f"(default {d['psm_boost']}; 0 = the prior alone)",
    )
    m.add_argument(
        "--prior-exponent",
        type=float,
        metavar="G",
        help="late fusion: the prior is raised to G in (0, 1] before that product "
        f"(default {d['prior_exponent']}; lower lets the PSM decide more; adps "
        "calibrate --fit-fusion fits G and A from labelled defects)",
    )
    m.add_argument(
        "--prior-fusion",
        choices=("late", "early"),
        help="late: mix the prior map with the trained PSM's map; early: the PSM "
        f"takes the prior as an input and learns to use it (default "
        f"{d['prior_fusion']})",
    )
    m.add_argument(
        "--tile",
        type=_size,
        metavar="N|HxW",
        help="cut each image into tiles of this size instead of resizing it to "
        "--image-size, so small defects on large images stay visible: training "
        "draws random tiles, inference blends overlapping tile maps into one "
        "map at the image's size (sets --image-size; stored in the model)",
    )
    m.add_argument(
        "--tile-overlap",
        type=float,
        metavar="SHARE",
        help="with --tile: share of a tile shared with its neighbour (default "
        f"{d['tile_overlap']})",
    )
    m.add_argument(
        "--tile-scale",
        type=float,
        metavar="FACTOR",
        help="with --tile: resize images by this factor before tiling (default "
        f"{d['tile_scale']}; 1 = native pixels, 0.5 halves each side)",
    )
    t = parser.add_argument_group("training")
    t.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=DEFAULT_RECIPE,
        help=f"a set of training settings to start from (default {DEFAULT_RECIPE}): "
        + "; ".join(f"{r.name}: {r.description}".replace("%", "%%") for r in RECIPES.values())
        + ". --config and explicit flags override single fields; the defaults "
        f"below are the {DEFAULT_RECIPE} recipe's",
    )
    t.add_argument(
        "--time-budget",
        type=duration,
        metavar="DURATION",
        help="train for this long (90s, 20m, 2h) instead of --epochs; warm-up and "
        f"decay scale with the budget (default {d['time_budget']})",
    )
    t.add_argument("--epochs", type=int, help=f"epochs (default {d['epochs']})")
    t.add_argument(
        "--steps-per-epoch",
        type=int,
        help="steps per epoch (default: training images / batch size)",
    )
    t.add_argument("--batch-size", type=int, help=f"images per step (default {d['batch_size']})")
    t.add_argument("--lr", type=float, help=f"Adam (peak) learning rate (default {d['lr']})")
    t.add_argument(
        "--lr-schedule",
        choices=("multistep", "cosine"),
        help="multistep = the paper's (x0.2 at 80%% and 90%%), or cosine decay "
        f"(default {d['lr_schedule']})",
    )
    t.add_argument(
        "--warmup",
        type=float,
        metavar="SHARE",
        help=f"linear learning-rate warm-up over this share of training (default {d['warmup']})",
    )
    t.add_argument(
        "--no-amp",
        dest="amp",
        action="store_const",
        const=False,
        default=None,
        help="train in float32 even where bf16 autocast is available (bf16 "
        f"autocast default {d['amp']})",
    )
    t.add_argument(
        "--micro-batch-pixels",
        type=int,
        metavar="N",
        help="bound training memory: each step's batch runs in equal parts of at most N image "
        "pixels whose gradients add up to the batch's (default: 524288 on a CPU, no split "
        "on a GPU)",
    )
    t.add_argument("--seed", type=int, help=f"random seed (default {d['seed']})")
    t.add_argument(
        "--textures",
        metavar="DIR",
        help="texture folder for synthetic defects (e.g. DTD images); default: "
        "recoloured training images",
    )
    t.add_argument(
        "--checkpoint-every",
        type=int,
        help=f"epochs between checkpoints (default {d['checkpoint_every']})",
    )
    t.add_argument(
        "--checkpoint-minutes",
        type=float,
        help="also checkpoint after an epoch once this many minutes have passed "
        f"since the last save (default {d['checkpoint_minutes']})",
    )
    t.add_argument(
        "--calibrate-holdout",
        type=float,
        metavar="SHARE",
        help="hold out this share of the training images and, after training, set "
        "the image threshold for --target-far on them (default "
        f"{d['calibrate_holdout']}: no)",
    )
    t.add_argument(
        "--target-far",
        type=float,
        help=f"target false-alarm rate for --calibrate-holdout (default {d['target_far']})",
    )
    add_device_argument(parser)


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """The recipe's values, then the --config file's, then the flags given explicitly."""
    chosen = recipe(getattr(args, "recipe", None) or DEFAULT_RECIPE)
    sections: dict[str, dict] = {"model": dict(chosen.model), "train": dict(chosen.train)}
    if getattr(args, "config", None):
        loaded = load_config_file(args.config)
        for key in sections:
            sections[key].update(loaded[key])
    for dest, (section, name) in _FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            sections[section][name] = value
    if getattr(args, "tile", None) is not None:
        if getattr(args, "image_size", None) is not None:
            raise AdpsError(
                "give --tile or --image-size, not both (--tile N sets the working size to the tile)"
            )
        sections["model"].update(image_size=args.tile, tiling=True)
    model = from_dict(ModelConfig, {**to_dict(ModelConfig()), **sections["model"]})
    train = from_dict(TrainConfig, {**to_dict(TrainConfig()), **sections["train"]})
    return model, train
