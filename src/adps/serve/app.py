"""The inference service: a FastAPI application around one :class:`~adps.engine.predict.Predictor`.

Endpoints (all but health and the page need ``Authorization: Bearer <token>`` when a token is
set):

* ``POST /v1/predict``: one image as the raw body (``Content-Type: image/*`` or
  ``application/octet-stream``) or one or more multipart files; JSON back per image: score,
  decision, the thresholds and their source, defect area, image size, model id, milliseconds.
  ``?outputs=mask,overlay`` adds base64 PNGs. Several files give a list.
* ``GET /v1/health``: 200 ``ready`` once a warm-up inference has run, else 503.
* ``GET /v1/model``: configuration, thresholds, pre-processing, version.
* ``GET /``: the page (drop images, see overlay, mask, score and decision).

Every error is a JSON ``{"error": ...}`` with a 4xx/5xx status that names the problem; no
traceback reaches a client. Requests go through a :class:`MicroBatcher`, so concurrent clients
share model batches and a full queue answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import io
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from adps.data.datasets import OverPixelLimit, read_image_bytes
from adps.engine.predict import Prediction, Predictor
from adps.errors import AdpsError
from adps.fileio import file_sha256
from adps.report.plots import overlay
from adps.serve.batching import Busy, MicroBatcher
from adps.version import __version__

log = logging.getLogger("adps.serve")
OUTPUTS = ("mask", "overlay")
IMAGE_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class ServeSettings:
    token: str | None = None  # None: no authentication (bind to 127.0.0.1 then)
    max_batch: int = 8  # images per model batch
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    queue_size: int = 64  # requests waiting at most; more get 503
    max_pixels: int = 40_000_000  # per image, checked from the header before decoding
    max_body_bytes: int = 64 * 2**20  # per request
    max_files: int = 32  # per request
    retry_after_s: int = 1


class ServeError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def model_id(path: Path) -> str:
    """``name@sha256-prefix``: which file answered, stable across restarts."""
    return f"{path.name}@{file_sha256(path)[:12]}"


def _png_base64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def prediction_json(
    pred: Prediction,
    image: np.ndarray,
    predictor: Predictor,
    ident: str,
    milliseconds: float,
    outputs: set[str],
    name: str | None,
) -> dict[str, Any]:
    """One image's answer: `adps predict`'s row (:meth:`Prediction.summary`) and more."""
    t = predictor.thresholds
    answer = {
        "filename": name,
        **pred.summary(),
        "is_anomalous": bool(pred.is_anomalous),
        "threshold": {
            "image": t.decision,
            "pixel": t.pixel,
            "rule": t.rule(),
            "source": "calibrated"
            if t.image is not None
            else "uncalibrated: the pixel threshold decides",
        },
        "image_size": [int(image.shape[0]), int(image.shape[1])],
        "model_id": ident,
        "milliseconds": round(milliseconds, 2),
    }
    if "mask" in outputs:
        answer["mask_png"] = _png_base64((pred.mask * 255).astype(np.uint8))
    if "overlay" in outputs:
        answer["overlay_png"] = _png_base64(overlay(image, pred.anomaly_map, pred.mask))
    return answer


def create_app(
    predictor: Predictor, model_path: str | Path, settings: ServeSettings = ServeSettings()
) -> FastAPI:
    model_path = Path(model_path)
    ident = model_id(model_path)

    def run(images: list[np.ndarray]) -> list[Prediction]:
        tensors = [torch.from_numpy(image).permute(2, 0, 1) for image in images]
        return predictor.predict_tensors(tensors)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(run, settings.max_batch, settings.max_wait_ms, settings.queue_size)
        app.state.batcher, app.state.ready = batcher, False
        batcher.start()
        height, width = predictor.config.size

        # batch 1 (a quiet line) and a full batch (a busy one): the first call of a batch size
        # is slow (an OpenVINO graph is compiled per size), so neither waits on a real part
        sizes = {1} if predictor.tiling else {1, settings.max_batch}

        async def warm_up() -> None:
            for size in sorted(sizes):
                frames = [np.zeros((height, width, 3), np.uint8)] * size
                await batcher.call(functools.partial(run, frames))
            app.state.ready = True

        warming = asyncio.get_running_loop().create_task(warm_up())
        try:
            yield
        finally:  # SIGTERM: uvicorn stops accepting, in-flight requests finish, then this
            warming.cancel()
            await batcher.stop()

    def authenticate(request: Request) -> None:
        """With a token set, every route but health and the page needs it (constant time)."""
        if settings.token is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {settings.token}".encode()):
            raise ServeError(
                401,
                "missing or wrong token (send Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(authenticate)]
    app = FastAPI(
        title="adps",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        description="Anomaly maps, scores and decisions from an adps model.",
    )

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)  # the trace stays here
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, 500)

    @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=guarded, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="adps API")

    @app.get("/v1/health")
    async def health(request: Request) -> JSONResponse:
        if request.app.state.ready:
            return JSONResponse({"status": "ready", "model_id": ident})
        return JSONResponse({"status": "starting"}, 503, headers={"Retry-After": "1"})

    @app.get("/v1/model", dependencies=guarded)
    async def model_info(request: Request) -> dict:
        meta = predictor.metadata
        return {
            "model_id": ident,
            "adps_version": __version__,
            "runtime": predictor.runtime,
            "model_config": meta.get("model_config"),
            "preprocess": meta.get("preprocess")
            or {
                k: meta[k]
                for k in ("image_size", "mean", "std", "input_dtype", "channel_order")
                if k in meta
            },
            "thresholds": predictor.thresholds.to_dict(),
            "decision_rule": predictor.thresholds.rule(),
            "batching": {
                "max_batch": settings.max_batch,
                "max_wait_ms": settings.max_wait_ms,
                "queue_size": settings.queue_size,
                "batches_run": request.app.state.batcher.batches,
            },
            "limits": {
                "max_pixels": settings.max_pixels,
                "max_body_bytes": settings.max_body_bytes,
                "max_files": settings.max_files,
            },
        }

    @app.post("/v1/predict", dependencies=guarded)
    async def predict(request: Request, outputs: str = "") -> JSONResponse:
        start = time.perf_counter()
        wanted = {o for o in outputs.split(",") if o}
        unknown = wanted - set(OUTPUTS)
        if unknown:
            raise ServeError(400, f"unknown outputs {sorted(unknown)}; choose from {list(OUTPUTS)}")
        uploads, single = await _read_uploads(request, settings)

        def decode() -> list[np.ndarray]:  # in a worker thread: PIL releases the GIL
            return [
                read_image_bytes(data, name or "the request body", settings.max_pixels)
                for name, data in uploads
            ]

        try:
            images = await run_in_threadpool(decode)
        except AdpsError as exc:
            raise ServeError(413 if isinstance(exc, OverPixelLimit) else 400, str(exc)) from None
        try:
            predictions = await request.app.state.batcher.submit(images)
        except Busy:
            raise ServeError(
                503,
                "the server is busy (request queue full); retry later",
                {"Retry-After": str(settings.retry_after_s)},
            ) from None
        except Exception as exc:  # the model failed on this batch; the server goes on
            log.exception("model failure")
            raise ServeError(500, f"model failure: {exc}") from None
        milliseconds = (time.perf_counter() - start) * 1000
        answers = [
            prediction_json(p, image, predictor, ident, milliseconds, wanted, name)
            for p, image, (name, _) in zip(predictions, images, uploads, strict=True)
        ]
        return JSONResponse(answers[0] if single else answers)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(
            resources.files("adps.serve").joinpath("page.html").read_text(encoding="utf-8")
        )

    return app


async def _read_uploads(
    request: Request, settings: ServeSettings
) -> tuple[list[tuple[str | None, bytes]], bool]:
    """(file name, bytes) of every uploaded image, and whether the body was one raw image."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
        raise ServeError(
            413, f"the request is {int(length)} bytes, over the limit of {settings.max_body_bytes}"
        )
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        await _body(request, settings)  # the size limit; the form parser reads it from cache
        form = await request.form(max_files=settings.max_files, max_fields=16)
        files = [
            (getattr(v, "filename", None) or key, await v.read())
            for key, v in form.multi_items()
            if hasattr(v, "read")
        ]
        if not files:
            raise ServeError(
                400,
                "the multipart request holds no file (send the image as a "
                "file field, e.g. curl -F file=@part.png)",
            )
        return files, len(files) == 1
    if not kind.startswith(IMAGE_TYPES):
        raise ServeError(
            415,
            f"unsupported content type {kind or '(none)'!r}: send an image "
            "(image/png, image/jpeg, ..., application/octet-stream) or "
            "multipart/form-data",
        )
    body = await _body(request, settings)
    if not body:
        raise ServeError(400, "empty body: the request holds no image")
    return [(None, body)], True


async def _body(request: Request, settings: ServeSettings) -> bytes:
    """The body, refused as soon as it grows over the limit (Content-Length can be absent)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > settings.max_body_bytes:
            raise ServeError(
                413, f"the request is over the limit of {settings.max_body_bytes} bytes"
            )
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # starlette's form parser reads the cached body
    return body


__all__ = ["ServeSettings", "create_app", "model_id", "prediction_json"]
