"""Running exported graphs: ONNX through onnxruntime, TorchScript through torch.jit.

:mod:`adps.export` writes the graphs; this module reads them back, so the predictor (an engine
module) runs a deployed file without importing the exporter. The metadata format both sides
agree on lives here, at the lower layer: an export is a graph plus one JSON document (adps
version, image size, input dtype, mean/std, thresholds, model config), stored in the ONNX model's
``metadata_props`` under :data:`METADATA_KEY` and in a TorchScript archive as the extra file
:data:`TORCHSCRIPT_EXTRA`.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adps.data.datasets import normalize_size
from adps.engine.calibrate import Thresholds
from adps.engine.device import cpu_has_bf16
from adps.errors import AdpsError

__all__ = [
    "EXPORT_FORMAT",
    "INPUT_DTYPES",
    "INPUT_NAME",
    "METADATA_KEY",
    "OUTPUT_NAMES",
    "TORCHSCRIPT_EXTRA",
    "OnnxRunner",
    "OpenVinoRunner",
    "load_torchscript",
    "quiet_export",
    "read_onnx_metadata",
]

EXPORT_FORMAT = "adps-export-v2"  # v2: metadata derived from the checkpoint, nothing twice
READABLE_EXPORTS = ("adps-export-v1", EXPORT_FORMAT)
METADATA_KEY = "adps"  # ONNX metadata_props key
TORCHSCRIPT_EXTRA = "adps.json"  # TorchScript _extra_files name
INPUT_NAME = "images"
OUTPUT_NAMES = ("anomaly_map", "score")
INPUT_DTYPES = ("uint8", "float32")

_OPENVINO_BATCH_SIZES = 8  # compiled graphs an OpenVinoRunner keeps, one per batch size
# matched from the message's start, hence the leading ".*"
_NOISE = re.compile(
    r".*(legacy TorchScript-based ONNX export|Constant folding - Only steps=1|"
    r"`torch\.jit\.\w+` is deprecated|The feature will be removed|"
    r"__array_wrap__)"
)


class quiet_export(warnings.catch_warnings):
    """Hides the exporters' and loaders' known, harmless warnings (deprecations, a constant-
    folding note), which would otherwise reach users on every export and every load."""

    def __enter__(self):
        result = super().__enter__()
        warnings.filterwarnings("ignore", message=_NOISE.pattern)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return result


def parse_metadata(props: dict[str, str], path: Path, what: str = "ONNX") -> dict:
    """The adps metadata of an export, checked enough that a predictor can rely on it."""
    raw = props.get(METADATA_KEY)
    if raw is None:
        raise AdpsError(
            f"is not an adps {what} export (no adps metadata); export one with `adps export`", path
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AdpsError(f"has unreadable adps metadata ({exc})", path) from exc
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_EXPORTS:
        raise AdpsError(
            f"is not an adps export of a known format (expected one of "
            f"{', '.join(READABLE_EXPORTS)})",
            path,
        )
    config = meta.get("model_config")
    size = config.get("image_size") if isinstance(config, dict) else None
    if meta.get("input_dtype") not in INPUT_DTYPES or not (
        isinstance(size, int)
        or (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(side, int) for side in size)
        )
    ):
        raise AdpsError("has incomplete adps metadata (input_dtype, model_config.image_size)", path)
    meta["image_size"] = tuple(size) if isinstance(size, list) else size  # read from one place
    return meta


def read_onnx_metadata(path: str | Path) -> dict:
    """The adps metadata of an ONNX export (reads the file; no inference session)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise AdpsError("ONNX model not found", path)
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise AdpsError(f"cannot be read as an ONNX model ({exc})", path) from exc
    return parse_metadata({p.key: p.value for p in proto.metadata_props}, path)


def _default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _to_input_dtype(
    images: Any, input_dtype: str, size: tuple[int, int], path: Path | None
) -> np.ndarray:
    """(B,3,H,W) uint8 or float array -> what the graph takes (uint8 0..255 / float32 [0,1])."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != size:
        raise AdpsError(
            f"images must be (B, 3, {size[0]}, {size[1]}) (RGB, channels first, at the "
            f"exported size), got {images.shape}",
            path,
        )
    if images.dtype == np.uint8:
        if input_dtype == "uint8":
            return np.ascontiguousarray(images)
        return images.astype(np.float32) * np.float32(1 / 255)
    if np.issubdtype(images.dtype, np.floating):
        if input_dtype == "float32":
            return np.ascontiguousarray(images, dtype=np.float32)
        # float [0, 1] into a uint8 graph: the same quantisation as reading an 8-bit image
        return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    raise AdpsError(f"images must be uint8 (0..255) or float (0..1), got {images.dtype}", path)


class _GraphRunner:
    """What the ONNX and OpenVINO runners share: the metadata's fields and the input check."""

    path: Path

    def _read_metadata(self, metadata: dict) -> None:
        self.metadata = metadata
        self.image_size: int | tuple[int, int] = metadata["image_size"]
        size = normalize_size(self.image_size)  # (height, width)
        assert size is not None  # an export always records its input size
        self.size = size
        self.input_dtype: str = metadata["input_dtype"]
        self.thresholds = Thresholds.from_dict(metadata.get("thresholds"))

    def _input(self, images: Any) -> np.ndarray:
        return _to_input_dtype(images, self.input_dtype, self.size, self.path)


