"""The inference service: a FastAPI application around one or several models, by name.

Endpoints (all but health and the page need ``Authorization: Bearer <token>`` when a token is
set):

* ``POST /v1/predict``: one image as the raw body (``Content-Type: image/*`` or
  ``application/octet-stream``) or one or more multipart files; JSON back per image: score,
  decision, the thresholds and their source, defect area, image size, model id, milliseconds.
  ``?outputs=mask,overlay`` adds base64 PNGs. Several files give a list.
* ``GET /v1/health``: 200 ``ready`` once a warm-up inference has run, else 503.
* ``GET /v1/model``: configuration, thresholds, pre-processing, version, the model file's hash
  and its last reload.
* ``GET /v1/drift``: the drift watch (:mod:`adps.serve.drift`): the window, its three tests
  and ``drifting``.
* ``POST /v1/feedback``: the operator's verdict on a kept image (``--keep-images``,
  :mod:`adps.serve.feedback`): ``id``, ``verdict`` (``normal`` or ``defect``) and optionally a
  ``mask`` PNG, as multipart fields or JSON (no mask).
* ``POST /v1/model/reload``: loads the model file again, warms it up beside the serving one and
  swaps them without dropping a request (:mod:`adps.serve.models`); SIGHUP and a changed file
  (``watch_interval_s``) do the same.
* ``GET /``: the page (drop images, see overlay, mask, score and decision, the model and drift).

Several models (:func:`create_multi_app`, ``adps serve --model a=a.pt --model b=b.pt``): each
is a lane (:mod:`adps.serve.lanes`) with its own batcher, drift watch, swap and feedback folder
(``keep_dir/<name>``), addressed as ``GET /v1/models`` (the list: id, input size, threshold),
``POST /v1/models/{name}/predict``, ``GET /v1/models/{name}`` (as ``/v1/model``),
``GET /v1/models/{name}/drift``, ``POST /v1/models/{name}/feedback`` and
``POST /v1/models/{name}/reload``; an unknown name is a 404 that lists the served ones. The
one-model routes above address the default model: the only one, or ``default``; with several
and no default they answer 400 and name the models (a client that guesses must not get the
wrong model's verdict). One model is also served under ``/v1/models/<file stem>/``; its
one-model routes answer as they did before names existed, plus the answer's ``model`` (name).

Every answer names the model that produced it (``model_id``: file name and SHA-256 prefix); a
request runs on the model that was current when it arrived.

Every error is a JSON ``{"error": ...}`` with a 4xx/5xx status that names the problem; no
traceback reaches a client. A model's requests go through its lane's :class:`MicroBatcher`, so
concurrent clients share model batches and a full queue answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import signal
import time
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from adps.data.decode import OverPixelLimit, read_image_bytes
from adps.engine.predict import Prediction, Predictor
from adps.errors import AdpsError
from adps.fileio import file_sha256
from adps.serve.batching import Busy
from adps.serve.drift import DriftSettings
from adps.serve.feedback import Feedback, FeedbackError, client_name, new_id
from adps.serve.lanes import NAME, Lane, LaneSettings, LocalLane, answer_json, name_of
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
    drift_baseline: int = 200  # the first this many judged images: a second reference (0: none)
    keep_dir: Path | None = None  # keep request images here and take verdicts (None: neither)
    keep_max_images: int = 10_000  # the store's bounds: the oldest images go first
    keep_max_bytes: int = 2 * 2**30
    watch_interval_s: float = 0.0  # reload when the model file changes (0: do not watch)
    handle_sighup: bool = False  # reload on SIGHUP (the CLI; needs the main thread's loop)

    @property
    def drift(self) -> DriftSettings:
        return DriftSettings(
            self.drift_window, self.drift_alarm, self.drift_min_images, self.drift_baseline
        )

    @property
    def lane(self) -> LaneSettings:
        return LaneSettings(
            self.max_batch, self.max_wait_ms, self.queue_size, self.drift, self.watch_interval_s
        )


class ServeError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def model_id(path: Path) -> str:
    """``name@sha256-prefix``: which file answered, stable across restarts
    (:attr:`ServedModel.ident`)."""
    return f"{path.name}@{file_sha256(path)[:12]}"


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
    answer = answer_json(pred, image, predictor.thresholds, ident, outputs, name)
    answer["milliseconds"] = round(milliseconds, 2)
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
    again for a reload (default: :func:`adps.load` on the predictor's device). The model is
    also served as ``/v1/models/<file stem>/...``."""
    model_path = Path(model_path)
    return create_multi_app({name_of(model_path): (predictor, model_path)}, settings, loader)


