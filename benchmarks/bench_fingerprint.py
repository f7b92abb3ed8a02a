"""What the training fingerprint costs: hashing a dataset's files against decoding them.

Every `adps train` hashes its training images and every `adps test`, `report`, `calibrate` and
`benchmark` hashes its evaluation images (adps.data.fingerprint); this measures that next to
the decoding those commands do anyway, on the same files, one pass each, alternated so that
both meet the same page cache.

    python benchmarks/bench_fingerprint.py ../shared/datasets/mvtec_ad/bottle \
        ../shared/datasets/battery_weld/welding
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from adps.data.datasets import IMAGE_EXTENSIONS, read_image
from adps.data.fingerprint import file_digests


def timed(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print("| images | files | MB | hash s | decode s | hash / decode |\n|---|---|---|---|---|---|")
    for folder in args.folders:
        files = sorted(
            f
            for f in folder.rglob("*")
            if f.suffix.lower() in IMAGE_EXTENSIONS and "ground_truth" not in f.parts
        )
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        file_digests(files)  # warm the page cache for both
        hashing = timed(lambda: file_digests(files), args.repeats)
        decoding = timed(lambda: [read_image(f) for f in files], args.repeats)
        print(
            f"| {folder.name} | {len(files)} | {megabytes:.1f} | {hashing:.3f} | "
            f"{decoding:.3f} | {hashing / decoding:.1%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
