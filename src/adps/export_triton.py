"""A Triton Inference Server model repository from a checkpoint: ``<repo>/<name>/config.pbtxt``
and ``<repo>/<name>/<version>/model.onnx``, for lines that already run Triton or KServe.

The model file is :func:`adps.export.export_onnx`'s graph, verified against torch like every
export; this module only lays out the repository and writes the configuration. The config is
read off the ONNX file just written, not restated from what we believe the exporter does: the
input and outputs get the graph's names, element types and shapes (a symbolic dimension
becomes ``-1``, as Triton's onnxruntime backend compares output shapes exactly), with the batch
axis left to Triton (``max_batch_size``). An output whose only axis is the batch (``score``)
is declared ``dims: [1]`` with ``reshape { shape: [] }``, Triton's form for such a tensor, so a
client receives ``score`` as ``(B, 1)``.

The text of ``config.pbtxt`` is written here rather than generated from Triton's own protobuf
message (``tritonclient.grpc.model_config_pb2.ModelConfig`` and ``text_format.
MessageToString``): ``tritonclient`` is a development dependency only, and generating the file
from it where it is installed and by hand elsewhere would make the same export write different
files on a developer's machine and on the line. One writer gives one file everywhere; where
``tritonclient`` is installed (the dev extra, hence every test run) the text is then parsed with
Triton's schema before anything is written, which catches any field, enum or syntax the hand
writer got wrong. Without it the config is written unvalidated, and :class:`TritonExport` says
so (``validated=False``). Strings are escaped with protobuf's own text escaper.

The repository is written atomically: the model folder (a new model) or the version folder and
config (a model folder that exists, e.g. with other versions) are built in a hidden staging
folder beside their target and renamed into place, so a Triton polling the repository never
loads half a model. Staging names start with a dot and a letter, which Triton ignores as
version folders.

The OpenVINO backend of Triton is not offered: its handling of a dynamic batch needs
backend-specific parameters that could not be checked without a server, and the onnxruntime
backend serves the same graph (and can itself run it through OpenVINO, see
docs/guide/deploying.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from adps.engine.runtime import read_onnx_metadata
from adps.errors import AdpsError
from adps.export import InputDtype, Source, export_onnx
from adps.fileio import atomic_write_text, file_sha256
from adps.version import __version__

if TYPE_CHECKING:
    from adps.engine.calibrate import Thresholds

__all__ = [
    "INSTANCE_KINDS",
    "TritonExport",
    "TritonSettings",
    "check_model_name",
    "export_triton",
    "triton_config",
    "validate_triton_config",
]

CONFIG_NAME = "config.pbtxt"
MODEL_FILE = "model.onnx"  # the onnxruntime backend's default file name
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# ONNX TensorProto element types -> Triton data types (what an adps graph can carry)
_TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 10: "TYPE_FP16", 16: "TYPE_BF16"}
# a folder name Triton can load and clients can address in /v2/models/<name> URLs and gRPC
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_NAME_MAX = 255  # bytes in a file name on common file systems


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_DIR_MODE = 0o777 & ~_umask()  # what mkdir gives; mkdtemp alone gives 0700, which a server
# running as another user (a container) could not read


@dataclass(frozen=True)
class TritonSettings:
    """How Triton schedules the model; the defaults are ``adps serve``'s batching (8 images,
    5 ms), which lets the frames of a few cameras share a batch at little latency.

    ``preferred_batch_sizes`` is empty by default, as Triton's guide recommends unless one size
    is measured to run faster: the batcher then forms batches up to ``max_batch_size``.
    ``instance_kind`` "auto" puts the model on the GPUs where the server has them and on the
    CPU otherwise, so one repository serves both; "cpu"/"gpu" pin it.
    """

    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 5000
    instance_kind: Literal["auto", "cpu", "gpu"] = "auto"
    instance_count: int = 1

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue_delay_us", "instance_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise AdpsError(f"triton {name}: must be an integer, got {value!r}")
        if self.max_batch_size < 1:
            raise AdpsError(
                f"triton max_batch_size: must be at least 1 (the graph has a batch axis), "
                f"got {self.max_batch_size}"
            )
        if self.max_queue_delay_us < 0:
            raise AdpsError(
                f"triton max_queue_delay_us: must be 0 or more, got {self.max_queue_delay_us}"
            )
        if self.instance_count < 1:
            raise AdpsError(f"triton instance_count: must be at least 1, got {self.instance_count}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise AdpsError(
                f"triton instance_kind: must be one of {', '.join(INSTANCE_KINDS)}, "
                f"got {self.instance_kind!r}"
            )
        sizes = tuple(self.preferred_batch_sizes)
        valid = all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= self.max_batch_size
            for s in sizes
        )
        if not valid or len(set(sizes)) != len(sizes):
            raise AdpsError(
                f"triton preferred_batch_sizes: must be distinct integers from 1 to "
                f"max_batch_size ({self.max_batch_size}), got {list(sizes)}"
            )
        object.__setattr__(self, "preferred_batch_sizes", sizes)


@dataclass(frozen=True)
class TritonExport:
    """What :func:`export_triton` wrote. ``validated``: the config was parsed with Triton's
    schema (False where ``tritonclient`` is not installed)."""

    model_dir: Path
    config_path: Path
    model_path: Path
    validated: bool
    parameters: dict[str, str] = field(default_factory=dict)


def check_model_name(name: str) -> str:
    """``name`` if it can be a Triton model's folder name, else an :class:`AdpsError`.

    Triton takes the model's name from its folder and clients put it in URL paths
    (``/v2/models/<name>/infer``): a name is letters, digits, ``_``, ``-`` and ``.``, not
    starting with a dot (a hidden folder, which storage syncs skip and which our staging
    folders use), at most 255 bytes.
    """
    if not isinstance(name, str) or not name:
        raise AdpsError("a Triton model name must not be empty")
    if len(name.encode()) > _NAME_MAX or not _NAME.fullmatch(name):
        raise AdpsError(
            f"'{name}' cannot be a Triton model name: use letters, digits, '_', '-' and '.', "
            f"not starting with '.', at most {_NAME_MAX} characters"
        )
    return name


# --------------------------------------------------------------------------- the config


def _tensors(graph) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """(name, Triton type, dims without the batch axis) of the graph's inputs and outputs."""
    initializers = {t.name for t in graph.initializer}

    def spec(value) -> tuple[str, str, list[int]]:
        tensor = value.type.tensor_type
        if tensor.elem_type not in _TRITON_TYPES:
            raise RuntimeError(f"ONNX tensor '{value.name}' has element type {tensor.elem_type}")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if not dims or tensor.shape.dim[0].HasField("dim_value"):
            raise RuntimeError(f"ONNX tensor '{value.name}' has no dynamic batch axis")
        return value.name, _TRITON_TYPES[tensor.elem_type], dims[1:]

    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]


