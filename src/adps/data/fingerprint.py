"""Which images a model learned from, so that no figure is ever computed on them by mistake.

A model that is scored on its own training images looks better than it is: with the memory
prior, a training image sits at distance about 0 from the memory. Every checkpoint therefore
carries a :class:`Fingerprint`, the content hashes of the images its weights and memory were
fitted on and of the normal images that set its threshold, and :func:`check_overlap` compares
the images of an evaluation or a calibration with it before any time is spent on them.

The hash is SHA-256 of the file's bytes (its first 128 bits), not of the decoded pixels:
- an exact copy is the overlap that happens in practice: one file in both the train and the
  test folder (battery weld's published split has 7), a test folder that is the training
  folder, a split file that lists an image twice;
- hashing bytes needs no decoding, so the check runs before evaluation starts, costs a fraction
  of the decoding that follows, and does not depend on the working size;
- it cannot collide for different files.
It does not see the same picture saved again in another format or quality; those differ in
their pixels as well, so a pixel hash would not see them either.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adps.errors import AdpsError
from adps.fileio import file_sha256

HASH = "sha256-128 of the file bytes"
_DIGEST_CHARS = 32  # 128 bits in hex
_WORKERS = 4  # hashlib releases the GIL on large buffers, so threads hash in parallel
_SHOWN = 5  # file names an overlap message shows


def file_digest(path: str | Path) -> str:
    """The content hash of one image file (see the module's docstring)."""
    try:
        return file_sha256(path)[:_DIGEST_CHARS]
    except OSError as exc:
        raise AdpsError(f"cannot be read ({exc.strerror or exc})", path) from exc


def file_digests(paths: Sequence[str | Path]) -> list[str]:
    """:func:`file_digest` of every path, in order."""
    if len(paths) < 2:
        return [file_digest(p) for p in paths]
    with ThreadPoolExecutor(_WORKERS) as pool:
        return list(pool.map(file_digest, paths))


def set_digest(digests: Iterable[str]) -> str:
    """One SHA-256 (hex) for a set of content hashes, whatever their order or repeats: which
    images a model update learned from, in a line of its lineage."""
    text = "\n".join(sorted(set(digests)))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """The content hashes of the images a model learned from, by what they were used for.

    ``trained``: the images the student, the PSM and the memory were fitted on.
    ``calibrated``: normal images that set the image threshold or the memory prior's
    statistics (the calibration hold-out, the images of `adps calibrate`).
    ``recorded`` is False where nothing was recorded (a checkpoint written before fingerprints
    existed, a model built in Python without the trainer): such a model cannot say what it
    learned from.
    """

    trained: frozenset[str] = frozenset()
    calibrated: frozenset[str] = frozenset()
    recorded: bool = False

    def with_calibrated(self, digests: Iterable[str]) -> Fingerprint:
        """The fingerprint after more normal images have set the threshold."""
        return self | Fingerprint(calibrated=frozenset(digests))

    def to_dict(self) -> dict[str, Any]:
        return {
            "hash": HASH,
            "trained": sorted(self.trained),
            "calibrated": sorted(self.calibrated),
        }

    def __or__(self, other: Fingerprint) -> Fingerprint:
        return Fingerprint(
            self.trained | other.trained,
            self.calibrated | other.calibrated,
            self.recorded or other.recorded,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Fingerprint:
        if data is None:
            return cls()
        return cls(
            frozenset(data.get("trained", ())), frozenset(data.get("calibrated", ())), recorded=True
        )


@dataclass(frozen=True)
class Overlap:
    """What an image set shares with a model's fingerprint: (path, "trained" or "calibrated")
    per shared image, in the set's order; empty when nothing is shared."""

    images: int  # images compared
    shared: tuple[tuple[str, str], ...] = ()
    checked: bool = True  # False: the model recorded nothing to compare with

    def __bool__(self) -> bool:
        return bool(self.shared)

    def summary(self) -> str:
        counts = {
            role: sum(r == role for _, r in self.shared) for role in ("trained", "calibrated")
        }
        how = ", ".join(
            f"{n} {'trained on' if role == 'trained' else 'set its threshold'}"
            for role, n in counts.items()
            if n
        )
        names = ", ".join(Path(p).name for p, _ in self.shared[:_SHOWN])
        more = f" and {len(self.shared) - _SHOWN} more" if len(self.shared) > _SHOWN else ""
        return (
            f"{len(self.shared)} of the {self.images} images were learned from by the "
            f"model ({how}): {names}{more}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "images": self.images,
            "shared": len(self.shared),
            "files": [{"path": p, "role": r} for p, r in self.shared],
        }


def find_overlap(
    fingerprint: Fingerprint,
    paths: Sequence[str | Path],
    roles: tuple[str, ...] = ("trained", "calibrated"),
) -> Overlap:
    """The images of ``paths`` whose content is in ``fingerprint`` under one of ``roles``."""
    sets = {"trained": fingerprint.trained, "calibrated": fingerprint.calibrated}
    shared = []
    for path, digest in zip(paths, file_digests(paths), strict=True):
        role = next((r for r in roles if digest in sets[r]), None)
        if role is not None:
            shared.append((str(path), role))
    return Overlap(len(paths), tuple(shared))


def check_overlap(
    fingerprint: Fingerprint,
    paths: Sequence[str | Path],
    what: str,
    allow: bool = False,
    roles: tuple[str, ...] = ("trained", "calibrated"),
) -> Overlap:
    """The overlap of ``paths`` (the images of an evaluation or a calibration, ``what`` says
    which) with what the model learned from; raises an :class:`AdpsError` naming the shared
    files unless ``allow``. The caller reports an allowed overlap beside its results. A model
    without a recorded fingerprint cannot be checked: that is warned about, not refused, so
    that older models keep working."""
    if not fingerprint.recorded:
        warnings.warn(
            f"{what}: the model records no training fingerprint (written before adps "
            "0.2, or built without the trainer), so whether it learned from these "
            "images cannot be checked",
            stacklevel=2,
        )
        return Overlap(len(paths), checked=False)
    overlap = find_overlap(fingerprint, paths, roles)
    if overlap and not allow:
        raise AdpsError(
            f"{what}: {overlap.summary()}. Figures on images a model learned from "
            "are inflated: use images it has not seen, or pass --allow-overlap to "
            "go on (the output then says so)"
        )
    return overlap


__all__ = [
    "HASH",
    "Fingerprint",
    "Overlap",
    "check_overlap",
    "file_digest",
    "file_digests",
    "find_overlap",
    "set_digest",
]
