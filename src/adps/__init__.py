"""adps: visual anomaly detection with Asymmetric Distillation Post-Segmentation.

``adps.load(path)`` gives a predictor for any model file (a checkpoint, ONNX, OpenVINO or
TorchScript); it is :func:`adps.export.load_predictor`. ``adps.update(model, normal_dir)``
learns new normal images into a trained model and recalibrates it; it is
:func:`adps.engine.update.update`. Both are imported on first use so that ``import adps``
stays light. The ``adps`` command trains, tests, predicts, calibrates, updates, reports and
exports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adps.errors import AdpsError
from adps.version import __version__

if TYPE_CHECKING:
    from adps.engine.update import update
    from adps.export import load_predictor as load


def __getattr__(name: str) -> Any:
    if name == "load":
        from adps.export import load_predictor

        return load_predictor
    if name == "update":
        from adps.engine.update import update

        return update
    raise AttributeError(f"module 'adps' has no attribute {name!r}")


__all__ = ["AdpsError", "__version__", "load", "update"]