def _quote(text: str) -> str:
    from google.protobuf import text_encoding

    return '"' + text_encoding.CEscape(text, as_utf8=True) + '"'


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]" if dims else "[ ]"


def _io_block(tensors: list[tuple[str, str, list[int]]], nchw: bool) -> str:
    entries = []
    for name, dtype, dims in tensors:
        lines = [f"    name: {_quote(name)}", f"    data_type: {dtype}"]
        if nchw and len(dims) == 3:
            lines.append("    format: FORMAT_NCHW")
        if dims:
            lines.append(f"    dims: {_dims(dims)}")
        else:  # only the batch axis: Triton's form for it, the client sees (B, 1)
            lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        entries.append("  {\n" + "\n".join(lines) + "\n  }")
    return "[\n" + ",\n".join(entries) + "\n]"


def _parameters(metadata: dict, model_id: str, version: int, onnx_sha256: str) -> dict[str, str]:
    """What a client can read from the config (``/v2/models/<name>/config``) to use the model
    without the checkpoint: the decision threshold, which model this is, how to feed it."""
    thresholds = metadata.get("thresholds") or {}
    pixel = float(thresholds.get("pixel", 0.5))
    image = thresholds.get("image")
    decision = pixel if image is None else float(image)
    height, width = metadata["input_shape"][2:]
    return {
        "adps_model_id": model_id,
        "adps_model_version": str(version),
        "adps_version": __version__,  # the exporter's; the checkpoint's is in the ONNX file
        "adps_export_format": str(metadata["format"]),
        "adps_onnx_sha256": onnx_sha256,
        "adps_image_threshold": repr(decision),
        "adps_image_threshold_calibrated": "true" if image is not None else "false",
        "adps_pixel_threshold": repr(pixel),
        "adps_input_height": str(height),
        "adps_input_width": str(width),
        "adps_input_dtype": str(metadata["input_dtype"]),
        "adps_input_range": json.dumps(metadata["input_range"]),
        "adps_channel_order": str(metadata["channel_order"]),
        "adps_tiling": json.dumps(metadata.get("tiling")),
    }


