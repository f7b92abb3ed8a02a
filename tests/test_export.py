"""ONNX / TorchScript exports: parity with the eager model on real images, dynamic batch,
metadata round trip, and clear errors for files that are not adps exports.

The model is ADPS(image_size=128, k=4) with the pretrained Lite0 teacher and a random student
and PSM; the PSM head is rescaled so the anomaly maps spread over (0, 1) on the test images
(a random-init PSM gives maps near 0.5, which would make parity checks weak).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adps.config import ModelConfig
from adps.engine.calibrate import Thresholds
from adps.engine.runtime import OnnxRunner, load_torchscript, read_onnx_metadata
from adps.errors import AdpsError
from adps.export import DeployModule, export_onnx, export_torchscript
from adps.models.adps import ADPS
from datapaths import WELD

SIZE, K = 128, 4
TOL = 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """uint8 (5, 3, 128, 128): real images on every clone, from the battery-weld subset in
    tests/data: the first 2 test/good and the first 3 test/defective images (grey, replicated
    to RGB by the loader; masks are not needed here)."""
    from adps.data.datasets import Folder

    ds = Folder(
        WELD,
        normal_test_dir="test/good",
        abnormal_test_dir="test/defective",
        mask_required=False,
        split="test",
        size=SIZE,
    )
    good = [i for i, label in enumerate(ds.labels) if label == 0][:2]
    defective = [i for i, label in enumerate(ds.labels) if label == 1][:3]
    assert len(good) == 2 and len(defective) == 3
    return torch.stack([ds.decode(i).image for i in good + defective])


@pytest.fixture(scope="module")
def model(images) -> ADPS:
    torch.manual_seed(0)
    model = ADPS(ModelConfig(image_size=SIZE, k=K)).eval()
    head = model.psm.head
    captured = {}
    hook = head.register_forward_hook(lambda m, i, o: captured.setdefault("logits", o))
    with torch.no_grad():
        head.bias.zero_()
        model(images.float() / 255)
        hook.remove()
        diff = captured["logits"][:, 1] - captured["logits"][:, 0]
        scale = 3.0 / diff.std().item()  # logit differences ~ N(0, 3): p spreads over (0, 1)
        head.weight.mul_(scale)
        head.bias[1] = -scale * diff.mean().item()
    return model


@pytest.fixture(scope="module")
def reference(model, images):
    with torch.no_grad():
        maps, scores = model(images.float() / 255)
    return maps.numpy(), scores.numpy()


@pytest.fixture(scope="module")
def checkpoint_path(model, tmp_path_factory) -> Path:
    from adps.engine.checkpoint import Checkpoint

    ckpt = Checkpoint.of(model, thresholds=Thresholds(image=0.625))
    return ckpt.save(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def onnx_uint8(checkpoint_path, tmp_path_factory) -> Path:
    return export_onnx(checkpoint_path, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def onnx_float(model, tmp_path_factory) -> Path:
    return export_onnx(
        model,
        tmp_path_factory.mktemp("onnx") / "model_f32.onnx",
        input_dtype="float32",
        thresholds=Thresholds(image=0.3),
        verify=False,
    )


@pytest.fixture(scope="module")
def torchscript_uint8(checkpoint_path, tmp_path_factory) -> Path:
    return export_torchscript(checkpoint_path, tmp_path_factory.mktemp("ts") / "model.pt")


def _assert_parity(maps, scores, reference, index=slice(None)):
    ref_maps, ref_scores = reference[0][index], reference[1][index]
    assert maps.dtype == np.float32 and scores.dtype == np.float32
    assert maps.shape == ref_maps.shape and scores.shape == ref_scores.shape
    assert np.abs(maps - ref_maps).max() < TOL
    assert np.abs(scores - ref_scores).max() < TOL


def test_maps_are_not_trivial(reference):
    maps, scores = reference
    assert maps.min() < 0.2 and maps.max() > 0.8  # parity is checked over the whole range
    assert maps.shape == (5, 1, SIZE, SIZE) and scores.shape == (5,)


def test_deploy_module_matches_model(model, images, reference):
    with torch.no_grad():
        maps, scores = DeployModule(model, "uint8").eval()(images[:2])
        maps_f, scores_f = DeployModule(model, "float32").eval()(images[:2].float() / 255)
    _assert_parity(maps.numpy(), scores.numpy(), reference, slice(0, 2))
    _assert_parity(maps_f.numpy(), scores_f.numpy(), reference, slice(0, 2))
    with pytest.raises(AdpsError):
        DeployModule(model, "float16")


def test_onnx_uint8_parity_and_dynamic_batch(onnx_uint8, images, reference):
    runner = OnnxRunner(onnx_uint8)
    assert runner.input_dtype == "uint8" and runner.image_size == SIZE
    x = images.numpy()
    _assert_parity(*runner(x), reference)  # batch 5
    _assert_parity(*runner(x[:1]), reference, slice(0, 1))  # batch 1
    _assert_parity(*runner(x[1:4]), reference, slice(1, 4))  # batch 3
    shape = runner.session.get_inputs()[0].shape
    assert isinstance(shape[0], str) and shape[1:] == [3, SIZE, SIZE]


def test_onnx_float_parity_and_dynamic_batch(onnx_float, images, reference):
    runner = OnnxRunner(onnx_float, providers=["CPUExecutionProvider"])
    assert runner.input_dtype == "float32"
    assert runner.session.get_inputs()[0].type == "tensor(float)"
    x = images.numpy().astype(np.float32) / 255
    _assert_parity(*runner(x[:1]), reference, slice(0, 1))
    _assert_parity(*runner(x[2:5]), reference, slice(2, 5))


def test_runner_converts_input_dtype(onnx_uint8, onnx_float, images, reference):
    x = images.numpy()
    _assert_parity(
        *OnnxRunner(onnx_uint8)(x[:2].astype(np.float32) / 255), reference, slice(0, 2)
    )  # float [0,1] into a uint8 graph: exact for 8-bit images
    _assert_parity(*OnnxRunner(onnx_float)(x[:2]), reference, slice(0, 2))  # uint8 -> float
    with pytest.raises(AdpsError, match=r"\(B, 3, 128, 128\)"):
        OnnxRunner(onnx_uint8)(x[:, :, :64, :64])
    with pytest.raises(AdpsError, match="uint8"):
        OnnxRunner(onnx_uint8)(x.astype(np.int32))


def test_onnx_metadata_round_trip(onnx_uint8, onnx_float, model):
    import onnx

    runner = OnnxRunner(onnx_uint8)
    meta = runner.metadata
    assert meta == read_onnx_metadata(onnx_uint8)
    assert meta["format"] == "adps-export-v2" and meta["kind"] == "onnx"
    assert meta["input_shape"] == ["batch", 3, SIZE, SIZE] and meta["input_dtype"] == "uint8"
    assert meta["preprocess"]["backbone"] == "efficientnet_lite0"
    assert meta["preprocess"]["mean"] == [0.5, 0.5, 0.5] == meta["preprocess"]["std"]
    assert meta["model_config"]["k"] == K and meta["model_config"]["image_size"] == SIZE
    assert meta["image_size"] == SIZE  # read back from the model config, stored once
    assert runner.thresholds == Thresholds(image=0.625)  # from the checkpoint
    assert meta["exporter"] in ("torchscript", "dynamo") and meta["opset"] >= 17
    from adps import __version__

    assert meta["adps_version"] == __version__
    float_meta = OnnxRunner(onnx_float).metadata
    assert float_meta["input_dtype"] == "float32"
    assert Thresholds.from_dict(float_meta["thresholds"]) == Thresholds(image=0.3)  # given
    onnx.checker.check_model(onnx.load(str(onnx_uint8)))


def test_non_adps_onnx_is_an_adps_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
    )
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(plain))
    with pytest.raises(AdpsError, match="not an adps ONNX export") as info:
        OnnxRunner(plain)
    assert "plain.onnx" in str(info.value)
    with pytest.raises(AdpsError, match="not an adps ONNX export"):
        read_onnx_metadata(plain)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(AdpsError, match=r"garbage\.onnx"):
        OnnxRunner(garbage)
    with pytest.raises(AdpsError, match="not found"):
        OnnxRunner(tmp_path / "missing.onnx")


def test_torchscript_parity_batch_and_metadata(torchscript_uint8, images, reference):
    module, meta = load_torchscript(torchscript_uint8)
    assert meta["kind"] == "torchscript" and meta["input_dtype"] == "uint8"
    assert meta["image_size"] == SIZE
    assert Thresholds.from_dict(meta["thresholds"]) == Thresholds(image=0.625)
    with torch.no_grad():  # traced at batch 2: batches 1 and 3 must still be right
        for index in (slice(0, 1), slice(1, 4)):
            maps, scores = module(images[index])
            _assert_parity(maps.numpy(), scores.numpy(), reference, index)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_non_adps_torchscript_is_an_adps_error(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), str(plain))
    with pytest.raises(AdpsError, match="not an adps TorchScript export"):
        load_torchscript(plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"nope")
    with pytest.raises(AdpsError, match=r"garbage\.pt"):
        load_torchscript(garbage)


@pytest.mark.slow
def test_onnx_dynamo_exporter(model, images, reference, tmp_path):
    path = export_onnx(model, tmp_path / "dynamo.onnx", exporter="dynamo")
    runner = OnnxRunner(path)
    assert runner.metadata["exporter"] == "dynamo" and runner.metadata["opset"] >= 18
    x = images.numpy()
    _assert_parity(*runner(x[:1]), reference, slice(0, 1))
    _assert_parity(*runner(x[1:4]), reference, slice(1, 4))


@pytest.mark.slow
def test_the_image_score_and_psm_stride_travel_inside_the_graph(images, tmp_path):
    """A model with the top-mean image score and the PSM at stride 2 exports with both inside
    the graph: ONNX scores and maps equal the eager model's, and the metadata names them."""
    torch.manual_seed(1)
    config = ModelConfig(
        image_size=SIZE, k=K, psm_output_stride=2, image_score="top_mean", score_top_share=0.05
    )
    model = ADPS(config).eval()
    with torch.no_grad():
        want = model(images.float() / 255)
    runner = OnnxRunner(export_onnx(model, tmp_path / "m.onnx"))
    assert runner.metadata["model_config"]["image_score"] == "top_mean"
    assert runner.metadata["model_config"]["psm_output_stride"] == 2
    maps, scores = runner(images.numpy())
    assert np.abs(maps - want[0].numpy()).max() < TOL
    assert np.abs(scores - want[1].numpy()).max() < TOL


