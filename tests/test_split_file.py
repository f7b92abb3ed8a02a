"""Split files: any layout, split by a list of images; every refusal names the file and the
problem. Expected records are written by hand from the tiny layouts built here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adps.cli.options import add_data_arguments, data_spec
from adps.data.spec import DataSpec
from adps.errors import AdpsError


def save(path: Path, value: int = 0, box: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((6, 8), value, np.uint8)
    if box:
        array[1:3, 2:5] = 255
    Image.fromarray(array).save(path)


@pytest.fixture
def category(tmp_path) -> Path:
    """An MVTec-like category: 3 train/good, 2 test/good, 2 test/crack with masks."""
    root = tmp_path / "part"
    for i in range(3):
        save(root / "train" / "good" / f"00{i}.png", 10 + i)
    for i in range(2):
        save(root / "test" / "good" / f"00{i}.png", 20 + i)
        save(root / "test" / "crack" / f"00{i}.png", 30 + i)
        save(root / "ground_truth" / "crack" / f"00{i}_mask.png", box=True)
    return root


def relative(dataset, root: Path) -> list[str]:
    return [r.image.relative_to(root).as_posix() for r in dataset.records]


def write(tmp_path: Path, content: dict | str, name: str = "split.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


PROTOCOL = {
    "train": ["train/good/000.png", "test/good/001.png", "./train/good/002.png"],
    "test": ["test/crack/001.png", "train/good/001.png", "test/good/000.png"],
}


def test_a_split_file_moves_images_between_the_layouts_splits(category, tmp_path):
    spec = DataSpec(category, split_file=write(tmp_path, PROTOCOL))
    train, test = spec.open("train", None), spec.open("test", size=4)
    assert relative(train, category) == [
        "train/good/000.png",
        "train/good/002.png",
        "test/good/001.png",
    ]  # the layout's order
    assert train.labels == [0, 0, 0]
    assert relative(test, category) == [
        "train/good/001.png",
        "test/good/000.png",
        "test/crack/001.png",
    ]
    assert test.labels == [0, 0, 1] and test.size == (4, 4)
    assert test.records[2].mask == category / "ground_truth" / "crack" / "001_mask.png"
    assert test.decode(2).original_mask.sum() == 2 * 3  # the mask comes from the layout
    assert [r.mask for r in test.records[:2]] == [None, None]


def test_yaml_and_windows_separators_read_the_same(category, tmp_path):
    text = (
        "train:\n  - train\\good\\000.png\n  - train/good/002.png\ntest:\n  - test/crack/000.png\n"
    )
    spec = DataSpec(category, split_file=write(tmp_path, text, "split.yaml"))
    assert relative(spec.open("train", None), category) == [
        "train/good/000.png",
        "train/good/002.png",
    ]
    assert relative(spec.open("test", None), category) == ["test/crack/000.png"]


def test_paths_are_relative_to_data_even_for_an_mvtec_root(category, tmp_path):
    protocol = {"train": ["part/train/good/000.png"], "test": ["part/test/crack/000.png"]}
    spec = DataSpec(category.parent, category="part", split_file=write(tmp_path, protocol))
    assert relative(spec.open("test", None), category) == ["test/crack/000.png"]


def test_any_layout_takes_one_folder_and_kolektor(tmp_path):
    for i in range(2):
        save(tmp_path / "ok" / f"{i}.png", i)
        save(tmp_path / "bad" / f"{i}.png", 50 + i)
        save(tmp_path / "masks" / f"{i}.png", box=True)
    folder = DataSpec(
        tmp_path,
        train_dir="ok",
        defect_dir="bad",
        mask_dir="masks",
        split_file=write(tmp_path, {"train": ["ok/0.png"], "test": ["ok/1.png", "bad/1.png"]}),
    )
    test = folder.open("test", None)
    assert relative(test, tmp_path) == ["ok/1.png", "bad/1.png"] and test.labels == [0, 1]
    assert test.records[1].mask == tmp_path / "masks" / "1.png"

    ksdd = tmp_path / "ksdd"
    for item in ("kos01", "kos02"):
        for part in range(2):
            save(ksdd / item / f"Part{part}.jpg", 40)
            save(ksdd / item / f"Part{part}_label.bmp", box=item == "kos01" and part == 1)
    protocol = {
        "train": ["kos02/Part0.jpg", "kos02/Part1.jpg", "kos01/Part0.jpg"],
        "test": ["kos01/Part1.jpg"],
    }  # the reverse of the built-in odd/even rule
    spec = DataSpec(ksdd, split_file=write(tmp_path, protocol, "ksdd.json"))
    assert relative(spec.open("train", None), ksdd) == [
        "kos01/Part0.jpg",
        "kos02/Part0.jpg",
        "kos02/Part1.jpg",
    ]
    test = spec.open("test", None)
    assert relative(test, ksdd) == ["kos01/Part1.jpg"] and test.labels == [1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json: [", "cannot read the split file"),
        ("- a.png\n- b.png\n", r'holds \{"train": \[...\], "test": \[...\]\}.*found list'),
        ({"train": ["train/good/000.png"]}, r"found \['train'\]"),
        ({"train": [], "test": [], "val": []}, r"found \['test', 'train', 'val'\]"),
        ({"train": "train/good/000.png", "test": []}, "'train' is not a list of paths"),
        ({"train": [1, 2], "test": []}, "'train' is not a list of paths"),
        (
            {"train": ["train/good/000.png", "train/good/000.png"], "test": []},
            "listed twice in 'train': train/good/000.png",
        ),
        (
            {
                "train": ["train/good/000.png", "train/good/001.png"],
                "test": ["train/good/001.png", "./train/good/000.png"],
            },
            "2 image.s. listed in both train and test: train/good/000.png, train/good/001.png",
        ),
        (
            {
                "train": ["train/good/000.png", "gone/1.png", "gone/2.png"],
                "test": ["gone/3.png", "gone/4.png", "test/good/000.png", "test/crack/002.png"],
            },
            r"5 listed image.s. are not images of the dataset at .*part "
            r"\(paths are relative to it\): "
            "gone/1.png, gone/2.png, gone/3.png and 2 more",
        ),
        (
            {"train": ["train/good/000.png", "test/crack/000.png"], "test": []},
            r"1 defective image.s. in the train list "
            r"\(training is one-class: normal images only\): "
            "test/crack/000.png",
        ),
        ({"train": [], "test": ["test/good/000.png"]}, "the 'train' list is empty"),
    ],
)
def test_refusals_name_the_split_file_and_the_problem(category, tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(AdpsError, match=message) as err:
        DataSpec(category, split_file=path).open("train", None)
    assert str(err.value).startswith(f"{path}: ")


def test_a_missing_split_file(category, tmp_path):
    with pytest.raises(AdpsError, match=r"split\.json: split file not found"):
        DataSpec(category, split_file=tmp_path / "split.json").open("test", None)


def test_the_flag_reaches_the_spec(category, tmp_path):
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    path = write(tmp_path, PROTOCOL)
    spec = data_spec(parser.parse_args(["--data", str(category), "--split-file", str(path)]))
    assert spec.split_file == str(path) and len(spec.open("test", None)) == 3
    assert data_spec(parser.parse_args(["--data", str(category)])).split_file is None