def _describe(
    onnx_path: Path, model_id: str | None, version: int
) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]], dict[str, str]]:
    import onnx

    metadata = read_onnx_metadata(onnx_path)
    graph = onnx.load_model(str(onnx_path), load_external_data=False).graph
    inputs, outputs = _tensors(graph)
    sha = file_sha256(onnx_path)
    params = _parameters(metadata, model_id or f"{onnx_path.name}@{sha[:12]}", version, sha)
    return inputs, outputs, params


def triton_config(
    name: str,
    onnx_path: str | Path,
    settings: TritonSettings | None = None,
    model_id: str | None = None,
    version: int = 1,
) -> str:
    """The ``config.pbtxt`` text of an adps ONNX export served as model ``name``.

    Inputs and outputs are read from the ONNX graph; ``parameters`` carries the thresholds,
    ``model_id`` (default: the ONNX file's name and SHA-256 prefix), ``version``, the input size
    and type from the file's adps metadata (``adps_*`` keys, which no backend reads).
    """
    return _render(
        name, settings or TritonSettings(), *_describe(Path(onnx_path), model_id, version)
    )


def _render(
    name: str,
    settings: TritonSettings,
    inputs: list[tuple[str, str, list[int]]],
    outputs: list[tuple[str, str, list[int]]],
    params: dict[str, str],
) -> str:
    batching = [f"  max_queue_delay_microseconds: {settings.max_queue_delay_us}"]
    if settings.preferred_batch_sizes:
        batching.insert(0, f"  preferred_batch_size: {_dims(list(settings.preferred_batch_sizes))}")
    parameters = ",\n".join(
        f"  {{\n    key: {_quote(key)}\n    value: {{ string_value: {_quote(value)} }}\n  }}"
        for key, value in params.items()
    )
    return (
        f"# written by adps {__version__} (adps export --format triton)\n"
        f"name: {_quote(name)}\n"
        'platform: "onnxruntime_onnx"\n'
        'backend: "onnxruntime"\n'
        f"default_model_filename: {_quote(MODEL_FILE)}\n"
        f"max_batch_size: {settings.max_batch_size}\n"
        f"input {_io_block(inputs, nchw=True)}\n"
        f"output {_io_block(outputs, nchw=False)}\n"
        "dynamic_batching {\n" + "\n".join(batching) + "\n}\n"
        "instance_group [\n  {\n"
        f"    count: {settings.instance_count}\n"
        f"    kind: {INSTANCE_KINDS[settings.instance_kind]}\n"
        "  }\n]\n"
        f"parameters [\n{parameters}\n]\n"
    )


