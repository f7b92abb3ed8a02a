import argparse
from pathlib import Path

import pytest

from adps.data.spec import add_data_arguments, detect_format, open_dataset
from adps.errors import AdpsError

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return parser.parse_args(list(argv))


def test_mvtec_root_with_category_and_category_folder_agree():
    by_root = open_dataset(parse("--data", str(SHARED / "mvtec_ad"), "--category", "bottle"),
                           "test", 64)
    by_folder = open_dataset(parse("--data", str(SHARED / "mvtec_ad" / "bottle")), "test", 64)
    assert [r.image for r in by_root.records] == [r.image for r in by_folder.records]
    assert len(by_root) == 83 and sum(r.mask is not None for r in by_root.records) == 63


def test_same_name_masks_are_detected_for_the_weld_set():
    args = parse("--data", str(SHARED / "battery_weld" / "welding"))
    assert len(open_dataset(args, "train", 64)) == 37
    with pytest.warns(UserWarning, match="40 mask"):
        test = open_dataset(args, "test", 64)
    assert len(test) == 128 and sum(r.mask is not None for r in test.records) == 93


def test_folder_layout_and_optional_masks(tmp_path):
    from PIL import Image

    for sub in ("ok", "good", "bad"):
        (tmp_path / sub).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 20), (i * 50, 0, 0)).save(tmp_path / sub / f"{i}.png")
    args = parse("--data", str(tmp_path), "--train-dir", "ok", "--good-dir", "good",
                 "--defect-dir", "bad", "--masks-optional")
    test = open_dataset(args, "test", 32)
    assert test.labels == [0, 0, 1, 1] and all(r.mask is None for r in test.records)
    with pytest.raises(AdpsError, match="mask"):
        open_dataset(parse("--data", str(tmp_path), "--good-dir", "good", "--defect-dir", "bad"),
                     "test", 32)


def test_unknown_layout_says_what_is_expected(tmp_path):
    with pytest.raises(AdpsError, match="cannot tell the dataset layout"):
        detect_format(tmp_path, None)
    with pytest.raises(AdpsError, match="not found"):
        open_dataset(parse("--data", str(tmp_path / "nope")), "train", 32)
