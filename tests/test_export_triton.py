"""The Triton model repository (adps.export_triton, `adps export --format triton`): the config
parses with Triton's own schema (tritonclient's ModelConfig) and declares the ONNX file's
tensors as onnxruntime reads them; the repository's model gives adps.load's outputs; the
metadata in its parameters; refusals (existing version, bad names, bad settings) and atomic
writes; the config without tritonclient; the CLI end to end, without importing Ray.

No Triton server runs here: the references are Triton's schema, onnxruntime's view of the
ONNX file, and adps's own predictor.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import adps
from adps.cli import main
from adps.engine.checkpoint import Checkpoint
from adps.errors import AdpsError
from adps.export_triton import (
    TritonSettings,
    check_model_name,
    export_triton,
    triton_config,
    validate_triton_config,
)
from servekit import SIZE, noise_images, streaked_images, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = TritonSettings(
    max_batch_size=4,
    preferred_batch_sizes=(2, 4),
    max_queue_delay_us=250,
    instance_kind="cpu",
    instance_count=2,
)
ORT_TO_TRITON = {"tensor(uint8)": "TYPE_UINT8", "tensor(float)": "TYPE_FP32"}


def parse(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def model_side_dims(io) -> list[int]:
    """The shape Triton compares with the model's (reshape.shape when given, else dims)."""
    return list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 64 px random model, its image threshold calibrated on 20 noise images."""
    return tiny_model(tmp_path_factory.mktemp("ckpt") / "bottle.pt", calibrate=20, rate=0.1)


@pytest.fixture(scope="module")
def repo(checkpoint, tmp_path_factory):
    return export_triton(checkpoint, tmp_path_factory.mktemp("repo"), settings=SETTINGS)


def test_config_parses_with_tritons_schema_and_declares_the_onnx_tensors(repo):
    import onnxruntime as ort
    from tritonclient.grpc import model_config_pb2

    assert repo.validated
    assert repo.config_path == repo.model_dir / "config.pbtxt"
    assert repo.model_path == repo.model_dir / "1" / "model.onnx"
    config = parse(repo.config_path)
    assert config.name == "bottle" == repo.model_dir.name
    assert (config.backend, config.platform) == ("onnxruntime", "onnxruntime_onnx")
    assert config.max_batch_size == 4
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    [group] = config.instance_group
    assert (group.kind, group.count) == (model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)

    session = ort.InferenceSession(str(repo.model_path), providers=["CPUExecutionProvider"])
    for declared, actual in (
        (config.input, session.get_inputs()),
        (config.output, session.get_outputs()),
    ):
        assert [io.name for io in declared] == [t.name for t in actual]
        for io, tensor in zip(declared, actual, strict=True):
            assert model_config_pb2.DataType.Name(io.data_type) == ORT_TO_TRITON[tensor.type]
            assert isinstance(tensor.shape[0], str)  # the batch axis, left to Triton
            want = [d if isinstance(d, int) else -1 for d in tensor.shape[1:]]
            assert model_side_dims(io) == want, io.name
    assert [io.name for io in config.output] == ["anomaly_map", "score"]
    assert list(config.input[0].dims) == [3, SIZE, SIZE]  # the model's input size
    assert model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_UINT8"
    assert list(config.output[1].dims) == [1]  # score (B,): the client sees (B, 1)


def test_parameters_carry_the_threshold_the_model_id_and_the_input(repo, checkpoint):
    ckpt = Checkpoint.load(checkpoint)
    params = {k: v.string_value for k, v in parse(repo.config_path).parameters.items()}
    assert params == repo.parameters
    assert ckpt.thresholds.image is not None and ckpt.thresholds.image != ckpt.thresholds.pixel
    assert float(params["adps_image_threshold"]) == ckpt.thresholds.image
    assert params["adps_image_threshold_calibrated"] == "true"
    assert float(params["adps_pixel_threshold"]) == ckpt.thresholds.pixel
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert params["adps_model_id"] == f"bottle.pt@{digest[:12]}"
    assert params["adps_model_version"] == "1"
    assert params["adps_onnx_sha256"] == hashlib.sha256(repo.model_path.read_bytes()).hexdigest()
    size = ckpt.model_config.size
    assert (int(params["adps_input_height"]), int(params["adps_input_width"])) == size
    assert params["adps_input_dtype"] == "uint8"
    assert json.loads(params["adps_input_range"]) == [0, 255]
    assert params["adps_channel_order"] == "RGB"
    assert json.loads(params["adps_tiling"]) is None


def test_the_repositorys_model_gives_adps_loads_outputs(repo, checkpoint):
    """onnxruntime on the repository's model.onnx, fed a uint8 batch as Triton would feed it,
    against adps.load on the checkpoint (torch) for the same images; the threshold in the
    config's parameters gives adps's decisions."""
    import onnxruntime as ort

    images = noise_images(2, 7) + streaked_images(2, 8)
    reference = adps.load(checkpoint, device="cpu", backend="torch")(images)
    session = ort.InferenceSession(str(repo.model_path), providers=["CPUExecutionProvider"])
    batch = np.stack([image.transpose(2, 0, 1) for image in images])
    maps, scores = session.run(["anomaly_map", "score"], {"images": batch})
    assert maps.dtype == np.float32 and maps.shape == (4, 1, SIZE, SIZE)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    for i, want in enumerate(reference):
        assert abs(float(scores[i]) - want.score) < 1e-3
        assert np.abs(maps[i, 0] - want.anomaly_map).max() < 1e-3
    threshold = float(repo.parameters["adps_image_threshold"])
    decisions = [bool(s >= threshold) for s in scores]
    assert decisions == [p.is_anomalous for p in reference]
    assert set(decisions) == {False, True}  # the comparison covers both decisions


@pytest.mark.slow
def test_an_existing_version_is_refused_without_force_and_others_are_kept(checkpoint, tmp_path):
    first = export_triton(checkpoint, tmp_path, settings=TritonSettings(max_batch_size=2))
    v1 = {p: p.read_bytes() for p in (first.config_path, first.model_path)}
    with pytest.raises(AdpsError, match=r"version 1 of Triton model 'bottle' exists.*--force"):
        export_triton(checkpoint, tmp_path, settings=TritonSettings(max_batch_size=4))
    assert {p: p.read_bytes() for p in v1} == v1

    second = export_triton(checkpoint, tmp_path, version=2)
    assert second.model_path == tmp_path / "bottle" / "2" / "model.onnx"
    assert first.model_path.read_bytes() == v1[first.model_path]  # version 1 kept
    assert parse(second.config_path).parameters["adps_model_version"].string_value == "2"

    export_triton(checkpoint, tmp_path, settings=TritonSettings(max_batch_size=4), force=True)
    assert parse(first.config_path).max_batch_size == 4
    assert second.model_path.is_file()
    assert sorted(p.name for p in (tmp_path / "bottle").iterdir()) == ["1", "2", "config.pbtxt"]
    assert not list(tmp_path.rglob(".*"))  # no staging folder left


def test_a_failed_export_leaves_the_repository_as_it_was(checkpoint, tmp_path, monkeypatch):
    import adps.export_triton

    def broken(source, out, *args, **kwargs):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(b"half a model")
        raise RuntimeError("the export failed")

    monkeypatch.setattr(adps.export_triton, "export_onnx", broken)
    with pytest.raises(RuntimeError, match="the export failed"):
        export_triton(checkpoint, tmp_path / "new")
    assert list((tmp_path / "new").iterdir()) == []  # no model folder, no staging folder

    monkeypatch.undo()
    first = export_triton(checkpoint, tmp_path / "old")
    before = {p: p.read_bytes() for p in first.model_dir.rglob("*") if p.is_file()}
    monkeypatch.setattr(adps.export_triton, "export_onnx", broken)
    with pytest.raises(RuntimeError, match="the export failed"):
        export_triton(checkpoint, tmp_path / "old", force=True)
    after = {p: p.read_bytes() for p in first.model_dir.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize(
    "name", ["", "a/b", "..", ".hidden", "two words", "bottle?v=2", "caf\u00e9", "x" * 256]
)
def test_names_triton_cannot_serve_are_refused_before_anything_is_written(
    name, checkpoint, tmp_path
):
    with pytest.raises(AdpsError, match="Triton model name"):
        export_triton(checkpoint, tmp_path / "repo", name=name)
    assert not (tmp_path / "repo").exists()


def test_the_default_name_is_the_checkpoints_stem_and_a_bad_one_asks_for_name(checkpoint, tmp_path):
    assert check_model_name("line-3_bottle.v2") == "line-3_bottle.v2"
    odd = shutil.copy(checkpoint, tmp_path / "my model.pt")
    with pytest.raises(AdpsError, match=r"my model\.pt: 'my model' cannot be.*--name"):
        export_triton(odd, tmp_path / "repo")
    with pytest.raises(AdpsError, match="in-memory model"):
        export_triton(Checkpoint.load(checkpoint), tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 4, "preferred_batch_sizes": (8,)}, "preferred_batch_sizes"),
        ({"preferred_batch_sizes": (2, 2)}, "preferred_batch_sizes"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us"),
        ({"instance_count": 0}, "instance_count"),
        ({"instance_kind": "tpu"}, "instance_kind"),
        ({"max_batch_size": 2.5}, "max_batch_size"),
    ],
)
def test_settings_refuse_bad_values(settings, field):
    with pytest.raises(AdpsError, match=f"triton {field}"):
        TritonSettings(**settings)


def test_without_tritonclient_the_same_config_is_written_unvalidated(
    checkpoint, tmp_path, monkeypatch
):
    with monkeypatch.context() as patch:
        for module in ("tritonclient", "tritonclient.grpc", "tritonclient.grpc.model_config_pb2"):
            patch.setitem(sys.modules, module, None)  # import raises ImportError
        result = export_triton(checkpoint, tmp_path, settings=SETTINGS)
        assert not result.validated
        assert not validate_triton_config(result.config_path.read_text())
    text = result.config_path.read_text()
    assert validate_triton_config(text, "bottle")  # tritonclient is back: the file is valid
    model_id = result.parameters["adps_model_id"]
    assert text == triton_config("bottle", result.model_path, SETTINGS, model_id, version=1)


def test_a_config_triton_would_refuse_fails_validation(repo):
    with pytest.raises(RuntimeError, match="does not parse"):
        validate_triton_config('name: "bottle"\nmax_batch_sise: 8\n')
    with pytest.raises(RuntimeError, match="names model 'bottle'"):
        validate_triton_config(repo.config_path.read_text(), "other")


def test_cli_refusals(checkpoint, repo, tmp_path, capsys):
    out = str(repo.model_dir.parent)
    base = ["export", "--model", str(checkpoint)]
    assert main([*base, "--format", "triton", "--out", out]) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*base, "--name", "x", "--force", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--name, --force: only with --format triton" in capsys.readouterr().err
    assert main([*base, "--format", "triton", "--out", out, "--name", "a b"]) == 2
    assert "cannot be a Triton model name" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.integration
def test_cli_writes_the_repository_without_importing_ray(checkpoint, tmp_path):
    """`adps export --format triton` in a fresh interpreter: the repository as asked, and
    nothing from Ray imported."""
    repo = tmp_path / "models"
    args = [
        "export",
        "--model",
        str(checkpoint),
        "--format",
        "triton",
        "--out",
        str(repo),
        "--name",
        "line-3",
        "--model-version",
        "3",
        "--max-batch-size",
        "16",
        "--preferred-batch-sizes",
        "8",
        "16",
        "--max-queue-delay-us",
        "100",
        "--instance-kind",
        "gpu",
        "--instance-count",
        "2",
    ]
    code = (
        "import json, sys\n"
        "from adps.cli import main\n"
        f"rc = main({args!r})\n"
        "print(json.dumps({'rc': rc, 'ray': sorted(m for m in sys.modules "
        "if m == 'ray' or m.startswith('ray.'))}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"rc": 0, "ray": []}
    assert "validated with Triton's model-config schema" in done.stdout
    assert f"tritonserver --model-repository={repo.resolve()}" in done.stdout
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        "line-3",
        "line-3/3",
        "line-3/3/model.onnx",
        "line-3/config.pbtxt",
    ]
    config = parse(repo / "line-3" / "config.pbtxt")
    assert config.name == "line-3"
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    [group] = config.instance_group
    assert group.count == 2 and group.kind == 1  # KIND_GPU
    assert config.parameters["adps_model_version"].string_value == "3"
