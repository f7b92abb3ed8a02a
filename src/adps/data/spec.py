"""From a description of a dataset to the dataset: one place that knows every layout we read.

``data`` may point at an MVTec root (with ``category``), at one MVTec-like category folder
(``train/good``, ``test/<kind>``, ``ground_truth/<kind>``; masks ``NNN_mask.png`` or the image's
own name, detected), at a KolektorSDD(2) root, or at any folders given by ``train_dir`` etc.
:class:`DataSpec` is plain data, so the CLI (which fills it from flags), the benchmark (one per
entry) and library users build it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise AdpsError(f"data format '{self.format}' is not one of {list(FORMATS)}")

    @property
    def name(self) -> str:
        """The category, else the dataset folder's name: how tables and reports call it."""
        return self.category or Path(self.data).resolve().name

    def open(self, split: str, size: int | tuple[int, int] | None) -> AnomalyDataset:
        root = Path(self.data)
        if not root.is_dir():
            raise AdpsError("dataset folder not found", root)
        fmt = self.format
        if fmt == "auto":
            fmt = "folder" if self.train_dir or self.defect_dir or self.good_dir else \
                detect_format(root, self.category)
        required = not self.masks_optional
        if fmt == "mvtec":
            parent, category = (root, self.category) if self.category else (root.parent, root.name)
            suffix = self.mask_suffix
            if suffix is None:
                suffix = detect_mask_suffix(parent / category / "ground_truth")
            return MVTecAD(parent, category, split, size=size, mask_required=required,
                           mask_suffix=suffix)
        if fmt == "ksdd2":
            return KolektorSDD2(root, split, size=size)
        if fmt == "ksdd":
            return KolektorSDD(root, split, size=size)
        return Folder(root, train_dir=self.train_dir, normal_test_dir=self.good_dir,
                      abnormal_test_dir=self.defect_dir, mask_dir=self.mask_dir,
                      mask_suffix=self.mask_suffix or "", mask_required=required, split=split,
                      size=size)


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
    raise AdpsError("cannot tell the dataset layout; expected an MVTec root with --category, a "
                    "category folder with train/good and test/, a KolektorSDD(2) root, or "
                    "--format folder with --train-dir/--good-dir/--defect-dir", root)
