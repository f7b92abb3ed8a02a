"""Anomaly-detection datasets: MVTec AD, Kolektor SDD / SDD2 and a generic folder layout.

Every dataset is a list of :class:`Record` (image path, mask path or ``None``, label) plus a
working size. Building the list only looks at file names (and, for Kolektor, mask content, since
that is where the label lives); images are decoded lazily in :meth:`AnomalyDataset.decode`,
which is also the single place where files are validated, so a bad file is reported exactly
when it is first used, with its name.

Rules shared by all datasets (kept strict so that wrong data never trains silently):

* Only files whose extension is in ``extensions`` are images; anything else in a folder
  (``.txt``, ``.json``, ``Thumbs.db``...) is not an image and is ignored, with one
  :class:`SkippedImagesWarning` per folder when some of it is in a format PIL could read (GIF,
  WebP...), since those are likely images the user meant. A file *with* an image extension that
  cannot be decoded is an error, never skipped.
* Images larger than ``max_pixels`` (read from the header, before decoding) are refused with
  their size and the limit; PIL's own decompression-bomb guard is switched off (see below).
* A defective image must have a mask unless ``mask_required=False``; then it becomes an
  image-level-only sample (``has_mask=False``) and pixel metrics are reported as absent.
* Masks that match no image are ignored with one :class:`OrphanMaskWarning` per mask folder.
* A mask is foreground wherever any of its (colour) channels is non-zero; its size must equal
  its image's size.
* ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left at ``False`` so truncated files raise.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from adps.data.decode import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    OverPixelLimit,
    image_size,
    read_image,
    read_mask,
)
from adps.errors import AdpsError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "AnomalyDataset",
    "Decoded",
    "Folder",
    "KolektorSDD",
    "KolektorSDD2",
    "MVTecAD",
    "OrphanMaskWarning",
    "OverPixelLimit",
    "Record",
    "Resize",
    "SkippedImagesWarning",
    "build_records",
    "find_images",
    "list_files",
    "match_masks",
    "name_some",
    "normalize_size",
    "read_image",
    "read_mask",
]

Size = tuple[int, int]


class OrphanMaskWarning(UserWarning):
    """Masks without an image were ignored (a category of its own so callers can filter it)."""


class SkippedImagesWarning(UserWarning):
    """Files in a format PIL reads but adps does not take (GIF, WebP...) were left out."""


@dataclass(frozen=True)
class Record:
    """Where a sample lives on disk and its label; nothing is decoded yet."""

    image: Path
    mask: Path | None
    label: int

    @property
    def has_mask(self) -> bool:
        """Pixel ground truth exists: a normal image's is all zeros, a defect's is its mask."""
        return self.label == 0 or self.mask is not None


class Decoded(NamedTuple):
    """A decoded, resized sample in compact form (what caches store).

    ``original_mask`` is kept because metrics are computed at the original resolution, where
    thin defects have not been lost to nearest-neighbour down-sampling."""

    image: Tensor  # uint8 (3, H, W)
    mask: Tensor  # uint8 (1, H, W) in {0, 1}; zeros for normal images and defects without one
    original_mask: Tensor  # uint8 (H0, W0) in {0, 1}


# --------------------------------------------------------------------------- resizing


def normalize_size(size: int | Sequence[int] | None) -> Size | None:
    """``256`` -> (256, 256); ``(h, w)`` stays; ``None`` keeps the original size."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise AdpsError(f"size must be a positive int, (height, width) or None, got {size!r}")
    return (pair[0], pair[1])