# ------------------------------------------------------------------------------------ OpenVINO


@pytest.fixture(scope="module")
def openvino_uint8(checkpoint_path, tmp_path_factory) -> Path:
    pytest.importorskip("openvino")
    from adps.export import export_openvino

    return export_openvino(checkpoint_path, tmp_path_factory.mktemp("ov") / "model.xml")


def test_openvino_parity_batch_and_metadata(openvino_uint8, images, reference):
    from adps.engine.runtime import OpenVinoRunner

    assert openvino_uint8.with_suffix(".bin").is_file()
    runner = OpenVinoRunner(openvino_uint8)
    assert runner.metadata["kind"] == "openvino" and runner.input_dtype == "uint8"
    assert runner.metadata["model_config"]["k"] == K and runner.size == (SIZE, SIZE)
    assert runner.thresholds == Thresholds(image=0.625)
    x = images.numpy()
    _assert_parity(*runner(x), reference)  # batch 5
    _assert_parity(*runner(x[:1]), reference, slice(0, 1))
    _assert_parity(*runner(x[1:4].astype(np.float32) / 255), reference, slice(1, 4))


def test_openvino_predictor_equals_the_checkpoints(openvino_uint8, checkpoint_path):
    from adps.export import load_predictor

    files = sorted((WELD / "test/defective").glob("*.png"))[:2]
    for ov_pred, pt_pred in zip(
        load_predictor(openvino_uint8, "cpu")(files),
        load_predictor(checkpoint_path, "cpu", backend="torch")(files),
        strict=True,
    ):
        assert abs(ov_pred.score - pt_pred.score) < TOL
        assert np.abs(ov_pred.anomaly_map - pt_pred.anomaly_map).max() < TOL


