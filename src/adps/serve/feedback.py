"""The operator's verdict: request images kept under their ids, verdicts filed where the
commands that learn from them look.

With ``--keep-images DIR`` the service writes each request's image to ``DIR/images/<id>.<ext>``
(the bytes it received for PNG, JPEG, BMP and TIFF; any other format as the PNG of what the model
saw). The store is bounded by a count and by bytes: the oldest images go first. A verdict
(``POST /v1/feedback``) copies the image into ``DIR/feedback``::

    feedback/normal/<id>.<ext>                      adps update --normal-dir DIR/feedback/normal
    feedback/defect/test/defect/<id>.<ext>          adps calibrate --fit-fusion
    feedback/defect/ground_truth/defect/<id>_mask.png   (--defect-dir, --mask-dir)
    feedback/defect_unmasked/<id>.<ext>             defects without a mask (image level)
    feedback/verdicts.jsonl                         one line per verdict

A later verdict on the same id replaces the earlier one (its files move). Verdicts are the
operator's labels: the store's bound never drops them. Every file is written atomically (a temp
file renamed over the target). Names on disk are ids the service made (:func:`new_id`), never a
client's file name; :func:`client_name` is what an answer may echo of one.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adps.fileio import atomic_write

ID_PATTERN = re.compile(r"^[0-9]{8}T[0-9]{9}-[0-9a-f]{12}$")  # new_id's shape
KEPT_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif"}
VERDICTS = ("normal", "defect")
NORMAL, DEFECT_IMAGES, DEFECT_MASKS, UNMASKED = (
    Path("normal"),
    Path("defect/test/defect"),
    Path("defect/ground_truth/defect"),
    Path("defect_unmasked"),
)


class FeedbackError(Exception):
    """A verdict refused: ``status`` (404 unknown id, 422 a bad verdict or mask) and why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def new_id(now: float | None = None) -> str:
    """``YYYYMMDDTHHMMSSmmm-<12 hex>``: UTC time to the millisecond (ids sort by age) and 48
    random bits."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"{stamp}{int(now * 1000) % 1000:03d}-{secrets.token_hex(6)}"


def client_name(name: str | None) -> str | None:
    """What an answer may echo of a client's file name: its last path component, printable
    characters only, at most 255 of them (``../../../etc/passwd`` -> ``passwd``). It names
    the file in answers and errors; it never becomes a path."""
    if not name:
        return None
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:255].strip()
    return None if base in ("", ".", "..") else base


def _extension(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return KEPT_FORMATS.get(img.format or "")
    except Exception:
        return None


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class ImageStore:
    """Request images under their ids in ``root``, at most ``max_images`` of them and
    ``max_bytes`` in all, the oldest dropped first (thread-safe)."""

    def __init__(self, root: str | Path, max_images: int, max_bytes: int):
        if max_images < 1 or max_bytes < 1:
            raise ValueError("the image store needs max_images >= 1 and max_bytes >= 1")
        self.root, self.max_images, self.max_bytes = Path(root), max_images, max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.index: OrderedDict[str, tuple[Path, int]] = OrderedDict()  # oldest first
        self.bytes = 0
        self.dropped = 0
        for stale in self.root.glob(".*.tmp"):  # a write a crash interrupted
            stale.unlink(missing_ok=True)
        found = [p for p in self.root.iterdir() if p.is_file() and ID_PATTERN.match(p.stem)]
        for path in sorted(found, key=lambda p: p.stem):  # ids sort by age
            size = path.stat().st_size
            self.index[path.stem] = (path, size)
            self.bytes += size
        with self.lock:
            self._bound()

    def __len__(self) -> int:
        return len(self.index)

    def keep(self, ident: str, data: bytes, image: np.ndarray) -> Path | None:
        """Writes one request's image (``data`` as received when its format is one adps
        reads, else the PNG of ``image``); None when it alone is over ``max_bytes``."""
        if not ID_PATTERN.match(ident):
            raise ValueError(f"not an image id: {ident!r}")
        ext = _extension(data)
        if ext is None:
            data, ext = _png(image), ".png"
        if len(data) > self.max_bytes:
            return None
        path = _write(self.root / f"{ident}{ext}", data)
        with self.lock:
            self.index[ident] = (path, len(data))
            self.bytes += len(data)
            self._bound()
            return path if ident in self.index else None

    def find(self, ident: str) -> Path | None:
        with self.lock:
            entry = self.index.get(ident)
        return None if entry is None else entry[0]

    def _bound(self) -> None:
        while self.index and (len(self.index) > self.max_images or self.bytes > self.max_bytes):
            _, (path, size) = self.index.popitem(last=False)
            path.unlink(missing_ok=True)
            self.bytes -= size
            self.dropped += 1

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {
                "images": len(self.index),
                "bytes": self.bytes,
                "max_images": self.max_images,
                "max_bytes": self.max_bytes,
                "dropped": self.dropped,
            }


class Feedback:
    """Kept images (``root/images``) and the operator's verdicts on them (``root/feedback``)."""

    def __init__(self, root: str | Path, max_images: int, max_bytes: int):
        self.root = Path(root)
        self.images = ImageStore(self.root / "images", max_images, max_bytes)
        self.folder = self.root / "feedback"
        self.lock = threading.Lock()

    def keep(self, ident: str, data: bytes, image: np.ndarray) -> bool:
        return self.images.keep(ident, data, image) is not None

    def _filed(self, ident: str) -> dict[str, Path]:
        """This id's files already filed by an earlier verdict, by folder."""
        found = {}
        for folder, pattern in (
            (NORMAL, f"{ident}.*"),
            (DEFECT_IMAGES, f"{ident}.*"),
            (DEFECT_MASKS, f"{ident}_mask.png"),
            (UNMASKED, f"{ident}.*"),
        ):
            for path in (self.folder / folder).glob(pattern):
                if not path.name.startswith("."):
                    found[folder.as_posix()] = path
        return found

    def record(self, ident: str, verdict: str, mask_png: bytes | None = None) -> dict[str, Any]:
        """Files ``verdict`` on the image kept under ``ident``; what was written, relative to
        the store's folder. :class:`FeedbackError` when the id or the verdict is refused."""
        if verdict not in VERDICTS:
            raise FeedbackError(422, f"verdict must be 'normal' or 'defect', got {verdict[:40]!r}")
        if not ID_PATTERN.match(ident):
            raise FeedbackError(
                404,
                f"unknown image id (ids are the 'id' of /v1/predict's answers, e.g. {new_id(0)})",
            )
        if mask_png is not None and verdict != "defect":
            raise FeedbackError(422, "a mask goes with a 'defect' verdict only")
        with self.lock:
            filed = self._filed(ident)
            source = self.images.find(ident)
            if source is None or not source.is_file():
                source = next((p for k, p in filed.items() if k != DEFECT_MASKS.as_posix()), None)
            if source is None:
                raise FeedbackError(
                    404,
                    f"no image kept under id {ident} (never seen, or dropped from the store, "
                    f"which keeps the newest {self.images.max_images} images and "
                    f"{self.images.max_bytes} bytes at most)",
                )
            data = source.read_bytes()
            mask = None if mask_png is None else _mask(mask_png, data)
            targets: list[tuple[Path, bytes]]
            if verdict == "normal":
                targets = [(NORMAL / f"{ident}{source.suffix}", data)]
            elif mask is None:
                targets = [(UNMASKED / f"{ident}{source.suffix}", data)]
            else:
                targets = [
                    (DEFECT_IMAGES / f"{ident}{source.suffix}", data),
                    (DEFECT_MASKS / f"{ident}_mask.png", mask),
                ]
            written = []
            for relative, content in targets:
                written.append(_write(self.folder / relative, content))
            for path in filed.values():  # an earlier verdict's files move, not multiply
                if path not in written:
                    path.unlink(missing_ok=True)
            previous = _verdict_of(filed)
            line = {
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "id": ident,
                "verdict": verdict,
                "mask": mask is not None,
                "files": [p.relative_to(self.root).as_posix() for p in written],
                "replaced": previous,
            }
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / "verdicts.jsonl", "a", encoding="utf-8") as log:
                log.write(json.dumps(line) + "\n")  # one write per line: lines never interleave
            return line

    def describe(self) -> dict[str, Any]:
        counts = {
            name: sum(1 for p in (self.folder / folder).glob("*") if not p.name.startswith("."))
            if (self.folder / folder).is_dir()
            else 0
            for name, folder in (
                ("normal", NORMAL),
                ("defect_with_mask", DEFECT_IMAGES),
                ("defect_unmasked", UNMASKED),
            )
        }
        return {"kept": self.images.describe(), "verdicts": counts}


