"""A high-resolution surface in MVTec layout: 2048 x 2048 brushed metal with 8-pixel pits.

Normal images are :func:`adps.data.procedural.render_large_surface`; each defective one holds
``--spots`` pits of ``--spot`` pixels (:func:`draw_spots`) with their masks. Resized to 256 px,
a pit is one pixel; at native resolution a 256-px tile sees it whole.

    python benchmarks/highres/make_data.py --out runs/highres/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from adps.data.procedural import draw_spots, render_large_surface


def save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8)).save(path, compress_level=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/highres/data"))
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--spot", type=int, default=8)
    p.add_argument("--spots", type=int, default=12, help="pits per defective image")
    p.add_argument("--train", type=int, default=8)
    p.add_argument("--test-good", type=int, default=4)
    p.add_argument("--test-defect", type=int, default=8)
    args = p.parse_args()
    root = args.out / "surface_hr"
    for split, n, stream in (("train/good", args.train, 0), ("test/good", args.test_good, 1)):
        for i in range(n):
            rng = np.random.default_rng([stream, i])
            save(render_large_surface(args.size, rng), root / split / f"{i:03d}.png")
    for i in range(args.test_defect):
        rng = np.random.default_rng([2, i])
        image, mask = draw_spots(render_large_surface(args.size, rng), args.spots, args.spot, rng)
        save(image, root / "test/pits" / f"{i:03d}.png")
        save(mask * 255.0, root / "ground_truth/pits" / f"{i:03d}_mask.png")
    print(f"wrote {root}")


if __name__ == "__main__":
    main()
