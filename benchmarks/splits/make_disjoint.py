"""Writes a split file (``adps ... --split-file``) for an MVTec-like category whose published
test split repeats training images: train = ``train/good``, test = ``test/*`` without the
files whose bytes equal a training file's (the overlap ``adps test`` refuses).

The battery-weld set is such a set: 7 of its 35 normal test images are copies of training
images. ``battery_weld.json`` beside this file is its output:

    python benchmarks/splits/make_disjoint.py ../shared/datasets/battery_weld/welding \
        > benchmarks/splits/battery_weld.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from adps.data.datasets import find_images
from adps.data.fingerprint import file_digests

if __name__ == "__main__":
    root = Path(sys.argv[1])
    train = find_images(root / "train" / "good")
    test = find_images(root / "test", recursive=True)
    trained = set(file_digests(train))
    kept = [p for p, d in zip(test, file_digests(test), strict=True) if d not in trained]
    dropped = sorted(p.relative_to(root).as_posix() for p in set(test) - set(kept))
    print(
        f"{len(dropped)} of {len(test)} test images are training images: {dropped}", file=sys.stderr
    )
    print(
        json.dumps(
            {
                "train": [p.relative_to(root).as_posix() for p in train],
                "test": [p.relative_to(root).as_posix() for p in kept],
            },
            indent=1,
        )
    )
