"""Device selection shared by training, evaluation and prediction."""

from __future__ import annotations

import torch

from adps.errors import AdpsError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" picks CUDA when present; an explicit CUDA request without CUDA is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise AdpsError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AdpsError(f"device '{device}' was requested but CUDA is not available here")
    return device
