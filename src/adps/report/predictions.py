"""What `adps predict` writes, whichever engine scored the images: per image a binary mask and
an overlay PNG (written as each prediction arrives, so memory stays at one batch), and per run
predictions.csv and predictions.json in input order.

One place for both engines (one process or torchrun, and Ray's actors), so that their outputs
are byte for byte the same. The tables are streamed: rows go to spool files as they come and
the two files are put in place atomically at the end, so a run of millions of images keeps no
row in memory and a crash leaves the previous tables intact.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from adps.fileio import atomic_write

if TYPE_CHECKING:
    from adps.engine.predict import Prediction

CSV_FIELDS = ["path", "score", "decision", "defect_area"]


def write_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


@dataclass(frozen=True)
class ImageOutputs:
    """Where the masks and overlays of a run go.

    ``out`` is the folder as the user named it: the tables name files under it, so relative
    stays relative. ``root`` is the same folder as this process reaches it (an absolute path in
    a Ray worker, whose working directory is not the driver's); None = ``out``. ``images``
    False writes no PNGs (``--no-images``).
    """

    out: Path
    images: bool = True
    root: Path | None = None

    def write(self, pred: Prediction, name: str, image: np.ndarray | None = None) -> dict:
        """The table row of one prediction, after writing its mask and overlay PNGs.

        ``image`` is the decoded uint8 (H, W, 3) input when the caller still holds it; without
        it the overlay decodes ``pred.path`` again (no pixel limit: the file passed it on its
        way in)."""
        from adps.data.decode import read_image
        from adps.report.plots import overlay

        row: dict[str, Any] = {"path": pred.path, **pred.summary()}
        if not self.images:
            return row
        file = Path(name).with_suffix(".png")
        root = self.root if self.root is not None else self.out
        write_png((pred.mask * 255).astype(np.uint8), root / "masks" / file)
        if image is None:
            image = read_image(str(pred.path), max_pixels=None)
        write_png(overlay(image, pred.anomaly_map, pred.mask), root / "overlays" / file)
        row.update(mask=str(self.out / "masks" / file), overlay=str(self.out / "overlays" / file))
        return row


@dataclass(frozen=True)
class RunInfo:
    """The head of predictions.json: which model decided, on what runtime, by which rule."""

    model: str
    runtime: str
    decision_rule: str
    pixel_threshold: float


class PredictionTables:
    """predictions.csv and predictions.json, written row by row in the order rows are added.

    The JSON is the same text as ``json.dumps(document, indent=2)`` of the whole document
    (tests/test_ray_scoring.py compares them), built from one row at a time. Use as a context
    manager: :meth:`finish` puts the files in place; leaving without it removes the spools.
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self._csv = self._spool()
        self._json = self._spool()
        self._writer = csv.DictWriter(
            self._csv, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n"
        )

    def _spool(self) -> IO[str]:
        return tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.out, prefix=".spool.")

    def add(self, row: dict) -> None:
        self._writer.writerow(row)
        text = json.dumps(row, indent=2).replace("\n", "\n    ")
        self._json.write(("    " if self.rows == 0 else ",\n    ") + text)
        self.rows += 1

    def finish(self, info: RunInfo, failures: list[tuple[str, str]]) -> None:
        head, tail = json.dumps(
            {
                "model": info.model,
                "runtime": info.runtime,
                "decision_rule": info.decision_rule,
                "pixel_threshold": info.pixel_threshold,
                "predictions": "\0",
                "failures": [{"path": p, "reason": r} for p, r in failures],
            },
            indent=2,
        ).split('"predictions": "\\u0000"', 1)

        def write_csv(handle: IO[bytes]) -> None:
            handle.write((",".join(CSV_FIELDS) + "\n").encode("utf-8"))
            _copy(self._csv, handle)

        def write_json(handle: IO[bytes]) -> None:
            handle.write((head + '"predictions": ').encode("utf-8"))
            if self.rows:
                handle.write(b"[\n")
                _copy(self._json, handle)
                handle.write(b"\n  ]")
            else:
                handle.write(b"[]")
            handle.write(tail.encode("utf-8"))

        atomic_write(self.out / "predictions.csv", write_csv)
        atomic_write(self.out / "predictions.json", write_json)

    def close(self) -> None:
        self._csv.close()
        self._json.close()

    def __enter__(self) -> PredictionTables:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copy(spool: IO[str], handle: IO[bytes]) -> None:
    spool.seek(0)
    while chunk := spool.read(1 << 20):
        handle.write(chunk.encode("utf-8"))
