"""The predictor (adps.engine.predict, adps.load / adps.export.load_predictor) and `adps predict`
(adps.cli.predict): every input kind, thresholds, inputs and refusals, exported graphs, the
OpenVINO default and its cache, and sharding under torchrun."""

import argparse
import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import adps
from adps.cli import main
from adps.cli.predict import _pixels, collect_inputs
from adps.config import ModelConfig, TrainConfig
from adps.data.datasets import MVTecAD, read_image
from adps.data.procedural import make_demo_dataset
from adps.engine.calibrate import Thresholds
from adps.engine.checkpoint import Checkpoint
from adps.engine.predict import Prediction, to_uint8_chw
from adps.engine.train import train
from adps.errors import AdpsError
from pngheader import png_header

SIZE = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    category = make_demo_dataset(
        root / "data", size=SIZE, n_train=8, n_test_good=3, n_test_defect=3
    )
    result = train(
        ModelConfig(image_size=SIZE, k=4),
        TrainConfig(epochs=2, batch_size=4, steps_per_epoch=2, seed=0),
        MVTecAD(category.parent, category.name, "train", size=SIZE),
        root / "run",
        device="cpu",
        progress=False,
    )
    return result.checkpoint, category


@pytest.fixture
def photo(tmp_path):
    """A real-looking image at a size other than the model's, so resizing is exercised."""
    rng = np.random.default_rng(0)
    array = (rng.random((50, 70, 3)) * 255).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(array).save(path)
    return path, array


@pytest.mark.slow
def test_every_input_kind_gives_the_same_answer(trained, photo):
    checkpoint, _ = trained
    predictor = adps.load(checkpoint, device="cpu")
    path, array = photo
    results = [
        predictor(path),
        predictor(str(path)),
        predictor(Image.open(path)),
        predictor(array),
        predictor(array.astype(np.float32) / 255),
        predictor(torch.from_numpy(array).permute(2, 0, 1)),
    ]
    reference = results[0]
    assert isinstance(reference, Prediction)
    assert reference.anomaly_map.shape == (50, 70)  # the image's original size
    assert reference.mask.shape == (50, 70) and reference.mask.dtype == bool
    assert reference.path == str(path)
    for result in results[1:]:
        assert result.score == pytest.approx(reference.score, abs=1e-6)
        np.testing.assert_allclose(result.anomaly_map, reference.anomaly_map, atol=1e-6)


@pytest.mark.slow
def test_grey_and_batch_inputs(trained, photo):
    checkpoint, _ = trained
    predictor = adps.load(checkpoint, device="cpu")
    _, array = photo
    grey = array[..., 0]
    as_rgb = predictor(np.repeat(grey[..., None], 3, axis=2))
    assert predictor(grey).score == pytest.approx(as_rgb.score, abs=1e-6)
    batch = torch.from_numpy(np.stack([array, array[::-1].copy()])).permute(0, 3, 1, 2)
    results = predictor(batch)
    assert isinstance(results, list) and len(results) == 2
    assert results[0].score == pytest.approx(predictor(array).score, abs=1e-6)


@pytest.mark.slow
def test_preprocessing_matches_the_dataset_path(trained):
    """The predictor on a file equals the model on the dataset's own decoded sample."""
    checkpoint, category = trained

    test = MVTecAD(category.parent, category.name, "test", size=SIZE)
    model = Checkpoint.load(checkpoint).model()
    with torch.no_grad():
        images = torch.stack([test.decode(i).image for i in range(len(test))])
        _, expected = model(images.float() / 255.0)
    predictions = adps.load(checkpoint, device="cpu", backend="torch")(
        [r.image for r in test.records]
    )
    np.testing.assert_allclose([p.score for p in predictions], expected.numpy(), atol=1e-5)


@pytest.mark.slow
def test_decisions_follow_the_thresholds(trained, photo):
    checkpoint, _ = trained
    predictor = adps.load(checkpoint, device="cpu")
    result = predictor(photo[0])
    assert predictor.thresholds == Thresholds()  # uncalibrated: the pixel threshold decides
    assert result.is_anomalous == (result.score >= 0.5)
    assert np.array_equal(result.mask, result.anomaly_map > 0.5)
    assert result.defect_area == int((result.anomaly_map > 0.5).sum())
    predictor.thresholds = Thresholds(image=result.score)
    assert predictor(photo[0]).is_anomalous
    predictor.thresholds = Thresholds(image=float(np.nextafter(result.score, 1.0)))
    assert not predictor(photo[0]).is_anomalous
    predictor.thresholds = Thresholds(pixel=float(result.anomaly_map.max()))
    assert predictor(photo[0]).defect_area == 0


