"""adps: visual anomaly detection with Asymmetric Distillation Post-Segmentation.

``adps.load(checkpoint_or_export)`` gives a predictor; the ``adps`` command trains, tests,
predicts, calibrates, reports and exports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adps.errors import AdpsError
from adps.version import __version__

if TYPE_CHECKING:
    from adps.engine.predict import Predictor


BACKENDS = ("auto", "torch", "openvino")


def load(path, device: str = "auto", batch_size: int | None = None, backend: str = "auto",
         precision: str | None = None) -> "Predictor":
    """A predictor from a checkpoint (.pt) or an export (.onnx, .xml for OpenVINO, .ts).

    A checkpoint runs on the fastest runtime installed: with ``backend="auto"`` on CPU that is
    OpenVINO when the ``openvino`` package is there (3x torch's speed at batch 1, README),
    else torch. The checkpoint is converted once, verified, and kept in a cache
    (:func:`adps.export.cached_openvino`); ``backend="torch"`` runs it in torch (the maps
    ``adps test`` scored). An export runs on its own runtime whatever ``backend`` says.
    ``precision`` (OpenVINO): "auto" (the default for a converted checkpoint) runs bf16 on CPUs
    with native bf16 (no metric or decision changed on weld, README) and f32 elsewhere; "f32"
    gives torch's maps within 1e-3.
    """
    import warnings
    from pathlib import Path

    from adps.engine.device import resolve_device
    from adps.engine.predict import EXPORT_SUFFIXES, load as load_file

    if backend not in BACKENDS:
        raise AdpsError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    path = Path(path)
    if (backend == "torch" or path.suffix.lower() in EXPORT_SUFFIXES or not path.is_file()
            or (backend == "auto" and resolve_device(device).type != "cpu")):
        return load_file(path, device, batch_size, precision)
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        if backend == "openvino":
            raise AdpsError("backend 'openvino' needs the openvino package (pip install "
                            "'adps[openvino]')") from exc
        return load_file(path, device, batch_size)
    from adps.export import cached_openvino

    try:
        converted = cached_openvino(path)
        try:
            predictor = load_file(converted, device, batch_size, precision or "auto")
        except AdpsError:  # a damaged cache entry: convert again
            converted = cached_openvino(path, refresh=True)
            predictor = load_file(converted, device, batch_size, precision or "auto")
    except (OSError, RuntimeError, AdpsError) as exc:
        if backend == "openvino":
            raise
        warnings.warn(f"{path}: cannot run it with OpenVINO ({exc}); trying torch",
                      stacklevel=2)
        return load_file(path, device, batch_size)
    predictor.runtime += f" (converted from {path.name}, cached at {converted})"
    return predictor


__all__ = ["AdpsError", "BACKENDS", "__version__", "load"]