class OnnxRunner(_GraphRunner):
    """Runs an adps ONNX export with onnxruntime.

    ``providers`` defaults to CUDA when onnxruntime has it, else CPU. ``threads`` sets
    onnxruntime's intra-op thread count (None = its default). Attributes: ``image_size``,
    ``input_dtype``, ``metadata`` (the export's JSON), ``thresholds`` (:class:`Thresholds`),
    ``providers`` (those the session uses).
    """

    def __init__(
        self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None
    ):
        import onnxruntime as ort

        self.path = path = Path(path)
        if not path.is_file():
            raise AdpsError("ONNX model not found", path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path),
                sess_options=options,
                providers=list(providers) if providers else _default_providers(),
            )
        except Exception as exc:
            raise AdpsError(f"cannot be loaded as an ONNX model ({exc})", path) from exc
        self._read_metadata(parse_metadata(self.session.get_modelmeta().custom_metadata_map, path))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        if len(self.output_names) != 2:
            raise AdpsError(
                f"has {len(self.output_names)} outputs, expected 2 (anomaly_map, score)", path
            )
        self.providers = self.session.get_providers()

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,3,H,W) uint8 or float32 images -> (maps float32 (B,1,H,W), scores float32 (B,))."""
        x = self._input(images)
        maps, scores = self.session.run(self.output_names, {self.input_name: x})
        return maps.astype(np.float32, copy=False), scores.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return (
            f"OnnxRunner({str(self.path)!r}, image_size={self.image_size}, "
            f"input_dtype={self.input_dtype!r}, providers={self.providers})"
        )


class OpenVinoRunner(_GraphRunner):
    """Runs an adps OpenVINO export (``model.xml`` + ``model.bin``) with the OpenVINO runtime,
    with the same call and attributes as :class:`OnnxRunner`. ``device`` is OpenVINO's
    ("CPU", "GPU", ...); ``threads`` its inference thread count (None = its default);
    ``precision`` "f32" (the same maps as torch) or "bf16" (faster on CPUs with native bf16, at
    the cost of maps that move: benchmarks/bench_openvino.py measures both); "auto" = bf16 on a
    CPU with native bf16, else f32; None = what the export says."""

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        threads: int | None = None,
        precision: str | None = None,
    ):
        try:
            import openvino as ov
        except ImportError as exc:
            raise AdpsError(
                "running an OpenVINO model needs the openvino package (pip install "
                "'adps[openvino]')",
                path,
            ) from exc
        self.path = path = Path(path)
        if not path.is_file() or not path.with_suffix(".bin").is_file():
            raise AdpsError("OpenVINO model not found (needs the .xml and its .bin)", path)
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise AdpsError(f"cannot be read as an OpenVINO model ({exc})", path) from exc
        raw = (
            model.get_rt_info([METADATA_KEY]).astype(str)
            if model.has_rt_info([METADATA_KEY])
            else None
        )
        self._read_metadata(
            parse_metadata({} if raw is None else {METADATA_KEY: raw}, path, "OpenVINO")
        )
        # float32 unless asked, like the other backends: on CPUs with native bf16 OpenVINO
        # would otherwise pick bf16 itself
        precision = precision or self.metadata.get("inference_precision", "f32")
        if precision == "auto":
            precision = "bf16" if device == "CPU" and cpu_has_bf16() else "f32"
        if precision not in ("f32", "bf16"):
            raise AdpsError(
                f"OpenVINO precision must be 'f32', 'bf16' or 'auto', got {precision!r}", path
            )
        self.precision = precision
        self.device = device
        self._core, self._model = core, model
        self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        if threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._requests: OrderedDict[int, Any] = OrderedDict()  # batch size -> infer request
        self._request(1)  # compile now, so a broken model fails here and not on first use

    def _request(self, batch: int):
        """The infer request of a graph compiled for exactly ``batch`` images (the most recent
        :data:`_OPENVINO_BATCH_SIZES` kept). With the batch left dynamic OpenVINO ran the
        default recipe's graph (the memory prior) markedly slower at batch 1 (measured with
        benchmarks/bench_inference.py), and a static graph compiles quickly."""
        request = self._requests.get(batch)
        if request is None:
            model = self._model.clone()
            model.reshape({0: [batch, *self._model.input(0).get_partial_shape()[1:]]})
            request = self._core.compile_model(
                model, self.device, self._config
            ).create_infer_request()
            self._requests[batch] = request
            if len(self._requests) > _OPENVINO_BATCH_SIZES:
                self._requests.popitem(last=False)
        self._requests.move_to_end(batch)
        return request

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,3,H,W) uint8 or float32 images -> (maps float32 (B,1,H,W), scores float32 (B,))."""
        x = self._input(images)
        request = self._request(len(x))
        request.infer({0: x})
        maps, scores = (request.get_output_tensor(i).data for i in range(2))
        return (
            np.array(maps, dtype=np.float32, copy=True),
            np.array(scores, dtype=np.float32, copy=True),
        )

    def __repr__(self) -> str:
        return f"OpenVinoRunner({str(self.path)!r}, device={self.device!r})"


def load_torchscript(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.jit.ScriptModule, dict]:
    """Loads a TorchScript export: ``(module, metadata)``; ``module(images)`` returns
    ``(anomaly_map (B,1,H,W), score (B,))`` for images of the exported dtype."""
    path = Path(path)
    if not path.is_file():
        raise AdpsError("TorchScript model not found", path)
    extra = {TORCHSCRIPT_EXTRA: ""}
    try:
        with quiet_export():
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:
        raise AdpsError(f"cannot be loaded as a TorchScript model ({exc})", path) from exc
    raw = extra[TORCHSCRIPT_EXTRA]
    if not raw:
        raise AdpsError("is not an adps TorchScript export (no adps.json metadata)", path)
    props = {METADATA_KEY: raw.decode("utf-8") if isinstance(raw, bytes) else raw}
    return module.eval(), parse_metadata(props, path, "TorchScript")
