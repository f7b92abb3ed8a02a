"""The decode stage of :mod:`adps.ray.scoring`: a Ray task that turns a chunk of file paths
into raw pixels.

A module of its own because a Ray worker imports the module that a task's function lives in:
this one needs only numpy, PIL and pyarrow, so the decode workers start in a fraction of a
second instead of spending seconds on importing torch, on the same cores that the scoring
actors are starting on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adps.data.decode import read_image
from adps.errors import AdpsError

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]


def decode_chunk(chunk: pa.Table, max_pixels: int | None) -> pa.Table:
    """Ray task: decode one chunk's files to raw RGB bytes; an unreadable file gives its reason
    (the local engine's wording) instead of pixels."""
    import pyarrow as pa

    columns: dict[str, list] = {
        k: [] for k in ("index", "path", "name", "height", "width", "pixels", "reason")
    }
    for row in chunk.to_pylist():
        for offset, (path, file, name) in enumerate(
            zip(row["paths"], row["files"], row["names"], strict=True)
        ):
            try:
                image = read_image(file, max_pixels)
                height, width, pixels, reason = *image.shape[:2], image.tobytes(), None
            except AdpsError as exc:
                height, width, pixels, reason = 0, 0, b"", str(exc).removeprefix(f"{file}: ")
            for key, value in zip(
                columns,
                (row["start"] + offset, path, name, height, width, pixels, reason),
                strict=True,
            ):
                columns[key].append(value)
    types = {"pixels": pa.large_binary(), "reason": pa.string()}
    return pa.table({k: pa.array(v, types.get(k)) for k, v in columns.items()})
