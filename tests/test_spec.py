"""Data specs (adps.data.spec, the data flags of adps.cli.options): every dataset layout gives the
same spec from flags and from code, and an unknown layout says what is expected."""

import argparse

import pytest

from adps.cli.options import add_data_arguments, data_spec
from adps.data.spec import DataSpec, detect_format
from adps.errors import AdpsError
from datapaths import WELD, shared


def parse(*argv) -> DataSpec:
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return data_spec(parser.parse_args(list(argv)))


def test_mvtec_root_with_category_and_category_folder_agree():
    root = shared("mvtec_ad")
    by_root = parse("--data", str(root), "--category", "bottle").open("test", 64)
    by_folder = parse("--data", str(root / "bottle")).open("test", 64)
    assert [r.image for r in by_root.records] == [r.image for r in by_folder.records]
    assert len(by_root) == 83 and sum(r.mask is not None for r in by_root.records) == 63


def test_same_name_masks_are_detected_for_the_weld_set():
    spec = parse("--data", str(WELD))
    assert spec.name == "welding"
    train_files = sorted(p.name for p in (WELD / "train" / "good").glob("*.png"))
    assert [r.image.name for r in spec.open("train", 64).records] == train_files
    defective = {p.stem for p in (WELD / "test" / "defective").glob("*.png")}
    orphans = [
        p for p in (WELD / "ground_truth" / "defective").glob("*.png") if p.stem not in defective
    ]
    assert orphans, "the subset keeps orphan masks so the warning is exercised"
    with pytest.warns(UserWarning, match=f"{len(orphans)} mask"):
        test = spec.open("test", 64)
    n_good = len(list((WELD / "test" / "good").glob("*.png")))
    assert len(test) == n_good + len(defective)
    # every defective image got the mask of the same name ('' suffix detected, not '_mask')
    assert all(
        r.mask is not None and r.mask.name == r.image.name for r in test.records if r.label == 1
    )


def test_folder_layout_and_optional_masks(tmp_path):
    from PIL import Image

    for sub in ("ok", "good", "bad"):
        (tmp_path / sub).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 20), (i * 50, 0, 0)).save(tmp_path / sub / f"{i}.png")
    spec = parse(
        "--data",
        str(tmp_path),
        "--train-dir",
        "ok",
        "--good-dir",
        "good",
        "--defect-dir",
        "bad",
        "--masks-optional",
    )
    test = spec.open("test", 32)
    assert test.labels == [0, 0, 1, 1] and all(r.mask is None for r in test.records)
    with pytest.raises(AdpsError, match="mask"):
        parse("--data", str(tmp_path), "--good-dir", "good", "--defect-dir", "bad").open("test", 32)


def test_a_spec_built_in_code_equals_the_one_from_flags():
    assert parse("--data", str(WELD), "--cache-dir", "c") == DataSpec(str(WELD), cache_dir="c")
    with pytest.raises(AdpsError, match="data format 'zip'"):
        DataSpec(WELD, format="zip")


def test_unknown_layout_says_what_is_expected(tmp_path):
    with pytest.raises(AdpsError, match="cannot tell the dataset layout"):
        detect_format(tmp_path, None)
    with pytest.raises(AdpsError, match="not found"):
        parse("--data", str(tmp_path / "nope")).open("train", 32)