def _write(path: Path, content: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(content))


def _verdict_of(filed: dict[str, Path]) -> str | None:
    if NORMAL.as_posix() in filed:
        return "normal"
    if filed:
        return "defect"
    return None


def _mask(mask_png: bytes, image: bytes) -> bytes:
    """The mask as a 0/255 PNG at the image's size (any non-zero pixel is defect)."""
    try:
        with Image.open(io.BytesIO(image)) as img:
            size = img.size
        with Image.open(io.BytesIO(mask_png)) as mask:
            if mask.format != "PNG":
                raise FeedbackError(422, f"the mask must be a PNG, got {mask.format or 'unknown'}")
            if mask.size != size:
                raise FeedbackError(
                    422,
                    f"the mask is {mask.size[0]} x {mask.size[1]} pixels, the image "
                    f"{size[0]} x {size[1]}",
                )
            mask.load()
            # a palette's index 0 need not be black: compare colours instead
            pixels = mask.convert("RGB") if mask.mode in ("P", "PA") else mask
            mode, array = pixels.mode, np.asarray(pixels)
    except FeedbackError:
        raise
    except Exception as exc:
        raise FeedbackError(422, f"the mask is not a readable PNG ({type(exc).__name__})") from None
    if mode in ("LA", "RGBA"):
        array = array[..., :-1]
    foreground = array != 0
    if foreground.ndim == 3:
        foreground = foreground.any(axis=-1)
    return _png(foreground.astype(np.uint8) * 255)


__all__ = [
    "ID_PATTERN",
    "VERDICTS",
    "Feedback",
    "FeedbackError",
    "ImageStore",
    "client_name",
    "new_id",
]
