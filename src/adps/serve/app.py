"""The inference service: a FastAPI application around one :class:`~adps.engine.predict.Predictor`.

Endpoints (all but health and the page need ``Authorization: Bearer <token>`` when a token is
set):

* ``POST /v1/predict``: one image as the raw body (``Content-Type: image/*`` or
  ``application/octet-stream``) or one or more multipart files; JSON back per image: score,
  decision, the thresholds and their source, defect area, image size, model id, milliseconds.
  ``?outputs=mask,overlay`` adds base64 PNGs. Several files give a list.
* ``GET /v1/health``: 200 ``ready`` once a warm-up inference has run, else 503.
* ``GET /v1/model``: configuration, thresholds, pre-processing, version, the model file's hash
  and its last reload.
* ``GET /v1/drift``: the drift watch (:mod:`adps.serve.drift`): the window, both tests and
  ``drifting``.
* ``POST /v1/feedback``: the operator's verdict on a kept image (``--keep-images``,
  :mod:`adps.serve.feedback`): ``id``, ``verdict`` (``normal`` or ``defect``) and optionally a
  ``mask`` PNG, as multipart fields or JSON (no mask).
* ``POST /v1/model/reload``: loads the model file again, warms it up beside the serving one and
  swaps them without dropping a request (:mod:`adps.serve.models`); SIGHUP and a changed file
  (``watch_interval_s``) do the same.
* ``GET /``: the page (drop images, see overlay, mask, score and decision, the model and drift).

Every answer names the model that produced it (``model_id``: file name and SHA-256 prefix); a
request runs on the model that was current when it arrived.

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
import json
import logging
import signal
import time
from collections.abc import Callable
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
from adps.serve.drift import DriftSettings
from adps.serve.feedback import Feedback, FeedbackError, client_name, new_id
from adps.serve.models import ModelHolder, ServedModel, watch_file
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
    drift_window: int = 200  # images the drift watch tests (adps.serve.drift)
    drift_alarm: float = 0.001  # drifting while a test's p-value is under this
    drift_min_images: int = 20  # no verdict before the window holds this many
    keep_dir: Path | None = None  # keep request images here and take verdicts (None: neither)
    keep_max_images: int = 10_000  # the store's bounds: the oldest images go first
    keep_max_bytes: int = 2 * 2**30
    watch_interval_s: float = 0.0  # reload when the model file changes (0: do not watch)
    handle_sighup: bool = False  # reload on SIGHUP (the CLI; needs the main thread's loop)

    @property
    def drift(self) -> DriftSettings:
        return DriftSettings(self.drift_window, self.drift_alarm, self.drift_min_images)


class ServeError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def model_id(path: Path) -> str:
    """``name@sha256-prefix``: which file answered, stable across restarts
    (:attr:`ServedModel.ident`)."""
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


def _default_loader(predictor: Predictor) -> Callable[[Path], Predictor]:
    """How a reload opens the model file: on the device, batch size and kind of runtime the
    first model runs on."""
    from adps.export import load_predictor

    backend = "torch" if predictor.runtime.startswith("torch") else "auto"
    return functools.partial(
        load_predictor,
        device=str(predictor.device),
        batch_size=predictor.batch_size,
        backend=backend,
    )


def create_app(
    predictor: Predictor,
    model_path: str | Path,
    settings: ServeSettings = ServeSettings(),
    loader: Callable[[Path], Predictor] | None = None,
) -> FastAPI:
    """The service around ``predictor`` (read from ``model_path``); ``loader`` opens the file
    again for a reload (default: :func:`adps.load` on the predictor's device)."""
    model_path = Path(model_path)
    drift = settings.drift
    store = (
        None
        if settings.keep_dir is None
        else Feedback(settings.keep_dir, settings.keep_max_images, settings.keep_max_bytes)
    )

    # batch 1 (a quiet line) and a full batch (a busy one): the first call of a batch size
    # is slow (an OpenVINO graph is compiled per size), so neither waits on a real part
    def warm(model: Predictor) -> None:
        height, width = model.config.size
        for size in sorted({1} if model.tiling else {1, settings.max_batch}):
            frames = [torch.zeros((3, height, width), dtype=torch.uint8)] * size
            model.predict_tensors(frames)

    holder = ModelHolder(
        ServedModel.of(predictor, model_path, drift),
        loader or _default_loader(predictor),
        warm,
        drift,
    )

    def run(items: list[tuple[ServedModel, np.ndarray]]) -> list[Prediction]:
        """One model batch; around a swap it holds requests of both models, each run on its
        own."""
        results: list[Prediction | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (served, _) in enumerate(items):
            groups.setdefault(id(served), []).append(i)
        for indices in groups.values():
            served = items[indices[0]][0]
            tensors = [torch.from_numpy(items[i][1]).permute(2, 0, 1) for i in indices]
            for i, p in zip(indices, served.predictor.predict_tensors(tensors), strict=True):
                results[i] = p
        return [p for p in results if p is not None]

    def reload_soon(reason: str, only_if_changed: bool = False) -> Any:
        return holder.reload(reason, only_if_changed)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(run, settings.max_batch, settings.max_wait_ms, settings.queue_size)
        app.state.batcher, app.state.ready = batcher, False
        batcher.start()
        loop = asyncio.get_running_loop()
        background: set[asyncio.Task] = set()

        def spawn(coroutine: Any) -> None:
            task = loop.create_task(coroutine)
            background.add(task)
            task.add_done_callback(background.discard)

        async def warm_up() -> None:
            await batcher.call(functools.partial(warm, holder.current.predictor))
            app.state.ready = True

        spawn(warm_up())
        if settings.watch_interval_s > 0:
            spawn(
                watch_file(
                    holder,
                    settings.watch_interval_s,
                    lambda: reload_soon("the model file changed", only_if_changed=True),
                )
            )
        hangup = False
        if settings.handle_sighup:
            try:
                loop.add_signal_handler(signal.SIGHUP, lambda: spawn(reload_soon("SIGHUP")))
                hangup = True
            except (NotImplementedError, RuntimeError, ValueError, AttributeError) as exc:
                log.warning("SIGHUP cannot reload the model here (%s)", exc)
        try:
            yield
        finally:  # SIGTERM: uvicorn stops accepting, in-flight requests finish, then this
            if hangup:
                loop.remove_signal_handler(signal.SIGHUP)
            for task in list(background):
                task.cancel()
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
    app.state.holder, app.state.feedback = holder, store

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
            return JSONResponse({"status": "ready", "model_id": holder.current.ident})
        return JSONResponse({"status": "starting"}, 503, headers={"Retry-After": "1"})

    @app.get("/v1/model", dependencies=guarded)
    async def model_info(request: Request) -> dict:
        served = holder.current
        meta = served.predictor.metadata
        return {
            "model_id": served.ident,
            "model": holder.describe(),
            "adps_version": __version__,
            "runtime": served.predictor.runtime,
            "model_config": meta.get("model_config"),
            "preprocess": meta.get("preprocess")
            or {
                k: meta[k]
                for k in ("image_size", "mean", "std", "input_dtype", "channel_order")
                if k in meta
            },
            "thresholds": served.predictor.thresholds.summary(),
            "decision_rule": served.predictor.thresholds.rule(),
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
            "drift": {
                "window": drift.window,
                "alarm": drift.alarm,
                "min_images": drift.min_images,
            },
            "keep_images": None if store is None else store.describe(),
            "watch_interval_s": settings.watch_interval_s or None,
        }

    @app.get("/v1/drift", dependencies=guarded)
    async def drift_report() -> dict:
        served = holder.current
        return {"model_id": served.ident, **served.drift.report()}

    @app.post("/v1/predict", dependencies=guarded)
    async def predict(request: Request, outputs: str = "") -> JSONResponse:
        start = time.perf_counter()
        wanted = {o for o in outputs.split(",") if o}
        unknown = wanted - set(OUTPUTS)
        if unknown:
            raise ServeError(400, f"unknown outputs {sorted(unknown)}; choose from {list(OUTPUTS)}")
        served = holder.acquire()  # this request runs on the model current now, to its end
        try:
            return await _predict(request, served, wanted, start)
        finally:
            holder.release(served)

    async def _predict(
        request: Request, served: ServedModel, wanted: set[str], start: float
    ) -> JSONResponse:
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
        ids = [new_id() for _ in images]
        keeping = None
        if store is not None:  # written while the model runs

            def keep() -> list[bool]:
                kept = []
                for ident, (_, data), image in zip(ids, uploads, images, strict=True):
                    try:
                        kept.append(store.keep(ident, data, image))
                    except OSError as exc:
                        log.error("cannot keep image %s: %s", ident, exc)
                        kept.append(False)
                return kept

            keeping = asyncio.ensure_future(run_in_threadpool(keep))
        try:
            predictions = await request.app.state.batcher.submit(
                [(served, image) for image in images]
            )
        except Busy:
            raise ServeError(
                503,
                "the server is busy (request queue full); retry later",
                {"Retry-After": str(settings.retry_after_s)},
            ) from None
        except Exception as exc:  # the model failed on this batch; the server goes on
            log.exception("model failure")
            raise ServeError(500, f"model failure: {exc}") from None
        finally:
            kept = None if keeping is None else await keeping
        if served.drift.add(p.score for p in predictions):
            _log_flip(served)
        milliseconds = (time.perf_counter() - start) * 1000
        answers = []
        for i, (p, image, (name, _)) in enumerate(zip(predictions, images, uploads, strict=True)):
            answer = prediction_json(
                p, image, served.predictor, served.ident, milliseconds, wanted, name
            )
            answer["id"] = ids[i]
            if kept is not None:
                answer["kept"] = kept[i]
            answers.append(answer)
        return JSONResponse(answers[0] if single else answers)

    @app.post("/v1/feedback", dependencies=guarded)
    async def feedback(request: Request) -> JSONResponse:
        if store is None:
            raise ServeError(
                404,
                "this service keeps no images, so it takes no verdicts (start it with "
                "--keep-images DIR)",
            )
        ident, verdict, mask = await _read_verdict(request, settings)
        try:
            line = await run_in_threadpool(store.record, ident, verdict, mask)
        except FeedbackError as exc:
            raise ServeError(exc.status, exc.message) from None
        return JSONResponse(line)

    @app.post("/v1/model/reload", dependencies=guarded)
    async def reload() -> JSONResponse:
        result = await holder.reload("POST /v1/model/reload")
        return JSONResponse(result.to_dict(), 422 if result.error else 200)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(
            resources.files("adps.serve").joinpath("page.html").read_text(encoding="utf-8")
        )

    return app


def _log_flip(served: ServedModel) -> None:
    r = served.drift.report()
    ks, share = r["scores_under_threshold"], r["share_over_threshold"]
    facts = (
        f"window {r['window']['images']} images: scores under the threshold vs calibration "
        f"KS D {_fmt(ks['statistic'])} p {_fmt(ks['p_value'])}; over the threshold "
        f"{share['over']} (expected rate {_fmt(share['expected_false_alarm_rate'])}) p "
        f"{_fmt(share['p_value'])}; alarm {r['alarm']:g}"
    )
    if r["drifting"]:
        log.warning("drift: %s is drifting (%s)", served.ident, facts)
    else:
        log.warning("drift: %s is no longer drifting (%s)", served.ident, facts)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


async def _read_verdict(request: Request, settings: ServeSettings) -> tuple[str, str, bytes | None]:
    """(id, verdict, mask PNG bytes or None) from a multipart form or a JSON body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _body(request, settings)
    mask: bytes | None = None
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=8)
        fields: dict[str, Any] = dict(form.items())
        upload = fields.pop("mask", None)
        if upload is not None:
            if not hasattr(upload, "read"):
                raise ServeError(422, "'mask' must be a file (a PNG), not a text field")
            mask = await upload.read()
    elif kind == "application/json":
        try:
            fields = json.loads(body)
        except ValueError:
            raise ServeError(400, "the body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise ServeError(422, 'the JSON body must be an object: {"id": ..., "verdict": ...}')
    else:
        raise ServeError(
            415,
            f"unsupported content type {kind or '(none)'!r}: send a form (id, verdict and, "
            "multipart, optionally a mask file) or application/json",
        )
    ident, verdict = fields.get("id"), fields.get("verdict")
    if not isinstance(ident, str) or not ident:
        raise ServeError(422, "give the image's 'id' (from /v1/predict's answer)")
    if not isinstance(verdict, str):
        raise ServeError(422, "give a 'verdict': 'normal' or 'defect'")
    return ident, verdict.strip().lower(), mask


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
        files: list[tuple[str | None, bytes]] = [  # a client's name: only as client_name makes it
            (client_name(getattr(v, "filename", None)) or key, await v.read())
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