def create_multi_app(
    models: Mapping[str, tuple[Predictor, str | Path]],
    settings: ServeSettings = ServeSettings(),
    loader: Callable[[Path], Predictor] | None = None,
    default: str | None = None,
) -> FastAPI:
    """The service around several models, by name: ``{name: (predictor, model file)}``, each
    in a lane of its own (:class:`~adps.serve.lanes.LocalLane`). ``default`` names the model
    the one-model routes (``/v1/predict``, ...) address; with one model it is that one."""
    for name in models:
        if not NAME.fullmatch(name):
            raise AdpsError(f"model name {name!r}: use letters, digits, '_', '.' or '-'")
    lanes = {
        name: LocalLane(
            name, predictor, Path(path), settings.lane, loader or _default_loader(predictor)
        )
        for name, (predictor, path) in models.items()
    }
    return build_app(lanes, settings, default)


def build_app(
    lanes: Mapping[str, Lane], settings: ServeSettings, default: str | None = None
) -> FastAPI:
    """The FastAPI app over ``lanes`` (local ones, or :mod:`adps.ray.serving`'s)."""
    if not lanes:
        raise AdpsError("the service needs at least one model")
    names = list(lanes)
    if default is not None and default not in lanes:
        raise AdpsError(f"--default-model {default!r}: no such model (served: {', '.join(names)})")
    if default is None and len(names) == 1:
        default = names[0]
    drift = settings.drift
    stores: dict[str, Feedback | None] = {
        name: None
        if settings.keep_dir is None
        else Feedback(  # one model keeps where it always did; several, a folder each
            settings.keep_dir if len(names) == 1 else settings.keep_dir / name,
            settings.keep_max_images,
            settings.keep_max_bytes,
        )
        for name in names
    }

    def lane_of(name: str) -> Lane:
        lane = lanes.get(name)
        if lane is None:
            raise ServeError(
                404, f"no model named {name!r}; this service hosts: {', '.join(names)}"
            )
        return lane

    def default_lane() -> Lane:
        if default is None:
            raise ServeError(
                400,
                f"this service hosts {len(names)} models ({', '.join(names)}): address one as "
                "/v1/models/{name}/... (e.g. /v1/models/" + names[0] + "/predict), or start it "
                "with --default-model NAME",
            )
        return lanes[default]

    async def reload_all(reason: str) -> None:
        for lane in lanes.values():
            await lane.reload(reason)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        background: set[asyncio.Task] = set()

        def spawn(coroutine: Any) -> None:
            task = loop.create_task(coroutine)
            background.add(task)
            task.add_done_callback(background.discard)

        for lane in lanes.values():
            await lane.start(spawn)
        hangup = False
        if settings.handle_sighup:
            try:
                loop.add_signal_handler(signal.SIGHUP, lambda: spawn(reload_all("SIGHUP")))
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
            for lane in lanes.values():
                await lane.stop()

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
        description="Anomaly maps, scores and decisions from adps models.",
    )
    app.state.lanes = lanes
    if default is not None and isinstance(lanes[default], LocalLane):
        app.state.holder = lanes[default].holder  # type: ignore[attr-defined]
    app.state.feedback = stores[default] if default is not None else None

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
    async def health() -> JSONResponse:
        if not all(lane.ready for lane in lanes.values()):
            waiting = [name for name, lane in lanes.items() if not lane.ready]
            body: dict[str, Any] = {"status": "starting"}
            if len(names) > 1:
                body["waiting_for"] = waiting
            return JSONResponse(body, 503, headers={"Retry-After": "1"})
        if len(names) == 1:
            return JSONResponse({"status": "ready", "model_id": lanes[names[0]].ident()})
        return JSONResponse(
            {
                "status": "ready",
                "models": {name: lane.ident() for name, lane in lanes.items()},
                "default": default,
            }
        )

    async def model_info(name: str, lane: Lane) -> dict:
        facts = await lane.facts()
        store = stores[name]
        return {
            "name": name,
            "model_id": facts["model_id"],
            "model": facts.get("model"),
            "adps_version": __version__,
            **{k: facts[k] for k in FACTS if k in facts},
            "batching": {
                "max_batch": settings.max_batch,
                "max_wait_ms": settings.max_wait_ms,
                "queue_size": settings.queue_size,
                "batches_run": facts.get("batches_run"),
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
                "baseline": drift.baseline,
            },
            "keep_images": None if store is None else store.describe(),
            "watch_interval_s": settings.watch_interval_s or None,
        }

    @app.get("/v1/models", dependencies=guarded)
    async def list_models() -> dict:
        listed = []
        for name, lane in lanes.items():
            facts = await lane.facts()
            listed.append(
                {
                    "name": name,
                    "model_id": facts["model_id"],
                    "input_size": facts["input_size"],
                    "threshold": facts["threshold"],
                    "decision_rule": facts["decision_rule"],
                    "runtime": facts["runtime"],
                    "ready": lane.ready,
                    "predict": f"/v1/models/{name}/predict",
                }
            )
        return {"models": listed, "default": default}

    @app.get("/v1/model", dependencies=guarded)
    async def default_model_info() -> dict:
        lane = default_lane()
        return await model_info(lane.name, lane)

    @app.get("/v1/models/{name}", dependencies=guarded)
    async def named_model_info(name: str) -> dict:
        return await model_info(name, lane_of(name))

    @app.get("/v1/drift", dependencies=guarded)
    async def default_drift() -> dict:
        return await default_lane().drift_report()

    @app.get("/v1/models/{name}/drift", dependencies=guarded)
    async def named_drift(name: str) -> dict:
        return await lane_of(name).drift_report()

    @app.post("/v1/predict", dependencies=guarded)
    async def default_predict(request: Request, outputs: str = "") -> JSONResponse:
        return await predict(request, default_lane(), outputs)

    @app.post("/v1/models/{name}/predict", dependencies=guarded)
    async def named_predict(request: Request, name: str, outputs: str = "") -> JSONResponse:
        return await predict(request, lane_of(name), outputs)

    async def predict(request: Request, lane: Lane, outputs: str) -> JSONResponse:
        start = time.perf_counter()
        wanted = {o for o in outputs.split(",") if o}
        unknown = wanted - set(OUTPUTS)
        if unknown:
            raise ServeError(400, f"unknown outputs {sorted(unknown)}; choose from {list(OUTPUTS)}")
        store = stores[lane.name]
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
            answers = await lane.answer(images, wanted, [name for name, _ in uploads])
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
        milliseconds = round((time.perf_counter() - start) * 1000, 2)
        for i, answer in enumerate(answers):
            answer["model"] = lane.name
            answer["milliseconds"] = milliseconds
            answer["id"] = ids[i]
            if kept is not None:
                answer["kept"] = kept[i]
        return JSONResponse(answers[0] if single else answers)

    @app.post("/v1/feedback", dependencies=guarded)
    async def default_feedback(request: Request) -> JSONResponse:
        return await feedback(request, default_lane())

    @app.post("/v1/models/{name}/feedback", dependencies=guarded)
    async def named_feedback(request: Request, name: str) -> JSONResponse:
        return await feedback(request, lane_of(name))

    async def feedback(request: Request, lane: Lane) -> JSONResponse:
        store = stores[lane.name]
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
    async def default_reload() -> JSONResponse:
        body, status = await default_lane().reload("POST /v1/model/reload")
        return JSONResponse(body, status)

    @app.post("/v1/models/{name}/reload", dependencies=guarded)
    async def named_reload(name: str) -> JSONResponse:
        body, status = await lane_of(name).reload(f"POST /v1/models/{name}/reload")
        return JSONResponse(body, status)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(
            resources.files("adps.serve").joinpath("page.html").read_text(encoding="utf-8")
        )

    return app


# what GET /v1/model passes on from a lane's facts, in this order
FACTS = ("runtime", "input_size", "model_config", "preprocess", "thresholds", "decision_rule")


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


__all__ = [
    "ServeSettings",
    "build_app",
    "create_app",
    "create_multi_app",
    "model_id",
    "name_of",
    "prediction_json",
]
