"""Tests for adps.data.datasets and adps.data.cache: real layouts, synthetic bad inputs, caches,
the KolektorSDD v1 split and the pixel limit."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from adps.data.cache import load_tensor_stack
from adps.data.datasets import (
    AnomalyDataset,
    Folder,
    KolektorSDD,
    KolektorSDD2,
    MVTecAD,
    OrphanMaskWarning,
    Record,
    Resize,
    SkippedImagesWarning,
    find_images,
)
from adps.data.decode import OverPixelLimit, read_image, read_image_bytes, read_mask
from adps.errors import AdpsError
from datapaths import WELD, shared
from pngheader import png_header

# --------------------------------------------------------------------------- helpers


def rgb(h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    img.save(path)
    return path


def save_mask(
    path: Path, h: int = 20, w: int = 30, box: tuple[int, int, int, int] | None = (2, 8, 3, 9)
) -> Path:
    m = np.zeros((h, w), np.uint8)
    if box is not None:
        m[box[0] : box[1], box[2] : box[3]] = 255
    return save(path, m)


def folder_layout(tmp: Path, n_train: int = 2, n_good: int = 1, n_bad: int = 2) -> Path:
    """root/{train,good,bad,masks}: PNG images, masks named <stem>_mask.png."""
    for i in range(n_train):
        save(tmp / "train" / f"t{i}.png", rgb(seed=i))
    for i in range(n_good):
        save(tmp / "good" / f"g{i}.png", rgb(seed=10 + i))
    for i in range(n_bad):
        save(tmp / "bad" / f"b{i}.png", rgb(seed=20 + i))
        save_mask(tmp / "masks" / f"b{i}_mask.png")
    return tmp


def folder_test(root: Path, **kw) -> Folder:
    args = {
        "normal_test_dir": "good",
        "abnormal_test_dir": "bad",
        "mask_dir": "masks",
        "mask_suffix": "_mask",
        "split": "test",
    }
    args.update(kw)
    return Folder(root, **args)


def last(ds: AnomalyDataset):
    """The last sample decoded (the tests' layouts put a defect there)."""
    return ds.decode(len(ds) - 1)


# --------------------------------------------------------------------------- real data


def test_mvtec_bottle_counts():
    mvtec = shared("mvtec_ad", "bottle").parent
    train = MVTecAD(mvtec, "bottle")
    test = MVTecAD(mvtec, "bottle", split="test")
    assert len(train) == 209 and sum(train.labels) == 0
    assert len(test) == 83
    assert test.labels.count(0) == 20 and test.labels.count(1) == 63
    assert sum(r.mask is not None for r in test.records) == 63
    assert all((r.mask is not None) == (r.label == 1) for r in test.records)
    assert all(r.mask.name == r.image.stem + "_mask.png" for r in test.records if r.mask)
    assert test.records[0].image.parent.name == "good"  # good first, deterministic order


def test_mvtec_sample_contents_and_labels_match_masks():
    test = MVTecAD(shared("mvtec_ad", "bottle").parent, "bottle", split="test", size=128)
    s = last(test)
    assert s.image.shape == (3, 128, 128) and s.image.dtype == torch.uint8
    assert s.mask.shape == (1, 128, 128) and s.mask.dtype == torch.uint8
    assert set(s.mask.unique().tolist()) == {0, 1}
    assert test.records[-1].label == 1 and test.records[-1].has_mask
    assert s.original_mask.shape == (256, 256)
    assert s.original_mask.dtype == torch.uint8 and set(s.original_mask.unique().tolist()) == {0, 1}
    _, masks, labels = load_tensor_stack(test, num_workers=4, progress=False)
    assert torch.equal(masks.flatten(1).amax(1).long(), labels)  # anomalous iff mask non-empty
    assert masks.max() == 1


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".png")


