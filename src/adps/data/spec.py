"""From a description of a dataset to the dataset: one place that knows every layout we read.

``data`` may point at an MVTec root (with ``category``), at one MVTec-like category folder
(``train/good``, ``test/<kind>``, ``ground_truth/<kind>``; masks ``NNN_mask.png`` or the image's
own name, detected), at a KolektorSDD(2) root, or at any folders given by ``train_dir`` etc.
:class:`DataSpec` is plain data, so the CLI (which fills it from flags), the benchmark (one per
entry) and library users build it the same way.

A split file pins which images train and which test, whatever the layout says; see
:func:`read_split_file` for its format.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from adps.data.datasets import (
    IMAGE_EXTENSIONS,
    AnomalyDataset,
    Folder,
    KolektorSDD,
    KolektorSDD2,
    MVTecAD,
    Record,
    name_some,
)
from adps.errors import AdpsError

SPLITS = ("train", "test")

FORMATS = ("auto", "mvtec", "folder", "ksdd2", "ksdd")


@dataclass(frozen=True)
class DataSpec:
    """Where a dataset is and how it is laid out; :meth:`open` gives one split of it."""

    data: str | Path
    category: str | None = None
    format: str = "auto"
    train_dir: str | None = None
    good_dir: str | None = None
    defect_dir: str | None = None
    mask_dir: str | None = None
    mask_suffix: str | None = None  # None = detected ('_mask' for MVTec, '' for same names)
    masks_optional: bool = False
    cache_dir: str | Path | None = None
    split_file: str | Path | None = None  # pins the train and test images (read_split_file)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise AdpsError(f"data format '{self.format}' is not one of {list(FORMATS)}")

    @property
    def name(self) -> str:
        """The category, else the dataset folder's name: how tables and reports call it."""
        return self.category or Path(self.data).resolve().name

    def open(self, split: str, size: int | tuple[int, int] | None) -> AnomalyDataset:
        """One split; with a split file, the images it lists for ``split``, labels and masks
        taken from the layout's records of all its images (so any layout can be split)."""
        if self.split_file is None:
            return self._layout(split, size)
        lists = read_split_file(self.split_file)
        if split not in lists:
            raise AdpsError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        everything = self._layout("all", size).records
        return AnomalyDataset(
            select_split(everything, Path(self.data), lists, split, self.split_file), size
        )

    def _layout(self, split: str, size: int | tuple[int, int] | None) -> AnomalyDataset:
        root = Path(self.data)
        if not root.is_dir():
            raise AdpsError("dataset folder not found", root)
        fmt = self.format
        if fmt == "auto":
            fmt = (
                "folder"
                if self.train_dir or self.defect_dir or self.good_dir
                else detect_format(root, self.category)
            )
        required = not self.masks_optional
        if fmt == "mvtec":
            parent, category = (root, self.category) if self.category else (root.parent, root.name)
            suffix = self.mask_suffix
            if suffix is None:
                suffix = detect_mask_suffix(parent / category / "ground_truth")
            return MVTecAD(
                parent, category, split, size=size, mask_required=required, mask_suffix=suffix
            )
        if fmt == "ksdd2":
            return KolektorSDD2(root, split, size=size)
        if fmt == "ksdd":
            return KolektorSDD(root, split, size=size)
        return Folder(
            root,
            train_dir=self.train_dir,
            normal_test_dir=self.good_dir,
            abnormal_test_dir=self.defect_dir,
            mask_dir=self.mask_dir,
            mask_suffix=self.mask_suffix or "",
            mask_required=required,
            split=split,
            size=size,
        )


def detect_mask_suffix(gt_root: Path) -> str:
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
    raise AdpsError(
        "cannot tell the dataset layout; expected an MVTec root with --category, a "
        "category folder with train/good and test/, a KolektorSDD(2) root, or "
        "--format folder with --train-dir/--good-dir/--defect-dir",
        root,
    )


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    """``{"train": [...], "test": [...]}`` from a JSON or YAML file.

    Entries are image paths relative to the dataset root (``--data``), with ``/`` (a ``\\`` is
    read as one, for lists written on Windows): e.g. ``test/crack/003.png`` for an MVTec-like
    category folder. JSON is YAML, so one parser reads both; both keys are required, so a file
    always states a whole protocol.
    """
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AdpsError("split file not found", path) from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AdpsError(f"cannot read the split file ({exc})", path) from exc
    shape = (
        'a split file holds {"train": [...], "test": [...]}, lists of image paths '
        "relative to the dataset root"
    )
    if not isinstance(loaded, dict) or set(loaded) != set(SPLITS):
        found = sorted(map(str, loaded)) if isinstance(loaded, dict) else type(loaded).__name__
        raise AdpsError(f"{shape}; found {found}", path)
    lists = {}
    for key in SPLITS:
        entries = loaded[key] or []
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise AdpsError(f"{shape}; '{key}' is not a list of paths", path)
        lists[key] = [os.path.normpath(e.replace("\\", "/")).replace(os.sep, "/") for e in entries]
    return lists


def select_split(
    records: list[Record],
    root: Path,
    lists: dict[str, list[str]],
    split: str,
    split_file: str | Path,
) -> list[Record]:
    """The records ``lists[split]`` names, in the layout's order, once the whole file has been
    checked against the layout: every listed image exists, none is listed twice or on both
    sides, and no defective image trains (training is one-class)."""
    by_path = {Path(os.path.relpath(r.image, root)).as_posix(): r for r in records}
    for key in SPLITS:
        twice = [e for e, n in Counter(lists[key]).items() if n > 1]
        if twice:
            raise AdpsError(f"listed twice in '{key}': {name_some(twice)}", split_file)
    both = sorted(set(lists["train"]) & set(lists["test"]))
    if both:
        raise AdpsError(
            f"{len(both)} image(s) listed in both train and test: {name_some(both)}", split_file
        )
    missing = [e for key in SPLITS for e in lists[key] if e not in by_path]
    if missing:
        raise AdpsError(
            f"{len(missing)} listed image(s) are not images of the dataset at {root} "
            f"(paths are relative to it): {name_some(missing)}",
            split_file,
        )
    defective = [e for e in lists["train"] if by_path[e].label == 1]
    if defective:
        raise AdpsError(
            f"{len(defective)} defective image(s) in the train list (training is "
            f"one-class: normal images only): {name_some(defective)}",
            split_file,
        )
    if not lists[split]:
        raise AdpsError(f"the '{split}' list is empty", split_file)
    chosen = set(lists[split])
    return [r for key, r in by_path.items() if key in chosen]
