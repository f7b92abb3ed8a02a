"""Tests for adps.data.procedural: the demo's procedural surface dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adps.data import procedural
from adps.data.datasets import MVTecAD
from adps.data.procedural import (
    DEFECT_KINDS,
    MAX_DEFECT_AREA,
    MIN_DEFECT_AREA,
    draw_defect,
    make_demo_dataset,
    render_surface,
)
from adps.errors import AdpsError

SMALL = {"size": 64, "n_train": 6, "n_test_good": 3, "n_test_defect": 7}


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), seed=3, **SMALL)


def test_layout_and_counts(small: Path) -> None:
    assert small.name == "surface"
    assert len(_pngs(small / "train" / "good")) == 6
    assert len(_pngs(small / "test" / "good")) == 3
    # 7 defects over 3 kinds: 3, 2, 2 in DEFECT_KINDS order.
    for kind, n in zip(DEFECT_KINDS, (3, 2, 2), strict=True):
        assert [p.name for p in _pngs(small / "test" / kind)] == [f"{i:03d}.png" for i in range(n)]
        assert [p.name for p in _pngs(small / "ground_truth" / kind)] == [
            f"{i:03d}_mask.png" for i in range(n)
        ]
    assert sorted(d.name for d in (small / "test").iterdir()) == sorted(("good", *DEFECT_KINDS))
    assert sorted(d.name for d in (small / "ground_truth").iterdir()) == sorted(
        DEFECT_KINDS
    )  # no good masks
    manifest = json.loads((small / "manifest.json").read_text())
    assert manifest["params"] == {**SMALL, "seed": 3}
    assert manifest["counts"]["train/good"] == 6
    # No temporary folders are left beside the dataset.
    assert [p.name for p in small.parent.iterdir()] == ["surface"]


def test_images_and_masks(small: Path) -> None:
    for sub in ("train/good", "test/good"):
        for p in _pngs(small / sub):
            img = _png(p)
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8
            assert img.std() > 3  # textured, not flat
    for kind in DEFECT_KINDS:
        for p in _pngs(small / "test" / kind):
            img = _png(p)
            mask = _png(small / "ground_truth" / kind / f"{p.stem}_mask.png")
            assert img.shape == (64, 64, 3)
            assert mask.shape == (64, 64) and mask.dtype == np.uint8
            assert set(np.unique(mask).tolist()) == {0, 255}
            assert MIN_DEFECT_AREA <= (mask > 0).mean() <= MAX_DEFECT_AREA


def test_loads_with_mvtec(small: Path) -> None:
    root = small.parent
    train = MVTecAD(root, "surface", split="train", size=128)
    test = MVTecAD(root, "surface", split="test", size=128)
    assert len(train) == 6 and set(train.labels) == {0}
    assert len(test) == 10 and test.labels == [0] * 3 + [1] * 7
    sample = test.decode(len(test) - 1)
    assert test.records[-1].label == 1 and test.records[-1].has_mask
    assert tuple(sample.image.shape) == (3, 128, 128)
    assert tuple(sample.original_mask.shape) == (64, 64)
    assert sample.mask.sum() > 0 and sample.original_mask.sum() > 0
    assert test.decode(0).mask.sum() == 0


def test_determinism(tmp_path: Path) -> None:
    a = make_demo_dataset(tmp_path / "a", seed=5, **SMALL)
    b = make_demo_dataset(tmp_path / "b", seed=5, **SMALL)
    c = make_demo_dataset(tmp_path / "c", seed=6, **SMALL)
    for rel in (
        "train/good/002.png",
        "test/good/000.png",
        "test/dent/001.png",
        "ground_truth/stain/001_mask.png",
    ):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    for rel in ("train/good/002.png", "test/scratch/000.png"):
        assert (a / rel).read_bytes() != (c / rel).read_bytes()
    # Images do not depend on how many others were generated.
    d = make_demo_dataset(
        tmp_path / "d", seed=5, size=64, n_train=3, n_test_good=1, n_test_defect=3
    )
    assert (a / "train/good/002.png").read_bytes() == (d / "train/good/002.png").read_bytes()
    assert (a / "test/dent/000.png").read_bytes() == (d / "test/dent/000.png").read_bytes()


def test_idempotent_and_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = make_demo_dataset(tmp_path, seed=1, **SMALL)
    sample = target / "train/good/000.png"
    old = os.stat(sample).st_mtime_ns
    os.utime(sample, ns=(1, 1))  # any rewrite would change this

    calls: list[int] = []
    real = procedural._generate
    monkeypatch.setattr(
        procedural, "_generate", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )

    assert make_demo_dataset(tmp_path, seed=1, **SMALL) == target
    assert calls == [] and os.stat(sample).st_mtime_ns == 1

    # Different parameters regenerate (replacing the old dataset).
    make_demo_dataset(tmp_path, seed=1, **{**SMALL, "n_train": 4})
    assert calls == [1] and len(_pngs(target / "train" / "good")) == 4

    make_demo_dataset(tmp_path, seed=1, **SMALL)
    assert calls == [1, 1]
    os.utime(sample, ns=(1, 1))
    make_demo_dataset(tmp_path, seed=1, force=True, **SMALL)
    assert calls == [1, 1, 1] and os.stat(sample).st_mtime_ns != 1
    assert old != 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["surface"]


def test_incomplete_dataset_is_regenerated(tmp_path: Path) -> None:
    target = make_demo_dataset(tmp_path, seed=2, **SMALL)
    missing = target / "test/stain/001.png"
    missing.unlink()
    make_demo_dataset(tmp_path, seed=2, **SMALL)
    assert missing.is_file()


def test_interrupted_run_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(procedural, "_write_manifest", boom)
    with pytest.raises(KeyboardInterrupt):
        make_demo_dataset(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_foreign_folder_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "surface" / "train").mkdir(parents=True)
    with pytest.raises(AdpsError, match="not made by the demo generator"):
        make_demo_dataset(tmp_path, **SMALL)
    assert (tmp_path / "surface" / "train").is_dir()
    make_demo_dataset(tmp_path, force=True, **SMALL)
    assert (tmp_path / "surface" / "manifest.json").is_file()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 16},
        {"n_train": 0},
        {"n_test_good": -1},
        {"seed": -1},
        {"n_test_good": 0, "n_test_defect": 0},
    ],
)
def test_bad_parameters(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(AdpsError):
        make_demo_dataset(tmp_path, **{**SMALL, **kwargs})


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defects_change_the_image_inside_the_mask(kind: str) -> None:
    for i in range(4):
        rng = np.random.default_rng([11, i])
        base = render_surface(64, rng)
        image, mask = draw_defect(base, kind, rng)
        assert image.shape == base.shape and mask.shape == (64, 64) and mask.dtype == bool
        assert MIN_DEFECT_AREA <= mask.mean() <= MAX_DEFECT_AREA
        diff = np.abs(image - base).mean(axis=2)
        assert diff[mask].mean() > 15  # clearly visible
        assert diff[mask].mean() > 10 * diff[~mask].mean() + 1e-6


def test_saved_defects_differ_from_their_clean_surface(small: Path) -> None:
    """Each saved defect image is its clean surface (image i of kind k is drawn from
    ``default_rng([seed, 2 + k, i])``, surface first) plus a change concentrated in the mask."""
    for k, kind in enumerate(DEFECT_KINDS):
        for i, p in enumerate(_pngs(small / "test" / kind)):
            clean = np.rint(render_surface(64, np.random.default_rng([3, 2 + k, i])))
            diff = np.abs(_png(p).astype(np.float32) - clean).mean(axis=2)
            mask = _png(small / "ground_truth" / kind / f"{p.stem}_mask.png") > 0
            assert diff[mask].mean() > 15, (kind, p.name)
            assert diff[mask].mean() > 10 * diff[~mask].mean() + 1e-6, (kind, p.name)


def test_normal_images_vary_but_stay_alike(small: Path) -> None:
    normal = np.stack([_png(p).astype(np.float32) for p in _pngs(small / "train" / "good")])
    means = normal.mean(axis=(1, 2))  # (n, 3)
    assert np.ptp(means[:, 0]) > 0.5  # some brightness variation ...
    assert np.ptp(means, axis=0).max() < 40  # ... around one kind of surface
    assert not np.array_equal(normal[0], normal[1])


def test_default_dataset_matches_its_documented_layout(tmp_path: Path) -> None:
    """The defaults: 60 normal training images, 20 normal and 40 defective test images at
    128 px, the defects split 14/13/13 over the three kinds (the first kinds get the rest)."""
    target = make_demo_dataset(tmp_path)
    assert len(_pngs(target / "train" / "good")) == 60
    assert len(_pngs(target / "test" / "good")) == 20
    assert [len(_pngs(target / "test" / k)) for k in DEFECT_KINDS] == [14, 13, 13]
    assert Image.open(_pngs(target / "train" / "good")[0]).size == (128, 128)
