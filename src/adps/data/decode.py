"""Decoding image and mask files to numpy arrays, with the checks every reader in adps shares.

A module of its own, with numpy and PIL as its only dependencies, so that a process that only
decodes (a Ray decode task, a service's upload handler) does not pay for importing torch.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from adps.errors import AdpsError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# 1 G pixels (3 GB as RGB): far above any camera or line-scan frame we know of, low enough that a
# forged header cannot make a process allocate without bound.
DEFAULT_MAX_PIXELS = 1_000_000_000

# PIL's decompression-bomb guard runs inside Image.open, before any caller sees the size, and
# refuses a legitimate 200 MP line-scan frame as a "decompression bomb DOS attack"; it has no
# per-call switch, only this process-wide one. Every decode in adps goes through _decode, which
# checks the header's size against the caller's max_pixels (the --max-pixels of predict and
# serve) before any pixel is decoded, so that limit replaces PIL's, with words that name it.
Image.MAX_IMAGE_PIXELS = None

# What PIL raises for unreadable, corrupt or truncated files (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
)


class OverPixelLimit(AdpsError):
    """An image larger than the caller's ``max_pixels`` (a type of its own: a server answers
    it with 413, not 400)."""


# --------------------------------------------------------------------------- file decoding


def _decode(
    source: Path | io.BytesIO,
    convert: Callable[[Image.Image], np.ndarray],
    name: str | Path | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Open, check the size against ``max_pixels``, fully decode and convert ``source``; every
    failure becomes an AdpsError naming it (or ``name``)."""
    name = str(source) if name is None else name  # what errors name (AdpsError takes a str)
    try:
        with Image.open(source) as img:
            pixels = img.width * img.height
            if max_pixels is not None and pixels > max_pixels:
                raise OverPixelLimit(
                    f"{img.width} x {img.height} = {pixels} pixels is over the "
                    f"limit of {max_pixels} (--max-pixels)",
                    name,
                )
            img.load()  # forces full decoding so truncation is detected here, not later
            return convert(img)
    except AdpsError:
        raise
    except FileNotFoundError as exc:
        raise AdpsError("file not found", name) from exc
    except Image.UnidentifiedImageError as exc:
        empty = (
            source.getbuffer().nbytes if isinstance(source, io.BytesIO) else source.stat().st_size
        ) == 0
        raise AdpsError(
            "empty file: no image data"
            if empty
            else "not an image file (or an unsupported image format)",
            name,
        ) from exc
    except _DECODE_ERRORS as exc:
        raise AdpsError(f"corrupt or truncated image ({exc})", name) from exc


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        wide = np.asarray(img).astype(np.int64)
        grey = ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        raise AdpsError(
            "floating-point images are not supported (convert to 8 or 16 bit)",
            getattr(img, "filename", None),
        )
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return np.array(img.convert("RGB"), dtype=np.uint8)  # writable copy for torch.from_numpy


def _to_foreground(img: Image.Image) -> np.ndarray:
    if img.mode in ("P", "PA"):
        img = img.convert("RGB")  # palette index 0 need not be black; compare colours instead
    arr = np.asarray(img)
    if img.mode in ("LA", "RGBA"):
        arr = arr[..., :-1]  # alpha says nothing about defects
    fg = arr != 0
    return fg.any(axis=-1) if fg.ndim == 3 else fg


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image to uint8 RGB (H, W, 3).

    Grey images are replicated to three channels (backbones expect RGB), alpha is dropped and
    palettes are expanded. 16-bit grey is scaled from the full 0..65535 range to 0..255.
    ``max_pixels`` (None = no limit) is checked from the header, before the pixels are decoded,
    so an oversized image costs no memory.
    """
    return _decode(Path(path), _to_rgb, max_pixels=max_pixels)


def read_image_bytes(
    data: bytes, name: str | None = "upload", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode an encoded image held in memory (an upload) like :func:`read_image`; errors
    name ``name``."""
    return _decode(io.BytesIO(data), _to_rgb, name or "upload", max_pixels)


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a mask to a bool (H, W) array: any non-zero colour channel is foreground."""
    return _decode(Path(path), _to_foreground, max_pixels=DEFAULT_MAX_PIXELS)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image from its header only (cheap; no pixel decoding)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError as exc:
        raise AdpsError("file not found", path) from exc
    except _DECODE_ERRORS as exc:
        raise AdpsError(f"not a readable image ({exc})", path) from exc
