"""The model artifact (adps.engine.checkpoint.Checkpoint) and the training fingerprint
(adps.data.fingerprint): old files keep loading, nothing is stored twice, and no evaluation or
calibration runs on images the model learned from unless asked."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import adps
import adps.cli
from adps.config import ModelConfig, TrainConfig
from adps.data.datasets import MVTecAD
from adps.data.fingerprint import Fingerprint, check_overlap, file_digest
from adps.engine.calibrate import Thresholds
from adps.engine.checkpoint import Checkpoint
from adps.engine.train import holdout_indices, train
from adps.errors import AdpsError
from adps.models.adps import ADPS
from datapaths import WELD

LEGACY = Path(__file__).parent / "data" / "checkpoints"
SIZE = 64
MODEL = ModelConfig(image_size=SIZE, k=4, prior="memory", memory_size=64, psm_output_stride=2)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:32]


@pytest.fixture(scope="module")
def weld(tmp_path_factory) -> Path:
    """A copy of the committed weld subset: train/good and test/ share one file, as the
    published set does (7 of its 35 normal test images are training images)."""
    root = tmp_path_factory.mktemp("weld") / "welding"
    shutil.copytree(WELD, root)
    return root


@pytest.fixture(scope="module")
def trained(weld, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        epochs=1,
        steps_per_epoch=1,
        batch_size=4,
        calibration_holdout=0.25,
        target_false_alarm_rate=0.5,
    )
    train(
        MODEL,
        config,
        MVTecAD(weld.parent, "welding", "train", size=SIZE),
        out,
        device="cpu",
        progress=False,
    )
    return out / "model.pt"


# --------------------------------------------------------------------------- the artifact


def test_a_v1_checkpoint_loads_and_gives_the_maps_it_gave():
    ckpt = Checkpoint.load(LEGACY / "v1.pt")
    assert ckpt.model_config.prior_exponent == 0.5 and ckpt.model_config.psm_boost == 4.0
    assert ckpt.thresholds.image == pytest.approx(0.42)
    assert ckpt.training is not None and ckpt.training.steps == 1 and ckpt.resume is None
    assert not ckpt.fingerprint.recorded  # v1 had none: checks warn instead of refusing
    want = np.load(LEGACY / "v1_maps.npz")
    paths = [next((WELD / "test").rglob(str(name))) for name in want["names"]]
    got = adps.load(LEGACY / "v1.pt", device="cpu", backend="torch")(paths)
    np.testing.assert_allclose(np.stack([p.anomaly_map for p in got]), want["maps"], atol=1e-5)
    np.testing.assert_allclose([p.score for p in got], want["scores"], atol=1e-5)
    assert [p.is_anomalous for p in got] == list(want["decisions"])


def test_save_and_load_keep_every_field(tmp_path):
    from adps.engine.fusion import FusionFit, FusionScore

    model = ADPS(ModelConfig(image_size=SIZE, k=4), pretrained=False)
    ckpt = Checkpoint.of(
        model,
        train_config=TrainConfig.from_recipe("fast"),
        thresholds=Thresholds(image=0.3, calibration={"n_normal": 20}),
        fusion_fit=FusionFit(0.5, 4.0, 3, (FusionScore(0.5, 4.0, 0.7, 0.9),)),
        fingerprint=Fingerprint(frozenset({"a" * 32}), frozenset({"b" * 32}), recorded=True),
    )
    again = Checkpoint.load(ckpt.save(tmp_path / "m.pt"))
    assert dataclasses.replace(again, state={}) == dataclasses.replace(ckpt, state={})
    assert again.state.keys() == ckpt.state.keys()
    assert all(torch.equal(again.state[k], ckpt.state[k]) for k in ckpt.state)
    stored = torch.load(tmp_path / "m.pt", weights_only=True)
    # derived values are not stored: the pre-processing follows from the config
    assert "preprocess" not in stored and stored["format"] == "adps-checkpoint-v2"
    assert again.preprocess["image_size"] == SIZE


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    torch.save({"format": "something-else"}, tmp_path / "x.pt")
    with pytest.raises(AdpsError, match=r"x\.pt: is not an adps checkpoint"):
        Checkpoint.load(tmp_path / "x.pt")
    with pytest.raises(AdpsError, match="checkpoint not found"):
        Checkpoint.load(tmp_path / "missing.pt")


def test_the_model_cannot_disagree_with_its_config():
    model = ADPS(ModelConfig(image_size=SIZE, k=4), pretrained=False)
    with pytest.raises(AttributeError):
        model.config = dataclasses.replace(model.config, psm_boost=8.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.psm_boost = 8.0


def test_adps_load_is_the_one_loader():
    from adps.export import load_predictor

    assert adps.load is load_predictor


def test_export_metadata_is_derived_from_the_checkpoint(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from adps.engine.runtime import read_onnx_metadata
    from adps.export import export_onnx

    ckpt = Checkpoint.load(trained)
    meta = read_onnx_metadata(export_onnx(ckpt, tmp_path / "m.onnx", verify=False))
    described = json.loads(json.dumps(ckpt.describe()))
    assert {k: meta[k] for k in described} == described
    assert meta["fingerprint"]["trained"] == len(ckpt.fingerprint.trained) > 0
    assert "mean" not in meta and "std" not in meta  # once, under preprocess


# --------------------------------------------------------------------------- the fingerprint


def test_the_fingerprint_holds_the_training_and_holdout_files(weld, trained):
    """Independent reference: hashlib over the files, split by the trainer's hold-out draw."""
    files = sorted((weld / "train" / "good").glob("*.png"))
    kept, held = holdout_indices(
        len(files), TrainConfig(calibration_holdout=0.25, target_false_alarm_rate=0.5)
    )
    fingerprint = Checkpoint.load(trained).fingerprint
    assert fingerprint.trained == {sha(files[i]) for i in kept.tolist()}
    assert fingerprint.calibrated == {sha(files[i]) for i in held.tolist()}
    assert file_digest(files[0]) == sha(files[0])