def test_battery_weld_folder_with_same_name_masks():
    """The committed battery-weld subset (tests/data): grey PNGs, masks with the same name as
    their image, masks without an image ignored with one warning. Expected counts come from
    listing the subset's folders, not from the loader."""
    train_good, test_good, defective, masks = (
        _pngs(WELD / sub)
        for sub in ("train/good", "test/good", "test/defective", "ground_truth/defective")
    )
    orphans = sorted(set(masks) - set(defective))
    assert train_good and test_good and set(defective) <= set(masks)
    assert orphans  # the subset keeps some masks without an image, so the warning is exercised
    kw = {
        "train_dir": "train/good",
        "normal_test_dir": "test/good",
        "abnormal_test_dir": "test/defective",
        "mask_dir": "ground_truth/defective",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the train split looks at no masks: no warning
        train = Folder(WELD, split="train", **kw)
    assert len(train) == len(train_good)
    assert sorted(r.image.name for r in train.records) == train_good
    with pytest.warns(OrphanMaskWarning) as caught:
        test = Folder(WELD, split="test", **kw)
    orphan = [w for w in caught if issubclass(w.category, OrphanMaskWarning)]
    assert len(orphan) == 1
    message = str(orphan[0].message)
    assert f"{len(orphans)} mask(s)" in message and "defective" in message
    assert test.labels.count(0) == len(test_good) and test.labels.count(1) == len(defective)
    assert sorted(r.image.name for r in test.records if r.label) == defective
    assert all(r.mask is not None and r.mask.name == r.image.name for r in test.records if r.label)

    s = last(test)
    with Image.open(test.records[-1].image) as img:
        assert img.mode == "L"
        w0, h0 = img.size
    assert s.original_mask.shape == (h0, w0)
    assert s.image.shape == (3, 256, 256)
    assert torch.equal(s.image[0], s.image[1]) and torch.equal(s.image[1], s.image[2])
    assert test.records[-1].label == 1 and test.records[-1].has_mask and s.mask.max() == 1


# --------------------------------------------------------------------------- bad inputs


def test_missing_root_and_dirs(tmp_path):
    with pytest.raises(AdpsError, match="nowhere"):
        MVTecAD(tmp_path / "nowhere", "bottle")
    with pytest.raises(AdpsError, match="nocat"):
        MVTecAD(tmp_path, "nocat")
    with pytest.raises(AdpsError, match="nowhere"):
        Folder(tmp_path / "nowhere", train_dir="train")
    with pytest.raises(AdpsError, match="missing_train"):
        Folder(tmp_path, train_dir="missing_train")
    root = folder_layout(tmp_path)
    with pytest.raises(AdpsError, match="no_masks_here"):
        folder_test(root, mask_dir="no_masks_here")
    with pytest.raises(AdpsError, match="nowhere"):
        KolektorSDD2(tmp_path / "nowhere")
    with pytest.raises(AdpsError, match="nowhere"):
        KolektorSDD(tmp_path / "nowhere")


def test_empty_training_folder_ignores_non_images(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text(
        "not an image"
    )  # non-image extensions are ignored
    with pytest.raises(AdpsError, match="no images") as err:
        Folder(tmp_path, train_dir="train")
    assert "train" in str(err.value)


def test_defective_image_without_mask_raises(tmp_path):
    root = folder_layout(tmp_path)
    (root / "masks" / "b1_mask.png").unlink()
    with pytest.raises(AdpsError, match=r"b1\.png"):
        folder_test(root)
    with pytest.raises(AdpsError, match="mask_required"):
        Folder(root, abnormal_test_dir="bad", split="test")  # no mask_dir at all


def test_corrupt_image_raises_at_load(tmp_path):
    save(tmp_path / "train" / "ok.png", rgb())
    (tmp_path / "train" / "garbage.png").write_bytes(os.urandom(300))
    ds = Folder(tmp_path, train_dir="train")
    idx = [Path(r.image).name for r in ds.records].index("garbage.png")
    with pytest.raises(AdpsError, match=r"garbage\.png"):
        ds.decode(idx)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_image_raises(tmp_path, ext):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    path = save(tmp_path / "train" / f"cut.{ext}", rgb(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = Folder(tmp_path, train_dir="train")
    with pytest.raises(AdpsError, match=f"cut.{ext}"):
        ds.decode(0)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_file_with_image_extension_raises(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "readme.jpg").write_text("hello, I am text")
    ds = Folder(tmp_path, train_dir="train")
    with pytest.raises(AdpsError, match=r"readme\.jpg.*not an image"):
        ds.decode(0)


def test_mask_size_mismatch_raises_at_load(tmp_path):
    root = folder_layout(tmp_path, n_bad=1)
    save_mask(root / "masks" / "b0_mask.png", h=21, w=30)
    ds = folder_test(root)
    with pytest.raises(AdpsError, match=r"b0_mask\.png.*differs"):
        last(ds)
    with pytest.raises(AdpsError, match=r"b0_mask\.png"):
        ds.original_mask(len(ds) - 1)


def test_ambiguous_masks_bad_split_and_bad_size(tmp_path):
    root = folder_layout(tmp_path, n_bad=1)
    save_mask(root / "masks" / "b0_mask.bmp")
    with pytest.raises(AdpsError, match="two masks"):
        folder_test(root)
    with pytest.raises(AdpsError, match="split"):
        Folder(root, train_dir="train", split="validation")
    with pytest.raises(AdpsError, match="size"):
        Folder(root, train_dir="train", size=0)


# --------------------------------------------------------------------------- formats and masks


FORMATS = [
    (e, m)
    for e in ("png", "jpg", "bmp", "tiff")
    for m in ("L", "RGB", "RGBA", "P")
    if not (e == "jpg" and m in ("RGBA", "P"))
]  # JPEG stores neither alpha nor palettes


@pytest.mark.parametrize(("ext", "mode"), FORMATS)
def test_image_formats(tmp_path, ext, mode):
    arr = rgb(12, 17)
    path = save(tmp_path / f"img.{ext}", arr, mode)
    out = read_image(path)
    assert out.shape == (12, 17, 3) and out.dtype == np.uint8
    with Image.open(path) as img:
        expected = np.asarray(
            img.convert("RGBA").convert("RGB") if img.mode == "P" else img.convert("RGB")
        )
    assert np.array_equal(out, expected)
    if mode == "L":
        assert np.array_equal(out[..., 0], out[..., 2])
    if ext != "jpg" and mode in ("RGB", "RGBA"):
        assert np.array_equal(out, arr)  # lossless formats round-trip exactly


@pytest.mark.parametrize("ext", ["png", "tiff"])
def test_16bit_grey(tmp_path, ext):
    wide = np.array([[0, 257, 65535], [1000, 30000, 65000]], dtype=np.uint16)
    path = tmp_path / f"deep.{ext}"
    Image.fromarray(wide).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    out = read_image(path)
    expected = np.round(wide.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert out.shape == (2, 3, 3)
    assert np.array_equal(out[..., 0], expected) and np.array_equal(out[..., 2], expected)
    (tmp_path / "train").mkdir()  # and through a dataset, at original size
    Image.fromarray(wide).save(tmp_path / "train" / f"deep.{ext}")
    s = Folder(tmp_path, train_dir="train", size=None).decode(0)
    assert s.image.shape == (3, 2, 3) and torch.equal(s.image[1], torch.from_numpy(expected))


def test_mask_any_nonzero_channel_is_foreground(tmp_path):
    m = np.zeros((4, 5, 3), np.uint8)
    m[0, 0, 2] = 1  # faint blue
    m[3, 4] = 200
    assert read_mask(save(tmp_path / "m.png", m)).sum() == 2
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 3] = 255  # opaque black: alpha is not foreground
    rgba[1, 1, 0] = 9
    assert read_mask(save(tmp_path / "a.png", rgba)).sum() == 1
    grey16 = np.zeros((4, 5), np.uint16)
    grey16[2, 2] = 1
    Image.fromarray(grey16).save(tmp_path / "g.png")
    assert read_mask(tmp_path / "g.png").sum() == 1


def test_mask_found_by_stem_with_other_extension(tmp_path):
    save(tmp_path / "bad" / "x.jpg", rgb())
    save(tmp_path / "bad" / "y.tif", rgb(seed=1))
    save_mask(tmp_path / "gt" / "x_mask.png")
    save_mask(tmp_path / "gt" / "y_mask.bmp", box=(0, 1, 0, 1))
    ds = Folder(
        tmp_path,
        abnormal_test_dir="bad",
        mask_dir="gt",
        mask_suffix="_mask",
        split="test",
        size=None,
    )
    assert [(r.image.name, r.mask.name) for r in ds.records] == [
        ("x.jpg", "x_mask.png"),
        ("y.tif", "y_mask.bmp"),
    ]
    assert ds.decode(0).original_mask.sum() == 6 * 6 and ds.decode(1).original_mask.sum() == 1

    save_mask(tmp_path / "same" / "x.png")  # same-name rule, different extension
    save_mask(tmp_path / "same" / "y.png")
    ds = Folder(tmp_path, abnormal_test_dir="bad", mask_dir="same", split="test")
    assert [r.mask.name for r in ds.records] == ["x.png", "y.png"]


def test_mask_not_required(tmp_path):
    root = folder_layout(tmp_path, n_bad=2)
    (root / "masks" / "b1_mask.png").unlink()
    ds = folder_test(root, mask_required=False, size=16)
    s = last(ds)
    assert ds.records[-1].label == 1 and not ds.records[-1].has_mask
    assert s.mask.sum() == 0 and s.original_mask.sum() == 0
    assert (
        ds.records[-2].has_mask and ds.records[0].has_mask
    )  # the other defect and the normal image
    ds = Folder(root, abnormal_test_dir="bad", split="test", mask_required=False)
    assert not any(r.has_mask for r in ds.records)


def test_orphan_masks_one_warning(tmp_path):
    root = folder_layout(tmp_path, n_bad=1)
    for i in range(3):
        save_mask(root / "masks" / f"ghost{i}_mask.png")
    with pytest.warns(OrphanMaskWarning, match="3 mask") as caught:
        ds = folder_test(root)
    assert len([w for w in caught if w.category is OrphanMaskWarning]) == 1
    assert "masks" in str(caught[0].message) and len(ds) == 2


def test_recursive_folder_mirrors_subfolders(tmp_path):
    save(tmp_path / "bad" / "a" / "1.png", rgb())
    save(tmp_path / "bad" / "b" / "1.png", rgb(seed=1))
    save_mask(tmp_path / "gt" / "a" / "1.png")
    save_mask(tmp_path / "gt" / "b" / "1.png", box=(0, 2, 0, 2))
    ds = Folder(tmp_path, abnormal_test_dir="bad", mask_dir="gt", split="test", recursive=True)
    assert [r.mask.parent.name for r in ds.records] == ["a", "b"]
    with pytest.raises(AdpsError, match="no images"):
        Folder(tmp_path, abnormal_test_dir="bad", mask_dir="gt", split="test")  # not recursive


def test_sizes_and_resize(tmp_path):
    save(tmp_path / "train" / "a.png", rgb(20, 30))
    assert Folder(tmp_path, train_dir="train", size=None).decode(0).image.shape == (3, 20, 30)
    assert Folder(tmp_path, train_dir="train", size=(8, 12)).decode(0).image.shape == (3, 8, 12)
    assert Folder(tmp_path, train_dir="train").decode(0).image.shape == (3, 256, 256)
    image = torch.from_numpy(rgb(20, 30)).permute(2, 0, 1).contiguous()
    mask = torch.zeros(1, 20, 30, dtype=torch.uint8)
    mask[:, 5:15, 10:20] = 1
    im2, m2 = Resize(10)(image, mask)
    assert im2.dtype == torch.uint8 and im2.shape == (3, 10, 10)
    assert m2.shape == (1, 10, 10) and set(m2.unique().tolist()) == {0, 1}


# --------------------------------------------------------------------------- Kolektor layouts


def test_kolektor_sdd2_layout(tmp_path):
    for split in ("train", "test"):
        for i, box in enumerate([None, None, (1, 4, 1, 4)]):
            save(tmp_path / split / f"{10 + i}.png", rgb(seed=i))
            save_mask(tmp_path / split / f"{10 + i}_GT.png", box=box)
    train = KolektorSDD2(tmp_path, "train")
    assert [r.image.name for r in train.records] == ["10.png", "11.png"] and train.labels == [0, 0]
    test = KolektorSDD2(tmp_path, "test", size=None)
    assert test.labels == [0, 0, 1]
    assert test.records[2].has_mask and test.records[2].image.name == "12.png"
    assert test.decode(2).mask.sum() == 9
    everything = KolektorSDD2(tmp_path, "all")
    assert [r.image.parent.name for r in everything.records] == ["train"] * 3 + ["test"] * 3
    assert everything.labels == [0, 0, 1, 0, 0, 1]  # train/'s defect too: a split file may use it
    (tmp_path / "test" / "11_GT.png").unlink()
    with pytest.raises(AdpsError, match=r"11\.png"):
        KolektorSDD2(tmp_path, "test")


KSDD_DEFECTS = {"kos01": 1, "kos02": 0, "kos04": 2}  # item -> its defective PartN; others normal
KSDD_ITEMS = ("kos01", "kos02", "kos03", "kos04", "kos05", "kos11")


def ksdd_v1(root: Path, items=KSDD_ITEMS) -> Path:
    """Three parts per item, grey JPEGs with BMP labels beside them, as KSDD stores them."""
    for item in items:
        for part in range(3):
            box = (0, 3, 0, 3) if KSDD_DEFECTS.get(item) == part else None
            save(root / item / f"Part{part}.jpg", rgb(seed=part), "L")
            save_mask(root / item / f"Part{part}_label.bmp", box=box)
    return root


def names(ds: AnomalyDataset) -> list[str]:
    return [f"{r.image.parent.name}/{r.image.name}" for r in ds.records]


def test_kolektor_sdd_v1_splits_by_item_number(tmp_path):
    """Odd items train (their normal images), even items test (all their images); by the number
    in the name, not the sorted position: kos11 is sixth but odd. Expected lists by hand."""
    root = ksdd_v1(tmp_path)
    everything = KolektorSDD(root)
    assert len(everything) == 18 and sum(everything.labels) == 3
    train = KolektorSDD(root, "train")
    test = KolektorSDD(root, "test", size=None)
    assert names(train) == ["kos01/Part0.jpg", "kos01/Part2.jpg"] + [
        f"{item}/Part{p}.jpg" for item in ("kos03", "kos05", "kos11") for p in range(3)
    ]
    assert train.labels == [0] * 11
    assert names(test) == [f"{item}/Part{p}.jpg" for item in ("kos02", "kos04") for p in range(3)]
    assert test.labels == [1, 0, 0, 0, 0, 1]
    assert (
        test.decode(0).original_mask.sum() == 9 and test.records[0].mask.name == "Part0_label.bmp"
    )
    # disjoint by item, and every image but the training items' defects in exactly one split
    assert {r.image.parent for r in train.records}.isdisjoint(
        {r.image.parent for r in test.records}
    )
    dropped = {r.image for r in everything.records if r.label and r.image.parent.name in ("kos01",)}
    assert len(dropped) == 1
    assert sorted(
        {r.image for r in train.records} | {r.image for r in test.records} | dropped
    ) == sorted(r.image for r in everything.records)
    assert len(train) + len(test) + len(dropped) == len(everything)
    assert names(KolektorSDD(root, "train")) == names(train)  # deterministic
    with pytest.raises(AdpsError, match="split"):
        KolektorSDD(root, "val")


def test_kolektor_sdd_v1_split_does_not_depend_on_other_items(tmp_path):
    full = ksdd_v1(tmp_path / "full")
    part = ksdd_v1(tmp_path / "part", items=("kos02", "kos03", "kos11"))
    for split in ("train", "test"):
        kept = [
            n
            for n in names(KolektorSDD(full, split))
            if n.split("/")[0] in ("kos02", "kos03", "kos11")
        ]
        assert names(KolektorSDD(part, split)) == kept


def test_kolektor_sdd_v1_refuses_what_the_rule_cannot_place(tmp_path):
    root = ksdd_v1(tmp_path / "a", items=("kos01", "kos03"))
    with pytest.raises(AdpsError, match="no images for split 'test'"):
        KolektorSDD(root, "test")
    save(root / "extra" / "Part0.jpg", rgb(), "L")
    save_mask(root / "extra" / "Part0_label.bmp", box=None)
    with pytest.raises(AdpsError, match=r"extra/Part0\.jpg.*item folder named like kos01"):
        KolektorSDD(root, "train")
    assert len(KolektorSDD(root, "all")) == 7  # "all" needs no item numbers


# --------------------------------------------------------------------------- caches


def counting_decode(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = AnomalyDataset.decode

    def decode(self, index):
        calls.append(index)
        return original(self, index)

    monkeypatch.setattr(AnomalyDataset, "decode", decode)
    return calls


def test_tensor_stack_matches_direct_decoding(tmp_path):
    ds = folder_test(folder_layout(tmp_path, n_good=3, n_bad=3), size=(16, 24))
    images, masks, labels = load_tensor_stack(ds, progress=False)
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 16, 24)
    assert masks.dtype == torch.uint8 and masks.shape == (6, 1, 16, 24)
    assert labels.dtype == torch.int64 and labels.tolist() == ds.labels
    for i in range(len(ds)):
        s = ds.decode(i)
        assert torch.equal(images[i], s.image) and torch.equal(masks[i], s.mask)
    serial = load_tensor_stack(ds, num_workers=0, progress=False)
    threaded = load_tensor_stack(ds, num_workers=4, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(threaded, (images, masks, labels), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(serial, (images, masks, labels), strict=True))


def test_disk_cache_reused_and_invalidated(tmp_path, monkeypatch):
    root = folder_layout(tmp_path / "data")
    ds = folder_test(root, size=16)
    cache = tmp_path / "cache"
    calls = counting_decode(monkeypatch)
    first = load_tensor_stack(ds, progress=False, cache_dir=cache)
    assert len(calls) == len(ds)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # no temp files left behind
    second = load_tensor_stack(ds, progress=False, cache_dir=cache)
    assert len(calls) == len(ds)  # nothing decoded the second time
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    load_tensor_stack(
        folder_test(root, size=8), progress=False, cache_dir=cache
    )  # other size, other file
    assert len(list(cache.iterdir())) == 2
    touched = ds.records[0].image
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    calls.clear()
    load_tensor_stack(ds, progress=False, cache_dir=cache)
    assert len(calls) == len(ds)  # an edited file invalidates the cache


def test_tensor_stack_needs_uniform_size(tmp_path):
    save(tmp_path / "train" / "a.png", rgb(20, 30))
    save(tmp_path / "train" / "b.png", rgb(21, 30))
    with pytest.raises(AdpsError, match=r"b\.png"):
        load_tensor_stack(Folder(tmp_path, train_dir="train", size=None), progress=False)


def test_original_mask_without_decoding_image(tmp_path):
    ds = folder_test(folder_layout(tmp_path), size=16)
    for i in range(len(ds)):
        assert torch.equal(ds.original_mask(i), ds.decode(i).original_mask)


def test_base_class_from_records(tmp_path):
    img = save(tmp_path / "a.png", rgb())
    ds = AnomalyDataset([Record(img, None, 0)], size=8)
    assert len(ds) == 1 and ds.decode(0).image.shape == (3, 8, 8) and "1 images" in repr(ds)
    with pytest.raises(AdpsError, match="no images"):
        AnomalyDataset([])


# --------------------------------------------------------------------------- refusals


def test_the_pixel_limit_is_ours_and_read_from_the_header(tmp_path):
    """195 MP is over PIL's own guard (2 x 89 MP), which must not speak first: below our limit
    decoding starts (and finds no pixel data in this header-only file), above it we refuse."""
    path = tmp_path / "line.png"
    path.write_bytes(png_header(15000, 13000))
    with pytest.raises(
        OverPixelLimit,
        match=r"line.png: 15000 x 13000 = 195000000 pixels is over "
        r"the limit of 100000000 \(--max-pixels\)",
    ):
        read_image(path, max_pixels=100_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would fail here
        with pytest.raises(AdpsError, match=r"line\.png: corrupt or truncated") as err:
            read_image(path)
    assert "bomb" not in str(err.value)
    with pytest.raises(OverPixelLimit, match="upload: 30000 x 30000 = 900000000 pixels"):
        read_image_bytes(png_header(30000, 30000), "upload", 40_000_000)
    small = save(tmp_path / "small.png", rgb(20, 30))
    assert read_image(small, max_pixels=600).shape == (20, 30, 3)  # exactly at the limit
    with pytest.raises(OverPixelLimit, match="30 x 20 = 600 pixels is over the limit of 599"):
        read_image(small, max_pixels=599)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "huge.png").write_bytes(png_header(40000, 30000))
    with pytest.raises(
        OverPixelLimit,
        match=r"huge\.png: 40000 x 30000 = 1200000000 pixels is over the limit of 1000000000",
    ):
        Folder(tmp_path, train_dir="train").decode(0)  # datasets keep the default limit


def test_an_empty_file_says_empty(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "zero.png").write_bytes(b"")
    with pytest.raises(AdpsError, match=r"zero\.png: empty file"):
        Folder(tmp_path, train_dir="train").decode(0)
    with pytest.raises(AdpsError, match=r"up\.png: empty file"):
        read_image_bytes(b"", "up.png")
    (tmp_path / "train" / "zero.png").write_bytes(b"\0")
    with pytest.raises(AdpsError, match=r"zero\.png: not an image file"):
        Folder(tmp_path, train_dir="train").decode(0)


def test_images_in_formats_adps_does_not_take_are_left_out_with_one_warning(tmp_path):
    kept = save(tmp_path / "a.png", rgb())
    for name in ("b.gif", "c.webp"):
        Image.fromarray(rgb()).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.warns(SkippedImagesWarning) as caught:
        assert find_images(tmp_path) == [kept]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "2 file(s)" in message and "(.gif, .webp)" in message and "b.gif, c.webp" in message
    for name in ("b.gif", "c.webp"):
        (tmp_path / name).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a text file beside the images is no news
        assert find_images(tmp_path) == [kept]
