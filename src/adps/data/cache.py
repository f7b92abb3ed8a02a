"""Decode once, train many times: an on-disk cache of resized samples.

Decoding PNG/JPEG and resizing dominates a small model's epoch, so training decodes each
sample exactly once: :func:`load_tensor_stack` decodes the whole dataset into one uint8 stack
(optionally stored on disk) that training moves to the GPU once. Original-resolution masks are
not written to disk; evaluation reads them cheaply with :meth:`AnomalyDataset.original_mask`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from adps.data.datasets import AnomalyDataset, Decoded
from adps.errors import AdpsError
from adps.fileio import atomic_save

__all__ = ["cache_key", "load_tensor_stack"]

_CACHE_VERSION = 1


def _stat(path: Path) -> list[int]:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise AdpsError("file not found", path) from exc
    return [st.st_mtime_ns, st.st_size]


def cache_key(dataset: AnomalyDataset) -> str:
    """Hash of everything the stack depends on: dataset type, size, files, mtimes, labels.

    Any edited, added or removed file changes the key, so a stale cache is never read.
    """
    parts: list[object] = [_CACHE_VERSION, type(dataset).__name__, dataset.size]
    for rec in dataset.records:
        mask = [str(rec.mask.resolve()), *_stat(rec.mask)] if rec.mask is not None else None
        parts.append([str(rec.image.resolve()), *_stat(rec.image), mask, rec.label])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _cache_file(dataset: AnomalyDataset, cache_dir: Path) -> Path:
    size = "orig" if dataset.size is None else f"{dataset.size[0]}x{dataset.size[1]}"
    return cache_dir / f"{type(dataset).__name__}_{size}_{cache_key(dataset)[:24]}.pt"


def _load_cached(path: Path, n: int) -> tuple[Tensor, Tensor, Tensor] | None:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        images, masks, labels = data["images"], data["masks"], data["labels"]
    except Exception as exc:  # a damaged cache is ours to rebuild, not the user's problem
        warnings.warn(f"ignoring unreadable cache file {path} ({exc}); rebuilding it", stacklevel=3)
        return None
    if len(images) != n or len(masks) != n or len(labels) != n:
        warnings.warn(f"ignoring cache file {path} with wrong length; rebuilding it", stacklevel=3)
        return None
    return images, masks, labels


def load_tensor_stack(
    dataset: AnomalyDataset,
    num_workers: int | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Decode every sample once into ``(images uint8 (N,3,H,W), masks uint8 (N,1,H,W),
    labels int64 (N,))``.

    ``num_workers > 0`` (default: one per CPU core, at most 8) decodes in a thread pool (PIL and
    torch release the GIL while decoding/resizing, so threads scale without process start-up or
    pickling). With ``cache_dir`` the stack is read from / written to one ``.pt`` file per dataset
    and size. All images must share one size, so ``size=None`` only works for uniform datasets.
    """
    n = len(dataset)
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    labels = torch.tensor([r.label for r in dataset.records], dtype=torch.int64)
    target: Path | None = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        target = _cache_file(dataset, cache_dir)
        if target.exists():
            cached = _load_cached(target, n)
            if cached is not None:
                return cached

    first = dataset.decode(0)
    images = torch.empty((n, *first.image.shape), dtype=torch.uint8)
    masks = torch.empty((n, *first.mask.shape), dtype=torch.uint8)

    def put(i: int, d: Decoded) -> None:
        if d.image.shape != first.image.shape:
            raise AdpsError(
                f"image size {tuple(d.image.shape[1:])} differs from "
                f"{tuple(first.image.shape[1:])}; "
                "set a fixed size to stack images of different sizes",
                dataset.records[i].image,
            )
        images[i], masks[i] = d.image, d.mask

    with tqdm(total=n, desc="decoding images", unit="img", disable=not progress) as bar:
        put(0, first)
        bar.update(1)
        rest = range(1, n)
        if num_workers > 0 and n > 1:
            pool = ThreadPoolExecutor(max_workers=num_workers)
            try:
                for i, d in zip(rest, pool.map(dataset.decode, rest), strict=True):
                    put(i, d)
                    bar.update(1)
            finally:
                pool.shutdown(cancel_futures=True)  # on error, do not decode the rest
        else:
            for i in rest:
                put(i, dataset.decode(i))
                bar.update(1)

    if target is not None:
        atomic_save({"images": images, "masks": masks, "labels": labels}, target)
    return images, masks, labels
