"""Device selection shared by training, evaluation and prediction."""

from __future__ import annotations

import torch

from adps.errors import AdpsError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """ "auto" picks CUDA when present; an explicit CUDA request without CUDA is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise AdpsError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AdpsError(f"device '{device}' was requested but CUDA is not available here")
    return device


def inference_batch_size(
    device: torch.device, requested: int | None = None, runtime: str = "torch"
) -> int:
    """The batch size for inference when the user gives none.

    Measured with benchmarks/bench_inference.py: on CPU torch runs fastest per image at batch 1
    (the full-resolution decoder's activations then stay in cache), while onnxruntime on CPU and
    every GPU runtime prefer large batches.
    """
    if requested is not None:
        if requested < 1:
            raise AdpsError(f"the batch size must be at least 1, got {requested}")
        return requested
    return 1 if device.type == "cpu" and runtime == "torch" else 32


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU runs bfloat16 natively (the avx512_bf16 or amx_bf16 flags): only there
    is bf16 autocast faster than float32 on CPU; elsewhere it is emulated and slower. Off where
    the flags cannot be read (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            flags = {word for line in handle if line.startswith("flags") for word in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})