def validate_triton_config(text: str, name: str | None = None) -> bool:
    """Parses ``text`` with Triton's model-config schema (``tritonclient``'s
    ``ModelConfig``): True when it parses, False when ``tritonclient`` is not installed. A
    config that does not parse, or names another model than ``name``, is a bug here (a
    ``RuntimeError``), never the user's."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return False
    from google.protobuf import text_format

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise RuntimeError(f"the Triton config does not parse with Triton's schema: {exc}") from exc
    if name is not None and config.name != name:
        raise RuntimeError(f"the Triton config names model '{config.name}', not '{name}'")
    return True


# --------------------------------------------------------------------------- the repository


def export_triton(
    model_or_checkpoint: Source,
    repository: str | Path,
    name: str | None = None,
    version: int = 1,
    settings: TritonSettings | None = None,
    input_dtype: InputDtype = "uint8",
    opset: int | None = None,
    thresholds: Thresholds | None = None,
    force: bool = False,
) -> TritonExport:
    """Writes ``repository/<name>/config.pbtxt`` and ``repository/<name>/<version>/model.onnx``
    (:func:`adps.export.export_onnx`'s graph, verified against torch) atomically.

    ``name`` defaults to the checkpoint file's stem (required for an in-memory model);
    names Triton cannot serve are refused (:func:`check_model_name`). An existing version
    folder is refused unless ``force``; other versions in the model's folder are kept, and the
    config, which Triton shares between a model's versions, describes the one written.
    """
    settings = settings or TritonSettings()
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise AdpsError(f"a Triton model version is an integer from 1, got {version!r}")
    source_path = Path(model_or_checkpoint) if isinstance(model_or_checkpoint, str | Path) else None
    if name is None:
        if source_path is None:
            raise AdpsError("name the Triton model (name=...): an in-memory model has no file name")
        try:
            check_model_name(source_path.stem)
        except AdpsError as exc:
            raise AdpsError(f"{exc}; choose one with --name", source_path) from None
        name = source_path.stem
    check_model_name(name)
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise AdpsError("the Triton model repository must be a folder", repository)
    model_dir = repository / name
    version_dir = model_dir / str(version)
    if model_dir.exists() and not model_dir.is_dir():
        raise AdpsError("exists and is not a folder", model_dir)
    if version_dir.exists() and not force:
        raise AdpsError(
            f"version {version} of Triton model '{name}' exists; use --force (force=True) to "
            f"replace it, or write another version (--model-version)",
            version_dir,
        )
    model_id = None
    if source_path is not None:
        try:
            model_id = f"{source_path.name}@{file_sha256(source_path)[:12]}"  # as adps serve
        except OSError as exc:
            raise AdpsError(f"cannot read the checkpoint ({exc.strerror})", source_path) from exc

    repository.mkdir(parents=True, exist_ok=True)
    fresh = not model_dir.exists()
    stage = Path(tempfile.mkdtemp(dir=repository if fresh else model_dir, prefix=".adps-staging-"))
    try:
        staged_model = stage / str(version) / MODEL_FILE
        export_onnx(model_or_checkpoint, staged_model, input_dtype, opset, thresholds=thresholds)
        inputs, outputs, params = _describe(staged_model, model_id, version)
        text = _render(name, settings, inputs, outputs, params)
        validated = validate_triton_config(text, name)
        atomic_write_text(stage / CONFIG_NAME, text)
        for folder in (stage, stage / str(version)):
            os.chmod(folder, _DIR_MODE)
        try:
            if fresh:
                os.rename(stage, model_dir)  # the whole model appears at once
            else:
                if version_dir.exists():  # force: the old version leaves with the staging folder
                    os.rename(version_dir, stage / "replaced")
                os.rename(stage / str(version), version_dir)
                os.replace(stage / CONFIG_NAME, model_dir / CONFIG_NAME)
        except OSError as exc:  # another writer got there meanwhile
            raise AdpsError(
                f"cannot move the export into place ({exc.strerror}); was it written by "
                "another process meanwhile?",
                version_dir,
            ) from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return TritonExport(
        model_dir=model_dir,
        config_path=model_dir / CONFIG_NAME,
        model_path=version_dir / MODEL_FILE,
        validated=validated,
        parameters=params,
    )
