"""adps train: fit one model on the normal training images of a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from adps.cli.options import (
    add_data_arguments,
    add_training_arguments,
    configs_from_args,
    data_spec,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on normal images",
        description="Train ADPS on the normal training images of a dataset. Writes OUT/last.pt "
        "(resumable: optimiser, scheduler and RNG state) every --checkpoint-every "
        "epochs and OUT/model.pt (deployable) at the end. Runs DDP under "
        "`torchrun --nproc-per-node N adps train ...`.",
    )
    add_data_arguments(p)
    add_training_arguments(p)
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adps.engine.tiling import open_split
    from adps.engine.train import train

    model_config, train_config = configs_from_args(args)
    spec = data_spec(args)
    dataset = open_split(spec, "train", model_config)
    try:
        result = train(
            model_config,
            train_config,
            dataset,
            args.out,
            resume=args.resume,
            device=args.device,
            weights_file=args.teacher_weights,
            allow_download=args.allow_download,
            cache_dir=spec.cache_dir,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        if (args.out / "last.pt").is_file():
            print(
                f"interrupted; continue with the same command plus --resume "
                f"(from {args.out / 'last.pt'})"
            )
        raise
    print(
        f"trained {result.epochs} epochs ({result.steps} steps) in {result.seconds:.1f} s, "
        f"{result.images_per_second:.0f} images/s in {result.precision}; "
        f"model: {result.checkpoint}"
    )
    return 0