def test_openvino_errors_name_the_file(tmp_path, onnx_uint8):
    pytest.importorskip("openvino")
    from adps.engine.runtime import OpenVinoRunner
    from adps.export import export_openvino

    with pytest.raises(AdpsError, match=r"missing\.xml"):
        OpenVinoRunner(tmp_path / "missing.xml")
    with pytest.raises(AdpsError, match=r"\.xml"):
        export_openvino(onnx_uint8, tmp_path / "model.onnx")
    import openvino as ov

    plain = ov.convert_model(str(onnx_uint8))  # no adps metadata in its rt_info
    ov.save_model(plain, str(tmp_path / "plain.xml"))
    with pytest.raises(AdpsError, match="not an adps OpenVINO export"):
        OpenVinoRunner(tmp_path / "plain.xml")


@pytest.mark.slow
def test_openvino_bf16_precision_travels_in_the_file(checkpoint_path, images, reference, tmp_path):
    pytest.importorskip("openvino")
    from adps.engine.runtime import OpenVinoRunner
    from adps.export import export_openvino

    path = export_openvino(checkpoint_path, tmp_path / "bf16.xml", precision="bf16")
    runner = OpenVinoRunner(path)
    assert runner.precision == "bf16" and runner.metadata["inference_precision"] == "bf16"
    maps, _scores = runner(images.numpy())
    assert np.abs(maps - reference[0]).mean() < 0.05  # close on average, not bit-exact
    exact = OpenVinoRunner(path, precision="f32")  # the caller can still ask for float32
    _assert_parity(*exact(images.numpy()), reference)
    with pytest.raises(AdpsError, match="precision"):
        OpenVinoRunner(path, precision="fp8")


def test_load_predictor_gives_its_thread_count_to_the_runtimes(
    onnx_uint8, openvino_uint8, images, reference, monkeypatch
):
    """A Ray actor or worker holds a share of the cores: the ONNX Runtime session and the
    OpenVINO compiled model get that many threads (their default is every core)."""
    import adps.engine.runtime as runtime
    from adps.export import load_predictor

    made: list = []

    def recording(cls):
        class Recording(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append(self)

        return Recording

    monkeypatch.setattr(runtime, "OnnxRunner", recording(runtime.OnnxRunner))
    monkeypatch.setattr(runtime, "OpenVinoRunner", recording(runtime.OpenVinoRunner))
    for threads in (1, 2):
        load_predictor(onnx_uint8, "cpu", threads=threads)
        session = made.pop().session
        assert session.get_session_options().intra_op_num_threads == threads
        predictor = load_predictor(openvino_uint8, "cpu", threads=threads)
        runner = made.pop()
        _assert_parity(*runner(images.numpy()), reference)
        compiled = runner._request(len(images)).get_compiled_model()
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == threads
        assert predictor.runtime.startswith("openvino")