class Resize:
    """Resize an image/mask pair: antialiased bilinear for the image, nearest for the mask.

    Works on uint8 tensors so the result can be cached compactly and is bit-identical whether
    it comes from a cache or from fresh decoding. Nearest is the pixel-centre-aligned variant
    (``NEAREST_EXACT``), which matches PIL and does not shift masks by half a pixel.
    """

    def __init__(self, size: int | Sequence[int] | None):
        self.size = normalize_size(size)

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if self.size is None or tuple(image.shape[-2:]) == self.size:
            return image, mask
        mask = TF.resize(mask, list(self.size), interpolation=InterpolationMode.NEAREST_EXACT)
        return self.image(image), mask

    def image(self, image: Tensor) -> Tensor:
        """The image alone (prediction and textures use exactly the training resize)."""
        if self.size is None or tuple(image.shape[-2:]) == self.size:
            return image
        return TF.resize(
            image, list(self.size), interpolation=InterpolationMode.BILINEAR, antialias=True
        )

    def __repr__(self) -> str:
        return f"Resize({self.size})"


# --------------------------------------------------------------------------- the dataset


class AnomalyDataset:
    """A list of records decoded on demand (:meth:`decode`) at a fixed working size."""

    def __init__(self, records: Sequence[Record], size: int | Sequence[int] | None = 256):
        if not records:
            raise AdpsError("the dataset contains no images")
        self.records: list[Record] = list(records)
        self.size: Size | None = normalize_size(size)
        self.resize = Resize(self.size)

    def __len__(self) -> int:
        return len(self.records)

    def resized(self, size: int | Sequence[int] | None) -> AnomalyDataset:
        """The same records decoded at another size."""
        other = copy.copy(self)
        other.size = normalize_size(size)
        other.resize = Resize(other.size)
        return other

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def decode(self, index: int) -> Decoded:
        """Read, validate and resize one sample (the only place files are decoded)."""
        rec = self.records[index]
        rgb = read_image(rec.image)
        h0, w0 = rgb.shape[:2]
        original = self._read_checked_mask(rec, (h0, w0))
        image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
        image, mask = self.resize(image, original[None])
        return Decoded(image.contiguous(), mask.contiguous(), original)

    def original_mask(self, index: int) -> Tensor:
        """The uint8 (H0, W0) mask without decoding the image (for evaluation after caching)."""
        rec = self.records[index]
        return self._read_checked_mask(rec, image_size(rec.image))

    def _read_checked_mask(self, rec: Record, size: tuple[int, int]) -> Tensor:
        if rec.mask is None:
            return torch.zeros(size, dtype=torch.uint8)
        mask = read_mask(rec.mask)
        if mask.shape != size:
            raise AdpsError(
                f"mask size {mask.shape[1]}x{mask.shape[0]} differs from the size "
                f"{size[1]}x{size[0]} of its image {rec.image.name} (width x height)",
                rec.mask,
            )
        return torch.from_numpy(mask.astype(np.uint8))

    def __repr__(self) -> str:
        n_bad = sum(self.labels)
        return f"{type(self).__name__}({len(self)} images, {n_bad} anomalous, size={self.size})"


# --------------------------------------------------------------------------- record building


def _extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def _require_dir(directory: Path, what: str = "directory") -> None:
    if not directory.exists():
        raise AdpsError(f"{what} does not exist", directory)
    if not directory.is_dir():
        raise AdpsError(f"{what} is not a directory", directory)


def list_files(
    directory: str | Path, extensions: Iterable[str] = IMAGE_EXTENSIONS, recursive: bool = False
) -> tuple[list[Path], list[Path]]:
    """(images, other files) of ``directory``, each sorted; the others are returned so that
    callers can say what they left out instead of dropping it without a word."""
    directory, extensions = Path(directory), _extensions(extensions)
    found = directory.rglob("*") if recursive else directory.iterdir()
    files = sorted(p for p in found if p.is_file())
    return (
        [p for p in files if p.suffix.lower() in extensions],
        [p for p in files if p.suffix.lower() not in extensions],
    )


def name_some(names: Sequence[str], limit: int = 3) -> str:
    """The first ``limit`` names, then how many more: a list that stays one line."""
    return ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )


