"""Regenerate the battery-weld test subset beside this script from the full set in ../shared.

Standard library only. Usage (from anywhere):

    python tests/data/battery_weld/make_subset.py [SOURCE]

SOURCE defaults to <repo>/../shared/datasets/battery_weld (the folder holding LICENSE and
welding/). The subset is a deterministic choice by sorted file name (Python's ``sorted``, i.e.
code-point order); the files are copied byte for byte. welding/ here is replaced as a whole.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DEFAULT_SOURCE = (REPO / ".." / "shared" / "datasets" / "battery_weld").resolve()

N_TRAIN_GOOD = 12  # the first 12 of train/good
N_TEST_GOOD = 8  # the first 8 of test/good
N_TEST_DEFECTIVE = 12  # the first 12 of test/defective, each with its same-name mask
N_ORPHANS = 2  # the first 2 masks whose image is not in the full test/defective


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")


def main(argv: list[str]) -> int:
    source = Path(argv[1]).resolve() if len(argv) > 1 else DEFAULT_SOURCE
    src = source / "welding"
    if not src.is_dir():
        print(f"not found: {src}", file=sys.stderr)
        return 2
    defective = pngs(src / "test" / "defective")
    masks = pngs(src / "ground_truth" / "defective")
    chosen_defective = defective[:N_TEST_DEFECTIVE]
    missing = [n for n in chosen_defective if n not in masks]
    if missing:
        print(f"defective images without a mask: {missing}", file=sys.stderr)
        return 2
    orphans = [n for n in masks if n not in set(defective)][:N_ORPHANS]
    plan = {
        "train/good": pngs(src / "train" / "good")[:N_TRAIN_GOOD],
        "test/good": pngs(src / "test" / "good")[:N_TEST_GOOD],
        "test/defective": chosen_defective,
        "ground_truth/defective": chosen_defective + orphans,
    }
    out = HERE / "welding"
    if out.exists():
        shutil.rmtree(out)
    for sub, names in plan.items():
        (out / sub).mkdir(parents=True)
        for name in names:
            shutil.copyfile(src / sub / name, out / sub / name)
        print(f"{sub}: {len(names)} files")
    shutil.copyfile(source / "LICENSE", HERE / "LICENSE")
    print(f"orphan masks: {', '.join(orphans)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