@pytest.mark.slow
def test_bad_inputs_raise_clear_errors(trained, tmp_path):
    predictor = adps.load(trained[0], device="cpu")
    with pytest.raises(AdpsError, match="float images must lie in"):
        predictor(np.full((8, 8, 3), 2.0))
    with pytest.raises(AdpsError, match="shaped"):
        predictor(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(AdpsError, match=r"missing\.png"):
        predictor(tmp_path / "missing.png")


@pytest.mark.integration
@pytest.mark.slow
def test_predict_command_writes_csv_masks_overlays_and_reports_failures(trained, tmp_path, capsys):
    checkpoint, category = trained
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = sorted((category / "test" / "good").glob("*.png"))[:2]
    bad = sorted((category / "test" / "scratch").glob("*.png"))[:1]
    for src in good + bad:
        (folder / f"{src.parent.name}_{src.name}").write_bytes(src.read_bytes())
    big = Image.fromarray(read_image(good[0])).resize((96, 80))
    big.save(folder / "resized.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(folder),
            "--model",
            str(checkpoint),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--batch-size",
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1  # some inputs failed
    assert "broken.png" in captured.err
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r for r in rows if "broken" in r["path"]] == []
    assert len(rows) == 4
    predictor = adps.load(checkpoint, device="cpu")
    for row in rows:
        expected = predictor(row["path"])
        assert float(row["score"]) == pytest.approx(expected.score, abs=1e-5)
        assert row["decision"] == ("anomalous" if expected.is_anomalous else "normal")
        assert int(row["defect_area"]) == expected.defect_area
        name = row["path"].rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".png"
        mask = np.array(Image.open(out / "masks" / name))
        assert mask.shape == expected.mask.shape  # original resolution
        assert np.array_equal(mask > 0, expected.mask)
        overlay = Image.open(out / "overlays" / name)
        assert overlay.size == (expected.mask.shape[1], expected.mask.shape[0])
    payload = json.loads((out / "predictions.json").read_text())
    assert payload["failures"][0]["path"].endswith("broken.png")
    assert len(payload["predictions"]) == 4


@pytest.mark.slow
def test_predict_with_nothing_to_read_is_an_error(trained, tmp_path):
    assert (
        main(
            [
                "predict",
                str(tmp_path / "nothing*.png"),
                "--model",
                str(trained[0]),
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)
    return path


def test_input_discovery_folders_globs_and_recursion(tmp_path):
    a, b = _png(tmp_path / "a" / "001.png"), _png(tmp_path / "a" / "002.jpg")
    deep = _png(tmp_path / "a" / "sub" / "003.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    files, missing, skipped = collect_inputs([str(tmp_path / "a")], recursive=False)
    assert files == [(a, "001.png"), (b, "002.jpg")] and missing == []
    assert skipped == [tmp_path / "a" / "notes.txt"]
    files, _, _ = collect_inputs([str(tmp_path / "a")], recursive=True)
    assert [f for f, _ in files] == [a, b, deep]
    assert dict(files)[deep] == "sub/003.png"  # the path below the folder is kept
    files, _, _ = collect_inputs([str(tmp_path / "a" / "*.png")], recursive=False)
    assert [f for f, _ in files] == [a]
    files, _, _ = collect_inputs([str(tmp_path / "**" / "*.png")], recursive=True)
    assert sorted(f for f, _ in files) == sorted([a, deep])
    (tmp_path / "empty").mkdir()
    files, missing, _ = collect_inputs(
        [str(tmp_path / "empty"), str(tmp_path / "none*.png")], recursive=False
    )
    assert files == []
    assert missing == [
        (str(tmp_path / "empty"), "folder holds no images (use --recursive for sub-folders)"),
        (str(tmp_path / "none*.png"), "no such file, folder or matching pattern"),
    ]


@pytest.mark.slow
def test_every_refusal_names_its_cause(trained, tmp_path, capsys):
    """GIF, WebP and text files in a folder are counted and named; an empty file says empty;
    a 30000 x 30000 image is refused by --max-pixels (from its header), not by PIL's guard."""
    folder = tmp_path / "in"
    ok = _png(folder / "ok.png", 90)
    for name in ("anim.gif", "photo.webp"):
        Image.new("RGB", (8, 8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "zero.png").write_bytes(b"")
    (folder / "wide.png").write_bytes(png_header(30000, 30000))
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(folder),
            "--model",
            str(trained[0]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--no-images",
            "--max-pixels",
            "1e6",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert (
        "skipped 3 file(s) without an image extension (.gif, .txt, .webp): "
        f"{folder / 'anim.gif'}, {folder / 'notes.txt'}, {folder / 'photo.webp'}" in err
    )
    assert f"failed {folder / 'zero.png'}: empty file" in err
    assert (
        f"failed {folder / 'wide.png'}: 30000 x 30000 = 900000000 pixels is over the limit "
        "of 1000000 (--max-pixels)"
    ) in err
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["path"] for r in rows] == [str(ok)]
    code = main(
        [
            "predict",
            str(folder / "wide.png"),
            "--model",
            str(trained[0]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--max-pixels",
            "none",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "wide.png: corrupt or truncated" in err  # decoding was tried
    assert "bomb" not in err and "--max-pixels" not in err


@pytest.mark.parametrize(
    ("text", "value"), [("4e7", 40_000_000), ("1000", 1000), ("0", None), ("None", None)]
)
def test_max_pixels_values(text, value):
    assert _pixels(text) == value


@pytest.mark.parametrize("text", ["-5", "0.5", "1.5e0", "many"])
def test_max_pixels_refuses_what_is_not_a_count(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--max-pixels takes a pixel count"):
        _pixels(text)


def test_a_read_only_array_is_taken_without_a_warning():
    """np.asarray(a PIL image) is read-only; torch warns when it wraps such an array."""
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    array = np.asarray(Image.fromarray(pixels))
    assert not array.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor, path = to_uint8_chw(array)
    assert path is None and torch.equal(tensor, torch.from_numpy(pixels).permute(2, 0, 1))
    assert not array.flags.writeable  # the caller's array is left as it was


@pytest.mark.integration
@pytest.mark.slow
def test_same_file_names_from_two_folders_get_distinct_outputs(trained, tmp_path):
    one, two = _png(tmp_path / "x" / "001.png", 10), _png(tmp_path / "y" / "001.png", 200)
    files, _, _ = collect_inputs(
        [str(tmp_path / "x"), str(one.parent.parent / "y" / "001.png")], recursive=False
    )
    assert files == [(one, "001.png"), (two, "001_1.png")]
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "x"),
                str(two),
                "--model",
                str(trained[0]),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["001.png", "001_1.png"]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["path"] for r in rows] == [str(one), str(two)]


@pytest.mark.integration
@pytest.mark.slow
def test_onnx_and_torchscript_predictions_match_torch(trained, tmp_path):
    checkpoint, category = trained
    files = [r.image for r in MVTecAD(category.parent, category.name, "test", size=SIZE).records]
    reference = adps.load(checkpoint, device="cpu")(files)
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts")):
        out = tmp_path / f"model{suffix}"
        assert main(["export", "--model", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
        exported = adps.load(out, device="cpu")(files)
        for a, b in zip(reference, exported, strict=True):
            assert b.score == pytest.approx(a.score, abs=1e-3)
            assert np.abs(b.anomaly_map - a.anomaly_map).max() < 1e-3
            assert a.is_anomalous == b.is_anomalous


def test_default_inference_batch_size():
    from adps.engine.device import inference_batch_size

    cpu = torch.device("cpu")
    assert inference_batch_size(cpu) == 1  # measured fastest per image for torch on CPU
    assert inference_batch_size(cpu, runtime="onnx") == 32
    assert inference_batch_size(torch.device("cuda"), None) == 32
    assert inference_batch_size(cpu, 7) == 7
    with pytest.raises(AdpsError, match="at least 1"):
        inference_batch_size(cpu, 0)


@pytest.mark.integration
@pytest.mark.slow
def test_torchrun_shards_the_inputs_and_writes_one_merged_table(trained, tmp_path, free_port):
    """`torchrun --nproc-per-node 2 adps predict`: each rank scores a disjoint half, rank 0
    writes one CSV/JSON in input order, equal to the single-process one, and reports a failed
    input once."""
    import os
    import subprocess
    import sys

    checkpoint, category = trained
    folder = tmp_path / "inputs"
    folder.mkdir()
    sources = sorted((category / "test").rglob("*.png"))
    for i, src in enumerate(sources):
        (folder / f"{i:02d}_{src.name}").write_bytes(src.read_bytes())
    (folder / "99_broken.png").write_bytes(b"not an image")
    single, shared = tmp_path / "single", tmp_path / "sharded"
    assert (
        main(
            [
                "predict",
                str(folder),
                "--model",
                str(checkpoint),
                "--out",
                str(single),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 1
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port),
        "-m",
        "adps",
        "predict",
        str(folder),
        "--model",
        str(checkpoint),
        "--out",
        str(shared),
        "--device",
        "cpu",
        "--no-progress",
    ]
    proc = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0 and "99_broken.png" in proc.stderr  # exit 1: an input failed
    assert (
        proc.stderr.count("failed 99_broken")
        + proc.stderr.count(f"failed {folder / '99_broken.png'}")
        == 1
    )
    want = (single / "predictions.csv").read_text()
    assert (shared / "predictions.csv").read_text() == want
    payload = json.loads((shared / "predictions.json").read_text())
    assert [f["path"] for f in payload["failures"]] == [str(folder / "99_broken.png")]
    assert sorted(p.name for p in (shared / "masks").iterdir()) == sorted(
        p.name for p in (single / "masks").iterdir()
    )


# ------------------------------------------------------------------ the runtime a checkpoint gets


def _weld_files(n: int = 3) -> list:
    from datapaths import WELD

    return sorted((WELD / "test/defective").glob("*.png"))[:n]


@pytest.mark.slow
def test_a_checkpoint_runs_on_openvino_by_default_converted_once(
    trained, monkeypatch, conversion_cache
):
    pytest.importorskip("openvino")
    import adps.export
    from adps.engine import runtime

    checkpoint, _ = trained
    files = _weld_files()
    torch_run = adps.load(checkpoint, device="cpu", backend="torch")
    assert torch_run.runtime == "torch cpu"
    before = set(conversion_cache.glob("openvino/*.xml"))
    exact = adps.load(checkpoint, device="cpu")  # float32 unless asked
    assert exact.runtime.startswith("openvino CPU f32 (converted from")
    for a, b in zip(
        exact(files), torch_run(files), strict=True
    ):  # real images: torch's maps within 1e-3
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-3)
        assert a.score == pytest.approx(b.score, abs=1e-3)
    converted = sorted(set(conversion_cache.glob("openvino/*.xml")) - before)
    assert len(converted) <= 1 and f"cached at {conversion_cache}" in exact.runtime
    converted = [Path(exact.runtime.rsplit("cached at ", 1)[1].rstrip(")"))]
    assert converted[0].is_file() and converted[0].stem.startswith(checkpoint.stem)

    # "auto" precision: bf16 exactly where the CPU has it natively
    for native in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda native=native: native)
        assert adps.load(checkpoint, device="cpu", precision="auto").runtime.startswith(
            f"openvino CPU {'bf16' if native else 'f32'}"
        )

    # a cached conversion is used as is ...
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(adps.export, "export_openvino", no_conversion)
    adps.load(checkpoint, device="cpu")
    monkeypatch.undo()
    # ... until its files are damaged: then it is converted again, and runs
    converted[0].with_suffix(".bin").write_bytes(b"\0" * 10)
    again = adps.load(checkpoint, device="cpu", precision="f32")
    assert again(files[0]).score == pytest.approx(torch_run(files[0]).score, abs=1e-3)


@pytest.mark.slow
def test_a_changed_checkpoint_is_converted_again(trained, tmp_path, conversion_cache):
    pytest.importorskip("openvino")
    checkpoint, _ = trained
    edited = (
        Checkpoint.load(checkpoint)
        .replace(thresholds=Thresholds(image=0.25))
        .save(tmp_path / checkpoint.name)
    )
    before = set(conversion_cache.glob("openvino/*.xml"))
    predictor = adps.load(edited, device="cpu")
    new = set(conversion_cache.glob("openvino/*.xml")) - before
    assert len(new) == 1 and predictor.thresholds.image == 0.25


@pytest.mark.slow
def test_without_openvino_a_checkpoint_runs_in_torch(trained, monkeypatch):
    import sys

    checkpoint, _ = trained
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    assert adps.load(checkpoint, device="cpu").runtime == "torch cpu"
    with pytest.raises(AdpsError, match="openvino package"):
        adps.load(checkpoint, device="cpu", backend="openvino")
    with pytest.raises(AdpsError, match="backend must be one of auto, torch, openvino"):
        adps.load(checkpoint, device="cpu", backend="onnx")


@pytest.mark.slow
def test_an_unwritable_cache_falls_back_to_torch_with_a_warning(trained, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    checkpoint, _ = trained
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("ADPS_CACHE_DIR", str(blocker))
    with pytest.warns(UserWarning, match="cannot run it with OpenVINO"):
        assert adps.load(checkpoint, device="cpu").runtime == "torch cpu"
    with pytest.raises(OSError, match="not-a-folder"):
        adps.load(checkpoint, device="cpu", backend="openvino")


@pytest.mark.integration
@pytest.mark.slow
def test_predict_command_takes_the_backend_and_says_which_ran(trained, tmp_path):
    pytest.importorskip("openvino")
    checkpoint, _ = trained
    files = [str(p) for p in _weld_files(2)]
    tables = {}
    for backend in ("torch", "openvino"):
        out = tmp_path / backend
        assert (
            main(
                [
                    "predict",
                    *files,
                    "--model",
                    str(checkpoint),
                    "--out",
                    str(out),
                    "--backend",
                    backend,
                    "--precision",
                    "f32",
                    "--no-progress",
                ]
            )
            == 0
        )
        report = json.loads((out / "predictions.json").read_text())
        assert report["runtime"].startswith(
            {"torch": "torch cpu", "openvino": "openvino CPU f32"}[backend]
        )
        tables[backend] = [r["score"] for r in report["predictions"]]
    np.testing.assert_allclose(tables["openvino"], tables["torch"], atol=1e-3)