def find_images(
    directory: str | Path,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    recursive: bool = False,
    exclude_stem_suffix: str | None = None,
) -> list[Path]:
    """Sorted image files of a directory; a missing or image-less directory is an error.

    ``exclude_stem_suffix`` skips masks stored beside their images (Kolektor's ``_GT``). Files
    PIL could read in a format not in ``extensions`` are left out with a
    :class:`SkippedImagesWarning`, since a dataset silently missing its GIFs is worse than noise.
    """
    directory = Path(directory)
    _require_dir(directory)
    images, others = list_files(directory, extensions, recursive)
    readable = [p for p in others if p.suffix.lower() in Image.registered_extensions()]
    if readable:
        warnings.warn(
            f"{len(readable)} file(s) in {directory} are in a format adps does not "
            f"take ({', '.join(sorted({p.suffix.lower() for p in readable}))}) and "
            f"are left out: {name_some([p.name for p in readable])}",
            SkippedImagesWarning,
            stacklevel=2,
        )
    if exclude_stem_suffix:
        images = [p for p in images if not p.stem.endswith(exclude_stem_suffix)]
    if not images:
        raise AdpsError(
            f"no images found (extensions {', '.join(_extensions(extensions))})", directory
        )
    return images


def _mask_key(rel: Path, suffix: str) -> str:
    return (rel.parent / rel.stem[: len(rel.stem) - len(suffix)]).as_posix()


def match_masks(
    images: Sequence[Path],
    image_dir: str | Path,
    mask_dir: str | Path,
    mask_suffix: str = "",
    mask_required: bool = True,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    recursive: bool = False,
) -> list[Path | None]:
    """Find each image's mask in ``mask_dir`` by stem + ``mask_suffix``, any extension.

    ``x.jpg`` matches ``x<suffix>.png`` (or .bmp...); with ``recursive`` the sub-folder must
    match too. Only files whose stem ends with the suffix are masks, so masks may share a folder
    with their images. Unmatched masks trigger one warning; a missing mask raises unless
    ``mask_required`` is False (then ``None``).
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    _require_dir(mask_dir, "mask directory")
    index: dict[str, Path] = {}
    image_set = set(images)
    for path in list_files(mask_dir, extensions, recursive)[0]:
        rel = path.relative_to(mask_dir)
        if not rel.stem.endswith(mask_suffix) or path in image_set:
            continue
        key = _mask_key(rel, mask_suffix)
        if key in index:
            raise AdpsError(
                f"two masks for the same image: {index[key].name} and {path.name}", mask_dir
            )
        index[key] = path
    masks: list[Path | None] = []
    for image in images:
        mask = index.pop(_mask_key(image.relative_to(image_dir), ""), None)
        if mask is None and mask_required:
            raise AdpsError(
                f"defective image has no mask (looked for '{image.stem}{mask_suffix}.*' in "
                f"{mask_dir}); pass mask_required=False to use it for image-level metrics only",
                image,
            )
        masks.append(mask)
    if index:
        example = sorted(index.values())[0].name
        warnings.warn(
            f"{len(index)} mask(s) in {mask_dir} have no matching image and are ignored "
            f"(e.g. {example})",
            OrphanMaskWarning,
            stacklevel=2,
        )
    return masks


def build_records(
    image_dir: str | Path,
    label: int,
    mask_dir: str | Path | None = None,
    mask_suffix: str = "",
    mask_required: bool = True,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    recursive: bool = False,
) -> list[Record]:
    """Records for one folder of images sharing a label; defective ones get their masks."""
    images = find_images(image_dir, extensions, recursive)
    if label == 0:
        return [Record(p, None, 0) for p in images]
    if mask_dir is None:
        if mask_required:
            raise AdpsError(
                "defective images but no mask directory; set mask_dir or mask_required=False",
                image_dir,
            )
        return [Record(p, None, 1) for p in images]
    masks = match_masks(
        images, image_dir, mask_dir, mask_suffix, mask_required, extensions, recursive
    )
    return [Record(p, m, 1) for p, m in zip(images, masks, strict=True)]


def _records_labelled_by_mask(images: Sequence[Path], masks: Sequence[Path | None]) -> list[Record]:
    """Kolektor style: the label is 1 iff the mask has a non-zero pixel."""
    return [
        Record(p, m, int(m is not None and bool(read_mask(m).any())))
        for p, m in zip(images, masks, strict=True)
    ]


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise AdpsError(f"split must be one of {', '.join(allowed)}, got {split!r}")


# --------------------------------------------------------------------------- concrete datasets


class MVTecAD(AnomalyDataset):
    """MVTec AD layout: ``<category>/train/good``, ``test/<defect>``,
    ``ground_truth/<defect>/NNN_mask.png``. Test order: ``good`` first, then defects by name;
    ``"all"`` is train then test (what a split file chooses from).

    ``mask_suffix`` covers MVTec-like sets whose masks share the image's name (``""``)."""

    def __init__(
        self,
        root: str | Path,
        category: str,
        split: str = "train",
        size: int | Sequence[int] | None = 256,
        mask_required: bool = True,
        mask_suffix: str = "_mask",
    ):
        _check_split(split, ("train", "test", "all"))
        base = Path(root) / category
        _require_dir(Path(root), "dataset root")
        _require_dir(base, f"category {category!r}")
        records = []
        if split in ("train", "all"):
            records += build_records(base / "train" / "good", 0)
        if split in ("test", "all"):
            test = base / "test"
            _require_dir(test)
            kinds = sorted(
                (d.name for d in test.iterdir() if d.is_dir()), key=lambda n: (n != "good", n)
            )
            if not kinds:
                raise AdpsError("no sub-folders (good, <defect>...) in the test directory", test)
            for kind in kinds:
                gt_dir = base / "ground_truth" / kind
                gt = gt_dir if mask_required or gt_dir.is_dir() else None
                label = 0 if kind == "good" else 1
                records += build_records(test / kind, label, gt, mask_suffix, mask_required)
        super().__init__(records, size)
        self.category = category
        self.split = split


