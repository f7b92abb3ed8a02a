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


def load(path, device: str = "auto", batch_size: int | None = None) -> "Predictor":
    """Predictor from a checkpoint (.pt), ONNX (.onnx) or TorchScript (.ts) file."""
    from adps.engine.predict import load as _load

    return _load(path, device=device, batch_size=batch_size)


__all__ = ["AdpsError", "__version__", "load"]
