"""From command-line arguments to a dataset: one place that knows every layout we read.

``--data`` may point at an MVTec root (with ``--category``), at one MVTec-like category folder
(``train/good``, ``test/<kind>``, ``ground_truth/<kind>``; masks ``NNN_mask.png`` or the image's
own name, detected), at a KolektorSDD2 root, or at any folders given by ``--train-dir`` etc.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adps.data.datasets import (
    IMAGE_EXTENSIONS,
    AnomalyDataset,
    Folder,
    KolektorSDD,
    KolektorSDD2,
    MVTecAD,
)
from adps.errors import AdpsError

FORMATS = ("auto", "mvtec", "folder", "ksdd2", "ksdd")


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=required, metavar="PATH",
                   help="dataset root, or one MVTec-like category folder (train/good, test/...)")
    g.add_argument("--category", help="MVTec category under --data (e.g. bottle)")
    g.add_argument("--format", choices=FORMATS, default="auto",
                   help="dataset layout (default: detected from the folders)")
    g.add_argument("--train-dir", help="folder layout: normal training images (relative to --data)")
    g.add_argument("--good-dir", help="folder layout: normal test images")
    g.add_argument("--defect-dir", help="folder layout: defective test images")
    g.add_argument("--mask-dir", help="folder layout: masks of the defective test images")
    g.add_argument("--mask-suffix", default=None,
                   help="mask file = image stem + this suffix, any extension (default: detected, "
                        "'_mask' for MVTec)")
    g.add_argument("--masks-optional", action="store_true",
                   help="defective images without a mask count for image metrics only")
    g.add_argument("--cache-dir", default=None,
                   help="keep decoded, resized images here so later runs skip decoding")


def _detect_suffix(gt_root: Path) -> str:
    """'_mask' when the ground-truth files are named like MVTec's, else '' (same name)."""
    for path in gt_root.rglob("*"):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return "_mask" if path.stem.endswith("_mask") else ""
    return "_mask"


def detect_format(root: Path, category: str | None) -> str:
    if category is not None or (root / "train" / "good").is_dir():
        return "mvtec"
    if (root / "train").is_dir() and any((root / "train").glob("*_GT.*")):
        return "ksdd2"
    if any(root.glob("kos*")):
        return "ksdd"
    raise AdpsError("cannot tell the dataset layout; expected an MVTec root with --category, a "
                    "category folder with train/good and test/, a KolektorSDD(2) root, or "
                    "--format folder with --train-dir/--good-dir/--defect-dir", root)


def open_dataset(args: argparse.Namespace, split: str, size: int) -> AnomalyDataset:
    root = Path(args.data)
    if not root.is_dir():
        raise AdpsError("dataset folder not found", root)
    fmt = args.format
    if fmt == "auto":
        fmt = "folder" if args.train_dir or args.defect_dir or args.good_dir else \
            detect_format(root, args.category)
    required = not args.masks_optional
    if fmt == "mvtec":
        parent, category = (root, args.category) if args.category else (root.parent, root.name)
        suffix = args.mask_suffix
        if suffix is None:
            suffix = _detect_suffix(parent / category / "ground_truth")
        return MVTecAD(parent, category, split, size=size, mask_required=required,
                       mask_suffix=suffix)
    if fmt == "ksdd2":
        return KolektorSDD2(root, split, size=size)
    if fmt == "ksdd":
        return KolektorSDD(root, split, size=size)
    return Folder(root, train_dir=args.train_dir, normal_test_dir=args.good_dir,
                  abnormal_test_dir=args.defect_dir, mask_dir=args.mask_dir,
                  mask_suffix=args.mask_suffix or "", mask_required=required, split=split,
                  size=size)


def dataset_name(args: argparse.Namespace) -> str:
    return args.category or Path(args.data).resolve().name
