"""Helpers of the service tests: tiny models, image streams with known score behaviour, and a
real ``adps serve`` process.

``from servekit import tiny_model, adps_serve`` works in any test module (pytest puts tests/ on
sys.path).
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

from adps.config import ModelConfig
from adps.engine.calibrate import Thresholds, threshold_for_false_alarm_rate
from adps.engine.checkpoint import Checkpoint
from adps.engine.predict import checkpoint_predictor
from adps.models.adps import ADPS

SIZE = 64


def noise_images(n: int, seed: int) -> list[np.ndarray]:
    """Uniform noise, 64 x 64: the 'normal' parts of these tests."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


def streaked_images(n: int, seed: int) -> list[np.ndarray]:
    """A line-scan camera whose sensor froze: every row repeats the first. The random test
    model scores all of these over a threshold that flags 5 % of noise."""
    rng = np.random.default_rng(seed)
    return [
        np.repeat(rng.integers(0, 256, (1, SIZE, 3), dtype=np.uint8), SIZE, axis=0)
        for _ in range(n)
    ]


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def unused_port() -> int:
    """A TCP port nothing listens on now; the ``free_port`` fixture, for module-scoped ones."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_model(path: Path, seed: int = 0, calibrate: int = 100, rate: float = 0.05) -> Path:
    """A 64 px, k = 4 model with random weights, its image threshold calibrated (with its
    normal scores kept) on ``calibrate`` noise images at the false-alarm ``rate``."""
    torch.manual_seed(seed)
    model = ADPS(ModelConfig(image_size=SIZE, k=4)).eval()
    ckpt = Checkpoint.of(model)
    if calibrate:
        predictor = checkpoint_predictor(ckpt, "cpu", 8)
        tensors = [torch.from_numpy(i).permute(2, 0, 1) for i in noise_images(calibrate, 1000)]
        scores = np.array([p.score for p in predictor.predict_tensors(tensors)])
        ckpt = ckpt.replace(
            thresholds=Thresholds().calibrated(threshold_for_false_alarm_rate(scores, rate))
        )
    ckpt.save(path)
    return path


def wait_ready(client: TestClient) -> None:
    """Waits until an app under TestClient has warmed its model (/v1/health answers 200)."""
    for _ in range(300):
        if client.get("/v1/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the server never became ready")


@contextmanager
def adps_serve(model: Path, port: int, *options: str, log: Path) -> Iterator[subprocess.Popen]:
    """A real ``adps serve`` process (torch on the CPU), ready; its stderr goes to ``log``."""
    import httpx

    with open(log, "w") as err:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "adps",
                "serve",
                "--model",
                str(model),
                "--port",
                str(port),
                "--device",
                "cpu",
                "--backend",
                "torch",
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            for _ in range(1200):
                if server.poll() is not None:
                    raise AssertionError(f"adps serve exited: {log.read_text()[-3000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            else:
                raise AssertionError(f"adps serve never became ready: {log.read_text()[-3000:]}")
            yield server
        finally:
            if server.poll() is None:
                server.terminate()
                try:
                    server.wait(60)
                except subprocess.TimeoutExpired:
                    server.kill()
