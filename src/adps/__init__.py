"""adps: visual anomaly detection with Asymmetric Distillation Post-Segmentation."""

from adps.errors import AdpsError

__version__ = "0.1.0"

__all__ = ["AdpsError", "__version__"]
