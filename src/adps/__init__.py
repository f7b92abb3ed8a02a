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


def load(path, device: str = "auto", batch_size: int | None = None, backend: str = "auto",
         precision: str | None = None) -> "Predictor":
    """A predictor from a checkpoint (.pt) or an export (.onnx, .xml for OpenVINO, .ts); a
    checkpoint on CPU runs on OpenVINO when it is installed (:func:`adps.export.load_predictor`
    says how, and what ``backend`` and ``precision`` choose)."""
    from adps.export import load_predictor

    return load_predictor(path, device, batch_size, backend, precision)


__all__ = ["AdpsError", "__version__", "load"]
