"""adps update: learn new normal images into a trained model (memory, optionally a fine-tune),
recalibrate it on normal images it did not learn from, and write the result as a new model."""

from __future__ import annotations

import argparse
from pathlib import Path

from adps.cli.options import add_device_argument, add_overlap_argument, duration


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "update",
        help="add new normal images to a trained model and recalibrate it",
        description="Update a trained model when good parts start to look different (a new "
        "material, lamp or camera) without training again. The new normal images' teacher "
        "features join the memory prior (a coreset of the old memory and the new features, "
        "of the same size), the prior's statistics are re-estimated, so are the student's "
        "and the PSM's BatchNorm statistics (no gradient step), and, by default, no "
        "trained weight changes: about a minute on a CPU. With --time-budget the student and "
        "the PSM are also fine-tuned from the model for that long. Then the image threshold "
        "(and a standardized decision's statistics) is set again on new normal images the "
        "update did not learn from: a held-out share of --normal-dir, or --calibrate-dir, "
        "refused like `adps calibrate` when they are too few for --target-far or were trained "
        "on. The result is written atomically to --out; the input is never replaced unless "
        "--out names it and --overwrite is given. Its lineage (`adps info --model`) records "
        "the parent's hash, the images added (count and set hash), when, and what changed.",
    )
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        help="the checkpoint to update (model.pt), trained with the memory prior",
    )
    p.add_argument(
        "--normal-dir",
        required=True,
        type=Path,
        help="new normal images from the line as it is now (searched recursively); every "
        "file must be a readable image",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="where to write the updated model (default: MODEL-updated.pt beside --model)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists; with --out set to --model, update the model in place "
        "(the file is replaced whole or not at all)",
    )
    p.add_argument(
        "--calibrate-dir",
        type=Path,
        help="normal images the model has not seen, to set the threshold and statistics on; "
        "every --normal-dir image is then learned from",
    )
    p.add_argument(
        "--holdout",
        type=float,
        metavar="SHARE",
        help="without --calibrate-dir: the share of --normal-dir kept out of the update to "
        "set the threshold on, a fixed draw from --seed (default 0.3)",
    )
    p.add_argument(
        "--target-far",
        type=float,
        help="target false-alarm rate of the new threshold (default: the one the model's "
        "threshold was set for, else its training's, else 0.01); the calibration images must "
        "number at least 1 / rate",
    )
    p.add_argument(
        "--time-budget",
        type=duration,
        metavar="DURATION",
        help="also fine-tune the student and the PSM from the model for this long (90s, 2m, "
        "1h) with the usual synthetic defects, on the new images and --train-dir's; "
        "default: memory and statistics only, no trained weight changes",
    )
    p.add_argument(
        "--train-dir",
        type=Path,
        help="the model's old training images: with --time-budget the fine-tune keeps "
        "learning the old look too (the model file does not hold its images; without this "
        "it sees the new images only); for a model trained before adps recorded its training "
        "images' look at the teacher, they measure it; they do not join the memory",
    )
    p.add_argument(
        "--lr",
        type=float,
        help="with --time-budget: the fine-tune's peak learning rate (default: a quarter of "
        "the rate the model was trained with)",
    )
    p.add_argument(
        "--keep-norms",
        action="store_true",
        help="keep the model's BatchNorm statistics; by default the teacher's are moved so "
        "that the new images leave each layer as the training images did, and the student's "
        "and the PSM's are re-estimated on the new images with synthetic defects, as "
        "training estimated them, which adapts the model to a photometric change (a lamp, a "
        "camera's gain) without a gradient step (after a fine-tune, whose running averages "
        "also hold the old training images'; with --time-budget this keeps those)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the held-out draw, the coreset's projection and the fine-tune (default 0)",
    )
    add_overlap_argument(p, "calibration")
    add_device_argument(p)
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass (default: what runs fastest on the device)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adps.engine.update import update

    result = update(
        args.model,
        args.normal_dir,
        args.out,
        calibrate_dir=args.calibrate_dir,
        holdout=args.holdout,
        target_far=args.target_far,
        time_budget=args.time_budget,
        train_dir=args.train_dir,
        lr=args.lr,
        refresh_norms=not args.keep_norms,
        overwrite=args.overwrite,
        allow_overlap=args.allow_overlap,
        device=args.device,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print("\n".join(result.summary()))
    return 0