def test_check_overlap_names_the_shared_files(tmp_path):
    a, b, c = (tmp_path / n for n in ("a.png", "b.png", "c.png"))
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    c.write_bytes(b"one")  # a copy of a under another name
    fingerprint = Fingerprint(frozenset({sha(a)}), frozenset({sha(b)}), recorded=True)
    with pytest.raises(
        AdpsError,
        match=r"2 of the 3 images were learned from by the model "
        r"\(1 trained on, 1 set its threshold\): b\.png, c\.png",
    ):
        check_overlap(fingerprint, [b, c, _write(tmp_path / "d.png", b"three")], "the test images")
    overlap = check_overlap(fingerprint, [c, b], "x", allow=True, roles=("trained",))
    assert [Path(p).name for p, _ in overlap.shared] == ["c.png"]
    with pytest.warns(UserWarning, match="records no training fingerprint"):
        assert not check_overlap(Fingerprint(), [a], "x")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.integration
def test_testing_on_training_images_is_refused_then_allowed(weld, trained, tmp_path, capsys):
    """The weld subset's test/good shares 4-+9_row0_17.png with train/good, byte for byte."""
    shared = "4-+9_row0_17.png"
    assert sha(weld / "train" / "good" / shared) == sha(weld / "test" / "good" / shared)
    argv = [
        "test",
        "--model",
        str(trained),
        "--data",
        str(weld),
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert adps.cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "1 of the" in err and shared in err and "--allow-overlap" in err
    assert not (tmp_path / "metrics.json").exists()

    assert adps.cli.main([*argv, "--allow-overlap"]) == 0
    assert "--allow-overlap" in capsys.readouterr().out
    overlap = json.loads((tmp_path / "metrics.json").read_text())["overlap"]
    assert overlap["allowed"] and overlap["shared"] == 1
    assert Path(overlap["files"][0]["path"]).name == shared


@pytest.mark.integration
def test_a_folder_test_split_that_is_the_training_folder_is_refused(weld, trained, capsys):
    argv = [
        "test",
        "--model",
        str(trained),
        "--data",
        str(weld),
        "--format",
        "folder",
        "--train-dir",
        "train/good",
        "--good-dir",
        "train/good",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(trained.parent / "folder"),
    ]
    assert adps.cli.main(argv) == 2
    n_train = len(list((weld / "train" / "good").glob("*.png")))
    assert f"of the {n_train} images were learned from" in capsys.readouterr().err


@pytest.mark.integration
def test_calibrating_on_training_images_is_refused_then_allowed(weld, trained, tmp_path, capsys):
    out = tmp_path / "calibrated.pt"
    argv = [
        "calibrate",
        "--model",
        str(trained),
        "--normal-dir",
        str(weld / "train" / "good"),
        "--target-far",
        "0.2",
        "--out",
        str(out),
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert adps.cli.main(argv) == 2
    assert "were learned from by the model" in capsys.readouterr().err and not out.exists()
    assert adps.cli.main([*argv, "--allow-overlap"]) == 0
    calibrated = Checkpoint.load(out)
    # the calibration images are now part of what the model learned from, and the step is
    # recorded with the hash of the file it came from
    files = sorted((weld / "train" / "good").glob("*.png"))
    assert {sha(f) for f in files} <= calibrated.fingerprint.calibrated
    assert calibrated.lineage[-1].parent == hashlib.sha256(trained.read_bytes()).hexdigest()
    assert "image threshold" in calibrated.lineage[-1].change


@pytest.mark.integration
def test_calibrating_on_unseen_images_is_not_refused(weld, trained, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    train_digests = Checkpoint.load(trained).fingerprint.trained
    for f in sorted((weld / "test" / "good").glob("*.png")):
        if sha(f) not in train_digests:
            shutil.copy(f, fresh / f.name)
    assert (
        adps.cli.main(
            [
                "calibrate",
                "--model",
                str(trained),
                "--normal-dir",
                str(fresh),
                "--target-far",
                "0.2",
                "--out",
                str(tmp_path / "c.pt"),
                "--backend",
                "torch",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "stored image threshold" in capsys.readouterr().out
