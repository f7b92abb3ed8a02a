"""Atomic file writes: write a temp file in the target folder, then rename over the target.

A crash (or Ctrl-C) mid-write leaves the previous file intact instead of half a file, which
matters for checkpoints, caches, metrics and reports a user would hate to lose. Every file the
package writes goes through :func:`atomic_write`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())  # the rename must not reach the disk before the data
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex: which checkpoint a service answers with, and the
    key of its cached conversions."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
