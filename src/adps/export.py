"""Deployment exports: one ONNX or TorchScript graph from raw images to (anomaly map, score).

:class:`DeployModule` puts the whole predictor into one graph: it takes a batch of RGB images at
the model's size, either uint8 (0..255) or float32 in [0, 1] (chosen at export), converts and
normalises them inside (the :class:`~adps.models.adps.ADPS` module normalises [0, 1] input with
its backbone's statistics), and returns the anomalous-class probability map (B, 1, H, W) and the
image score (B,), both float32. A deployment therefore needs no adps pre-processing code.

Both exports carry their metadata as JSON derived from the checkpoint (:func:`export_metadata`:
how to call the graph, plus :meth:`Checkpoint.describe`: configs, thresholds, provenance): in
the ONNX model's ``metadata_props`` under the key ``"adps"``, and in the TorchScript archive as
the extra file ``adps.json``.
:mod:`adps.engine.runtime` runs the files and reads that back, so ``model.onnx`` alone is enough
to predict.

Exporter (checked with torch 2.14): the TorchScript-based ONNX exporter
(``torch.onnx.export(..., dynamo=False)``) at opset 17 produces a correct graph with a dynamic
batch axis (the student's patch split records its reshapes from ``x.shape``, so the batch size is
not baked in), timm's dynamic SAME padding and the reflect-padded Gaussian blur included, and
exports faster than the ``torch.export``-based exporter; ``exporter="dynamo"`` (opset 18) gives an
equivalent graph. Every export is verified before it is written: the graph, traced at batch 2, is
run at batch 3 and compared with the eager model.

:func:`load_predictor` (``adps.load``) runs a checkpoint on the fastest runtime installed: on
CPU an OpenVINO conversion, made once and cached by :func:`cached_openvino`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from adps.engine.calibrate import Thresholds
from adps.engine.checkpoint import Checkpoint
from adps.engine.device import resolve_device
from adps.engine.predict import (
    EXPORT_SUFFIXES,
    Predictor,
    checkpoint_predictor,
    export_predictor,
)
from adps.engine.runtime import (
    EXPORT_FORMAT,
    INPUT_DTYPES,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAMES,
    TORCHSCRIPT_EXTRA,
    quiet_export,
)
from adps.engine.tiling import Tiling
from adps.errors import AdpsError
from adps.fileio import atomic_write, file_sha256
from adps.models.adps import ADPS
from adps.version import __version__

if TYPE_CHECKING:
    import onnx

__all__ = [
    "BACKENDS",
    "DeployModule",
    "cache_dir",
    "cached_openvino",
    "export_metadata",
    "export_onnx",
    "export_openvino",
    "export_torchscript",
    "load_predictor",
]

InputDtype = Literal["uint8", "float32"]
Exporter = Literal["auto", "torchscript", "dynamo"]

_VERIFY_ATOL = 1e-3
_TRACE_BATCH = 2  # traced/exported with batch 2 ...
_VERIFY_BATCH = 3  # ... and checked at batch 3, so a batch size baked into the graph shows


class DeployModule(nn.Module):
    """ADPS in one graph: raw images in, ``(anomaly_map (B,1,H,W), score (B,))`` float32 out.

    ``input_dtype="uint8"``: images are uint8 in 0..255, divided by 255 inside.
    ``input_dtype="float32"``: images are float32 in [0, 1] and go in unchanged.
    Images are RGB, channels first, at the model's ``image_size``.
    """

    def __init__(self, model: ADPS, input_dtype: InputDtype = "uint8"):
        super().__init__()
        if input_dtype not in INPUT_DTYPES:
            raise AdpsError(f"input dtype '{input_dtype}' is not one of {list(INPUT_DTYPES)}")
        self.model = model
        self.input_dtype = input_dtype

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_dtype == "uint8":
            x = images.to(torch.float32) / 255.0
        else:
            x = images.to(torch.float32)
        anomaly_map, score = self.model(x)
        return anomaly_map.float(), score.float()


# --------------------------------------------------------------------------- model + metadata

Source = ADPS | Checkpoint | str | Path


def _resolve(source: Source, thresholds: Thresholds | None) -> tuple[ADPS, Checkpoint]:
    """An eval-mode CPU copy of the model (the caller's model is left untouched) and the
    checkpoint the metadata is derived from, with ``thresholds`` when given."""
    if isinstance(source, (str, Path)):
        source = Checkpoint.load(source)
    if isinstance(source, Checkpoint):
        ckpt, model = source, source.model("cpu")
    elif isinstance(source, ADPS):
        model = copy.deepcopy(source).cpu().eval()
        ckpt = Checkpoint.of(model)
    else:
        raise TypeError(
            f"expected an ADPS model, a Checkpoint or a checkpoint path, "
            f"got {type(source).__name__}"
        )
    model.requires_grad_(False)
    return model, ckpt if thresholds is None else ckpt.replace(thresholds=thresholds)


def export_metadata(
    ckpt: Checkpoint, input_dtype: InputDtype, kind: str, **extra: Any
) -> dict[str, Any]:
    """The JSON-able description every export carries: the checkpoint's (:meth:`Checkpoint.
    describe`) and how to call the graph. The graph normalises its input itself, so the
    backbone's mean and std are there for information only (under ``preprocess``)."""
    height, width = ckpt.model_config.size
    tiling = Tiling.of(ckpt.model_config)
    return {
        "format": EXPORT_FORMAT,
        "kind": kind,
        "torch_version": torch.__version__.split("+")[0],
        "input_name": INPUT_NAME,
        "input_dtype": input_dtype,
        "input_shape": ["batch", 3, height, width],
        "input_range": [0, 255] if input_dtype == "uint8" else [0.0, 1.0],
        "channel_order": "RGB",
        "output_names": list(OUTPUT_NAMES),
        # the graph runs one tile; the caller tiles each image like this (engine/tiling.py)
        "tiling": None if tiling is None else tiling.to_dict(),
        **ckpt.describe(),
        **extra,
    }


def _example(input_dtype: str, batch: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if input_dtype == "uint8":
        return torch.randint(0, 256, (batch, 3, *size), generator=gen, dtype=torch.uint8)
    return torch.rand((batch, 3, *size), generator=gen)


def _check_close(
    name: str, batch: int, got: Sequence[np.ndarray], want: Sequence[torch.Tensor]
) -> None:
    for out_name, g, w in zip(OUTPUT_NAMES, got, want, strict=True):
        expected = w.detach().cpu().numpy()
        if g.shape != expected.shape:
            raise RuntimeError(
                f"{name} export is wrong at batch {batch}: {out_name} has shape "
                f"{g.shape}, expected {expected.shape}"
            )
        err = float(np.abs(g.astype(np.float32) - expected).max())
        if not err <= _VERIFY_ATOL:
            raise RuntimeError(
                f"{name} export is wrong at batch {batch}: {out_name} differs "
                f"from the eager model by {err:.3g} (> {_VERIFY_ATOL})"
            )


# --------------------------------------------------------------------------- ONNX


def export_onnx(
    model_or_checkpoint: Source,
    out_path: str | Path,
    input_dtype: InputDtype = "uint8",
    opset: int | None = None,
    exporter: Exporter = "auto",
    thresholds: Thresholds | None = None,
    verify: bool = True,
) -> Path:
    """Writes ``out_path`` (atomically): an ONNX graph of :class:`DeployModule`.

    ``model_or_checkpoint``: an :class:`ADPS` model, a :class:`Checkpoint` or a checkpoint path
    (its thresholds are stored). The batch axis is dynamic; height and width are the model's size.
    ``opset`` defaults to 17 (TorchScript-based exporter) or 18 (dynamo exporter, its minimum).
    ``exporter="auto"`` uses the TorchScript-based exporter and falls back to the dynamo one if
    the former is missing. ``thresholds`` replaces the stored ones.
    With ``verify`` (and onnxruntime installed) the graph, traced at batch 2, is run at batch 3
    and compared with the eager model before anything is written.
    """
    import onnx

    if exporter not in ("auto", "torchscript", "dynamo"):
        raise AdpsError(f"unknown exporter '{exporter}' (use auto, torchscript or dynamo)")
    model, ckpt = _resolve(model_or_checkpoint, thresholds)
    deploy = DeployModule(model, input_dtype).eval()
    size = model.config.size
    example = _example(input_dtype, _TRACE_BATCH, size, seed=0)

    proto, used, first_error = None, exporter, None
    if exporter in ("auto", "torchscript"):
        try:
            proto = _export_torchscript_onnx(deploy, example, opset or 17)
            used = "torchscript"
        except Exception as exc:  # e.g. a torch without the TorchScript-based exporter
            if exporter == "torchscript":
                raise
            first_error = exc
    if proto is None:
        try:
            proto = _export_dynamo_onnx(deploy, example, max(opset or 18, 18))
        except Exception as exc:
            if first_error is not None:
                raise RuntimeError(
                    f"both ONNX exporters failed; TorchScript-based: "
                    f"{first_error!r}; dynamo: {exc!r}"
                ) from exc
            raise
        used = "dynamo"

    actual_opset = next(
        (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None
    )
    meta = export_metadata(ckpt, input_dtype, "onnx", exporter=used, opset=actual_opset)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name, proto.producer_version = "adps", __version__
    proto.doc_string = (
        "ADPS anomaly detector: images (B,3,H,W) "
        f"{input_dtype} -> anomaly_map (B,1,H,W), score (B,)"
    )
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if verify:
        _verify_onnx(data, deploy, input_dtype, size)
    return atomic_write(out_path, lambda handle: handle.write(data))


def export_openvino(
    model_or_checkpoint: Source,
    out_path: str | Path,
    input_dtype: InputDtype = "uint8",
    thresholds: Thresholds | None = None,
    verify: bool = True,
    precision: Literal["f32", "bf16"] = "f32",
) -> Path:
    """Writes ``out_path`` (``.xml``, with its ``.bin`` beside it): the ONNX graph of
    :func:`export_onnx` converted by OpenVINO, the same metadata in its ``rt_info``. With
    ``verify`` the compiled model is run at batch 3 in f32 and compared with the eager model
    first. ``precision`` is the inference precision runners use by default (``bf16``: faster
    on CPUs with native bf16, at the accuracy cost docs/benchmarks/inference.md measures).
    """
    if precision not in ("f32", "bf16"):
        raise AdpsError(f"precision must be 'f32' or 'bf16', got {precision!r}")
    import openvino as ov

    out_path = Path(out_path)
    if out_path.suffix.lower() != ".xml":
        raise AdpsError("an OpenVINO model is written as .xml (plus .bin)", out_path)
    model, ckpt = _resolve(model_or_checkpoint, thresholds)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx", input_dtype, verify=False)
        ov_model = ov.convert_model(str(onnx_path))
        meta = export_metadata(
            ckpt,
            input_dtype,
            "openvino",
            openvino_version=ov.get_version(),
            inference_precision=precision,
        )
        ov_model.set_rt_info(json.dumps(meta), [METADATA_KEY])
        staged = Path(tmp) / "model.xml"
        ov.save_model(ov_model, str(staged), compress_to_fp16=False)
        if verify:
            deploy = DeployModule(model, input_dtype).eval()
            x = _example(input_dtype, _VERIFY_BATCH, model.config.size, seed=1)
            with torch.no_grad():
                want = deploy(x)
            compiled = ov.Core().compile_model(
                str(staged), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
            )
            result = compiled(x.numpy())
            _check_close(
                "OpenVINO", _VERIFY_BATCH, [result[compiled.output(i)] for i in range(2)], want
            )
        os.replace(staged.with_suffix(".bin"), out_path.with_suffix(".bin"))
        os.replace(staged, out_path)  # the .xml last: it names the .bin it needs
    return out_path


def _export_torchscript_onnx(
    deploy: DeployModule, example: torch.Tensor, opset: int
) -> onnx.ModelProto:
    import onnx

    buffer = io.BytesIO()
    with torch.no_grad(), quiet_export():
        torch.onnx.export(
            deploy,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter also takes a file object
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={
                INPUT_NAME: {0: "batch"},
                OUTPUT_NAMES[0]: {0: "batch"},
                OUTPUT_NAMES[1]: {0: "batch"},
            },
            do_constant_folding=True,
        )
    return onnx.load_model_from_string(buffer.getvalue())


def _export_dynamo_onnx(deploy: DeployModule, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), quiet_export():
        program = torch.onnx.export(
            deploy,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"images": {0: batch}},
            verbose=False,
        )
    if program is None:  # only dynamo=False returns nothing
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    return program.model_proto


def _verify_onnx(
    data: bytes, deploy: DeployModule, input_dtype: str, size: tuple[int, int]
) -> None:
    try:
        import onnxruntime as ort
    except ImportError:  # checker passed; nothing to run the graph with
        return
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = _example(input_dtype, _VERIFY_BATCH, size, seed=1)
    with torch.no_grad():
        want = deploy(x)
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
    _check_close("ONNX", _VERIFY_BATCH, got, want)


# --------------------------------------------------------------------------- TorchScript


def export_torchscript(
    model_or_checkpoint: Source,
    out_path: str | Path,
    input_dtype: InputDtype = "uint8",
    thresholds: Thresholds | None = None,
    verify: bool = True,
) -> Path:
    """Writes ``out_path`` (atomically): ``torch.jit.trace`` of :class:`DeployModule` (on CPU).

    The metadata JSON is stored as the extra file ``adps.json``. With ``verify`` the traced graph
    is run at batch 3 (it was traced at batch 2) and compared with the eager model, so a batch
    size baked into the trace is caught before anything is written.
    """
    model, ckpt = _resolve(model_or_checkpoint, thresholds)
    deploy = DeployModule(model, input_dtype).eval()
    size = model.config.size
    example = _example(input_dtype, _TRACE_BATCH, size, seed=0)
    with torch.no_grad(), quiet_export():
        traced = torch.jit.trace(  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            deploy, (example,), check_trace=False
        )
    if verify:  # the graph as traced; optimisation passes would only add minutes on CPU
        x = _example(input_dtype, _VERIFY_BATCH, size, seed=1)
        with torch.no_grad(), torch.jit.optimized_execution(False):
            want = deploy(x)
            got = [t.numpy() for t in traced(x)]
        _check_close("TorchScript", _VERIFY_BATCH, got, want)
    meta = export_metadata(ckpt, input_dtype, "torchscript")
    extra = {TORCHSCRIPT_EXTRA: json.dumps(meta)}
    with quiet_export():
        return atomic_write(
            out_path, lambda handle: torch.jit.save(traced, handle, _extra_files=extra)
        )


# ------------------------------------------------- the fastest runtime for a checkpoint (OpenVINO)


def cache_dir() -> Path:
    """Where converted models are kept: ``$ADPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/adps``,
    else ``~/.cache/adps``."""
    if os.environ.get("ADPS_CACHE_DIR"):
        return Path(os.environ["ADPS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adps"


def cached_openvino(
    path: str | Path,
    cache: str | Path | None = None,
    refresh: bool = False,
    checkpoint: Checkpoint | None = None,
) -> Path:
    """The OpenVINO conversion of a checkpoint file (:func:`export_openvino`, verified like any
    export), made on first use and kept under ``cache`` (default :func:`cache_dir`).

    The name carries the checkpoint's SHA-256 and the adps and OpenVINO versions, so a retrained
    checkpoint or an upgrade converts again, and a stale file is never used. Writes are atomic:
    processes converting at once (torchrun ranks) at worst each convert. ``refresh`` converts
    even when a file is there (a damaged cache). ``checkpoint``: the file's content, when the
    caller has read it already.
    """
    import openvino as ov

    path = Path(path)
    try:
        content = file_sha256(path)
    except OSError as exc:
        raise AdpsError(f"cannot read the checkpoint ({exc.strerror})", path) from exc
    key = hashlib.sha256(f"{content} adps {__version__} openvino {ov.get_version()}".encode())
    name = f"{path.stem}-{key.hexdigest()[:16]}.xml"
    out = Path(cache or cache_dir()) / "openvino" / name
    if refresh or not (out.is_file() and out.with_suffix(".bin").is_file()):
        out.parent.mkdir(parents=True, exist_ok=True)
        export_openvino(path if checkpoint is None else checkpoint, out)
    return out


BACKENDS = ("auto", "torch", "openvino")


def load_predictor(
    path: str | Path,
    device: str = "auto",
    batch_size: int | None = None,
    backend: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
) -> Predictor:
    """A predictor from any model file: a checkpoint (``.pt``), ONNX (``.onnx``), OpenVINO
    (``.xml``) or TorchScript (``.ts``); this is ``adps.load``.

    An export runs on its own runtime whatever ``backend`` says. A checkpoint runs on the
    fastest runtime installed: with ``backend="auto"`` on CPU that is OpenVINO when the
    ``openvino`` package is there (faster than torch at batch 1, see
    benchmarks/bench_inference.py), else torch. It is converted
    once, verified, and kept in a cache (:func:`cached_openvino`); ``backend="torch"`` runs it
    in torch (the maps ``adps test`` scored). ``precision`` (OpenVINO): "f32" (the default for a
    converted checkpoint) gives torch's maps within 1e-3, so thresholds calibrated in training
    keep their meaning; "auto" runs bf16 on CPUs with native bf16 (faster; scores move, so
    calibrate with it) and f32 elsewhere. ``batch_size=None`` picks what runs fastest.
    ``threads``: ONNX Runtime's or OpenVINO's inference threads (None: every core); torch
    follows ``torch.set_num_threads``.
    """
    if backend not in BACKENDS:
        raise AdpsError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    path = Path(path)
    if path.suffix.lower() in EXPORT_SUFFIXES:
        return export_predictor(path, device, batch_size, precision, threads)
    ckpt = Checkpoint.load(path)
    if backend == "torch" or (backend == "auto" and resolve_device(device).type != "cpu"):
        return checkpoint_predictor(ckpt, device, batch_size)
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        if backend == "openvino":
            raise AdpsError(
                "backend 'openvino' needs the openvino package (pip install 'adps[openvino]')"
            ) from exc
        return checkpoint_predictor(ckpt, device, batch_size)
    try:
        converted = cached_openvino(path, checkpoint=ckpt)
        try:
            predictor = export_predictor(converted, device, batch_size, precision or "f32", threads)
        except AdpsError:  # a damaged cache entry: convert again
            converted = cached_openvino(path, refresh=True, checkpoint=ckpt)
            predictor = export_predictor(converted, device, batch_size, precision or "f32", threads)
    except (OSError, RuntimeError, AdpsError) as exc:
        if backend == "openvino":
            raise
        warnings.warn(f"{path}: cannot run it with OpenVINO ({exc}); trying torch", stacklevel=2)
        return checkpoint_predictor(ckpt, device, batch_size)
    predictor.runtime += f" (converted from {path.name}, cached at {converted})"
    return predictor
