import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import adps
from adps.cli import main
from adps.config import ModelConfig, TrainConfig
from adps.data.datasets import MVTecAD, read_image
from adps.data.procedural import make_demo_dataset
from adps.engine.predict import Prediction
from adps.engine.train import train
from adps.errors import AdpsError

SIZE = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    category = make_demo_dataset(root / "data", size=SIZE, n_train=8, n_test_good=3,
                                 n_test_defect=3)
    result = train(ModelConfig(image_size=SIZE, k=4),
                   TrainConfig(epochs=2, batch_size=4, steps_per_epoch=2, seed=0),
                   MVTecAD(category.parent, category.name, "train", size=SIZE), root / "run",
                   device="cpu", progress=False)
    return result.checkpoint, category


@pytest.fixture
def photo(tmp_path):
    """A real-looking image at a size other than the model's, so resizing is exercised."""
    rng = np.random.default_rng(0)
    array = (rng.random((50, 70, 3)) * 255).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(array).save(path)
    return path, array


def test_every_input_kind_gives_the_same_answer(trained, photo):
    checkpoint, _ = trained
    predictor = adps.load(checkpoint, device="cpu")
    path, array = photo
    results = [predictor(path), predictor(str(path)), predictor(Image.open(path)),
               predictor(array), predictor(array.astype(np.float32) / 255),
               predictor(torch.from_numpy(array).permute(2, 0, 1))]
    reference = results[0]
    assert isinstance(reference, Prediction)
    assert reference.anomaly_map.shape == (50, 70)  # the image's original size
    assert reference.mask.shape == (50, 70) and reference.mask.dtype == bool
    assert reference.path == str(path)
    for result in results[1:]:
        assert result.score == pytest.approx(reference.score, abs=1e-6)
        np.testing.assert_allclose(result.anomaly_map, reference.anomaly_map, atol=1e-6)


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


def test_preprocessing_matches_the_dataset_path(trained):
    """The predictor on a file equals the model on the dataset's own decoded sample."""
    checkpoint, category = trained
    from adps.engine.checkpoint import load_checkpoint, model_from_checkpoint

    test = MVTecAD(category.parent, category.name, "test", size=SIZE)
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    with torch.no_grad():
        _, expected = model(torch.stack([test[i].image for i in range(len(test))]))
    predictions = adps.load(checkpoint, device="cpu")([r.image for r in test.records])
    np.testing.assert_allclose([p.score for p in predictions], expected.numpy(), atol=1e-5)


def test_decisions_follow_the_thresholds(trained, photo):
    checkpoint, _ = trained
    predictor = adps.load(checkpoint, device="cpu")
    result = predictor(photo[0])
    assert predictor.thresholds["image"] is None  # uncalibrated: the pixel threshold decides
    assert result.is_anomalous == (result.score >= 0.5)
    assert np.array_equal(result.mask, result.anomaly_map > 0.5)
    assert result.defect_area == int((result.anomaly_map > 0.5).sum())
    predictor.thresholds["image"] = result.score
    assert predictor(photo[0]).is_anomalous
    predictor.thresholds["image"] = np.nextafter(result.score, 1.0)
    assert not predictor(photo[0]).is_anomalous


def test_bad_inputs_raise_clear_errors(trained, tmp_path):
    predictor = adps.load(trained[0], device="cpu")
    with pytest.raises(AdpsError, match="float images must lie in"):
        predictor(np.full((8, 8, 3), 2.0))
    with pytest.raises(AdpsError, match="shaped"):
        predictor(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(AdpsError, match="missing.png"):
        predictor(tmp_path / "missing.png")


def test_predict_command_writes_csv_masks_overlays_and_reports_failures(trained, tmp_path,
                                                                        capsys):
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
    code = main(["predict", str(folder), "--model", str(checkpoint), "--out", str(out),
                 "--device", "cpu", "--no-progress", "--batch-size", "2"])
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


def test_predict_with_nothing_to_read_is_an_error(trained, tmp_path):
    assert main(["predict", str(tmp_path / "nothing*.png"), "--model", str(trained[0]),
                 "--device", "cpu", "--no-progress", "--out", str(tmp_path / "o")]) == 2


def test_onnx_and_torchscript_predictions_match_torch(trained, tmp_path):
    checkpoint, category = trained
    files = [r.image for r in MVTecAD(category.parent, category.name, "test", size=SIZE).records]
    reference = adps.load(checkpoint, device="cpu")(files)
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts")):
        out = tmp_path / f"model{suffix}"
        assert main(["export", "--model", str(checkpoint), "--format", fmt,
                     "--out", str(out)]) == 0
        exported = adps.load(out, device="cpu")(files)
        for a, b in zip(reference, exported):
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