class Folder(AnomalyDataset):
    """A generic dataset configured by directories and a mask-naming rule.

    ``split="train"`` uses ``train_dir`` (normal images); ``"test"`` uses ``normal_test_dir``
    (label 0) and ``abnormal_test_dir`` (label 1, masks from ``mask_dir``); ``"all"`` whichever
    of them are given. Relative directories are taken relative to ``root``. Masks are matched by
    the image's stem + ``mask_suffix`` whatever their extension (``x.jpg`` -> ``x.png`` or
    ``x_mask.png``).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        train_dir: str | Path | None = None,
        normal_test_dir: str | Path | None = None,
        abnormal_test_dir: str | Path | None = None,
        mask_dir: str | Path | None = None,
        mask_suffix: str = "",
        mask_required: bool = True,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
        split: str = "train",
        recursive: bool = False,
        size: int | Sequence[int] | None = 256,
    ):
        _check_split(split, ("train", "test", "all"))
        base = Path(root) if root is not None else Path()
        if root is not None:
            _require_dir(base, "dataset root")
        if split == "train" and train_dir is None:
            raise AdpsError("Folder dataset: split='train' needs train_dir")
        if split == "test" and normal_test_dir is None and abnormal_test_dir is None:
            raise AdpsError(
                "Folder dataset: split='test' needs normal_test_dir and/or abnormal_test_dir"
            )

        def resolve(d: str | Path) -> Path:
            return base / d

        extensions = _extensions(extensions)
        records: list[Record] = []
        if split != "test" and train_dir is not None:
            records += build_records(
                resolve(train_dir), 0, extensions=extensions, recursive=recursive
            )
        if split != "train" and normal_test_dir is not None:
            records += build_records(
                resolve(normal_test_dir), 0, extensions=extensions, recursive=recursive
            )
        if split != "train" and abnormal_test_dir is not None:
            records += build_records(
                resolve(abnormal_test_dir),
                1,
                None if mask_dir is None else resolve(mask_dir),
                mask_suffix,
                mask_required,
                extensions,
                recursive,
            )
        super().__init__(records, size)
        self.split = split


class KolektorSDD2(AnomalyDataset):
    """Kolektor SDD2: ``root/{train,test}/<id>.png`` with ``<id>_GT.png`` beside it.

    A sample is anomalous iff its GT has a non-zero pixel; the train split keeps only the
    normal images of ``train/`` (the one-class setting), the test split all of ``test/``, and
    ``"all"`` every image of both.
    """

    def __init__(
        self, root: str | Path, split: str = "train", size: int | Sequence[int] | None = 256
    ):
        _check_split(split, ("train", "test", "all"))
        _require_dir(Path(root), "dataset root")
        records = []
        for part in ("train", "test") if split == "all" else (split,):
            folder = Path(root) / part
            images = find_images(folder, exclude_stem_suffix="_GT")
            records += _records_labelled_by_mask(images, match_masks(images, folder, folder, "_GT"))
        if split == "train":
            records = [r for r in records if r.label == 0]
            if not records:
                raise AdpsError("no normal (all-zero GT) images in the training split", folder)
        super().__init__(records, size)
        self.split = split


class KolektorSDD(AnomalyDataset):
    """Kolektor SDD (v1): ``root/kosNN/PartN.jpg`` with ``PartN_label.bmp`` beside it.

    Each ``kosNN`` folder holds the images of one physical item (a commutator). The set comes
    with no split, so adps splits by item, never by image: images of one item look alike, and an
    item on both sides would let the test see surfaces it trained on. The rule reads the item's
    number from its folder name: odd items (kos01, kos03...) train, even items (kos02, kos04...)
    test; 25 items each on the full set (kos01..kos50). It needs nothing but the folder's own
    name, so it cannot change with which other folders exist and anyone can apply it by hand,
    and whatever the numbering follows (perhaps the order the items were imaged in) falls on
    both sides alike.

    ``"train"`` is the normal images (label all zero) of the odd items; ``"test"`` every image
    of the even items; ``"all"`` every image. The defective images of odd items are in neither
    split: training is one-class, and testing them would put a training item on both sides. A
    published protocol (e.g. the 3-fold cross-validation of Tabernik et al., 2019) can be pinned
    instead with a split file (``DataSpec.split_file``, ``--split-file``).
    """

    def __init__(
        self, root: str | Path, split: str = "all", size: int | Sequence[int] | None = 256
    ):
        _check_split(split, ("all", "train", "test"))
        root = Path(root)
        _require_dir(root, "dataset root")
        images = find_images(root, recursive=True, exclude_stem_suffix="_label")
        pairs = list(
            zip(images, match_masks(images, root, root, "_label", recursive=True), strict=True)
        )
        if split != "all":
            side = 1 if split == "train" else 0
            pairs = [(i, m) for i, m in pairs if _ksdd_item(root, i) % 2 == side]
        records = _records_labelled_by_mask([i for i, _ in pairs], [m for _, m in pairs])
        if split == "train":
            records = [r for r in records if r.label == 0]
        if not records:
            raise AdpsError(
                f"no images for split {split!r} (train: the normal images of the odd "
                "kosNN item folders; test: all images of the even ones)",
                root,
            )
        super().__init__(records, size)
        self.split = split


def _ksdd_item(root: Path, image: Path) -> int:
    """The item number of a KSDD image: the trailing digits of its folder under ``root``."""
    parts = image.relative_to(root).parts
    number = re.search(r"\d+$", parts[0]) if len(parts) > 1 else None
    if number is None:
        raise AdpsError(
            "a KolektorSDD image must lie in an item folder named like kos01 (its "
            "number decides the train/test split)",
            image,
        )
    return int(number.group())
