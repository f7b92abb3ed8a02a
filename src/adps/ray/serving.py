"""``adps serve --ray``: the same FastAPI service on Ray Serve, with replicas per model.

Design: one ingress deployment and one deployment per model.

* ``model-<name>`` (:class:`ModelReplica`) holds one model's predictor (whatever ``adps.load``
  gives: torch, ONNX, OpenVINO). Its :meth:`ModelReplica.predict` is a ``@serve.batch`` method:
  Serve gathers the single images of concurrent requests (up to ``max_batch``, waiting at most
  ``max_wait_ms``) into one call of the predictor's batched ``predict_tensors``. Each model
  deployment has its own ``num_replicas`` (``--replicas NAME=N``) and resources, so a busy
  product adds replicas (on any node of the cluster) without touching the others, and Serve's
  own queue bound (``max_queued_requests``) answers 503 as the in-process batcher does.
* ``adps-ingress`` (:class:`Ingress`, ``@serve.ingress``) is the app of
  :func:`adps.serve.app.build_app`, the very routes, authentication, decoding, limits,
  kept images and verdicts of ``adps serve``, over lanes (:class:`RemoteLane`) that send each
  decoded image to its model's deployment by handle. The replica answers with the JSON of the
  image (score, decision, thresholds, ``model_id``, PNGs when asked), so a rolling update that
  changes a model mid-stream still answers with the model that ran.

Why not one deployment that holds every model (simpler)? Its replicas would all load every
model and scale together; a line with one busy product would pay memory and start-up for all.
Why not a deployment per model that is a whole app? Then the routes ``/v1/models/{name}/...``
and ``GET /v1/models`` need a router in front anyway; the ingress is that router.

What differs from the in-process service: the drift watch and the kept images live in the
ingress (run one ingress replica, the default, for one drift window per model); a model is
swapped by Serve (``serve deploy`` of a changed config, or ``adps serve --ray`` again: Serve
replaces the replicas one by one), so ``POST .../reload`` answers 501 and says so.

Ray is imported by this module; only ``adps serve --ray`` and ``serve run`` import it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from adps.engine.predict import Prediction
from adps.errors import AdpsError
from adps.serve.app import ServeSettings, build_app, model_id
from adps.serve.batching import Busy
from adps.serve.drift import DriftMonitor, Reference
from adps.serve.lanes import answer_json, log_flip, model_facts, parse_model_specs, warm

log = logging.getLogger("adps.serve")
INGRESS = "adps-ingress"


@dataclass(frozen=True)
class RayServeSettings:
    """How the model deployments run; the service's own settings are :class:`ServeSettings`."""

    replicas: Mapping[str, int] = field(default_factory=dict)  # per model name; default 1
    device: str = "cpu"
    backend: str = "auto"
    precision: str | None = None
    num_cpus: float = 1.0  # per model replica: Ray's scheduling and its threads (one at least)
    num_gpus: float = 0.0  # per model replica; a share (0.25) packs replicas on one GPU
    host: str = "127.0.0.1"  # where Serve's HTTP proxy listens
    port: int = 8000
    app_name: str = "adps"

    def __post_init__(self) -> None:
        for name, count in self.replicas.items():
            if not isinstance(count, int) or count < 1:
                raise AdpsError(f"replicas[{name!r}]: must be a whole number >= 1, got {count!r}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise AdpsError("num_cpus and num_gpus must be >= 0")


@serve.deployment
class ModelReplica:
    """One replica of one model: the predictor, warmed up, behind Serve's request batching."""

    def __init__(
        self,
        name: str,
        path: str,
        device: str,
        backend: str,
        precision: str | None,
        threads: int = 1,
        **batch,
    ):
        from adps.export import load_predictor

        self.name = name
        self.max_batch = int(batch["max_batch"])
        # the replica's CPUs as the runtime's threads: by default OpenVINO and ONNX Runtime take
        # every core of the node in each replica, and the replicas then fight over them
        torch.set_num_threads(threads)
        self.predictor = load_predictor(path, device, self.max_batch, backend, precision, threads)
        self.path = Path(path)
        self.ident = model_id(self.path)
        warm(self.predictor, self.max_batch)
        batched: Any = self.predict  # serve.batch's wrapper, typed as the plain method
        batched.set_max_batch_size(self.max_batch)
        batched.set_batch_wait_timeout_s(float(batch["max_wait_ms"]) / 1000)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        """Serve's batch of single images, as one batched call in a worker thread (the
        replica's event loop keeps taking requests meanwhile)."""
        # images come read-only from Ray's object store; torch wants its own writable copy
        tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images]
        return await asyncio.to_thread(self.predictor.predict_tensors, tensors)

    async def answer(
        self, image: np.ndarray, wanted: list[str], filename: str | None
    ) -> tuple[dict[str, Any], float]:
        """One image's JSON answer (PNGs encoded here, on the replica) and its exact score."""
        prediction = await self.predict(image)
        build = (self.ident, set(wanted), filename)
        if wanted:
            answer = await asyncio.to_thread(
                answer_json, prediction, image, self.predictor.thresholds, *build
            )
        else:
            answer = answer_json(prediction, image, self.predictor.thresholds, *build)
        return answer, float(prediction.score)

    def describe(self) -> dict[str, Any]:
        """The model's facts, and its thresholds (the drift watch's reference)."""
        return {
            "model_id": self.ident,
            "model": {"model_id": self.ident, "file": self.path.name, "replica_of": self.name},
            **model_facts(self.predictor),
            "thresholds_object": self.predictor.thresholds,
        }


class RemoteLane:
    """A model served by its Ray Serve deployment; the drift watch kept here, in the ingress."""

    def __init__(self, name: str, handle: DeploymentHandle, settings: ServeSettings):
        self.name, self.handle, self.settings = name, handle, settings
        self.ready = False
        self.current = ""
        self.described: dict[str, Any] = {}
        self.drift: DriftMonitor | None = None
        self.answered = 0

    async def start(self, spawn) -> None:
        async def first() -> None:  # the model deployment may still be starting
            await self._describe()
            self.ready = True

        spawn(first())

    async def stop(self) -> None:
        return None

    async def _describe(self) -> None:
        described = dict(await self.handle.describe.remote())
        thresholds = described.pop("thresholds_object")
        self.described, self.current = described, described["model_id"]
        self.drift = DriftMonitor(Reference.of(thresholds), self.settings.drift)

    def ident(self) -> str:
        return self.current

    async def answer(
        self, images: list[np.ndarray], wanted: set[str], names: list[str | None]
    ) -> list[dict[str, Any]]:
        try:
            results = await asyncio.gather(
                *(
                    self.handle.answer.remote(image, sorted(wanted), name)
                    for image, name in zip(images, names, strict=True)
                )
            )
        except BackPressureError:
            raise Busy() from None
        self.answered += len(results)
        if any(a["model_id"] != self.current for a, _ in results):
            await self._describe()  # Serve rolled the model's replicas to a new file
        assert self.drift is not None
        if self.drift.add(score for a, score in results if a["model_id"] == self.current):
            log_flip(self.current, self.drift)
        return [a for a, _ in results]

    async def facts(self) -> dict[str, Any]:
        if not self.described:
            await self._describe()
        return {**self.described, "batches_run": None, "images_answered": self.answered}

    async def drift_report(self) -> dict[str, Any]:
        if self.drift is None:
            await self._describe()
        assert self.drift is not None
        return {"model_id": self.current, **self.drift.report()}

    async def reload(self, reason: str) -> tuple[dict[str, Any], int]:
        message = (
            "under Ray Serve a model is swapped by Serve, replica by replica: replace the file "
            "and deploy again (serve deploy with a changed config, or restart adps serve --ray)"
        )
        body = {"reloaded": False, "model_id": self.current, "reason": reason, "error": message}
        return body, 501


@serve.deployment
@serve.ingress()
class Ingress:
    """The service's FastAPI app (:func:`adps.serve.app.build_app`) over the model handles."""

    def __init__(
        self, handles: dict[str, DeploymentHandle], settings: ServeSettings, default: str | None
    ):
        self.settings, self.default = settings, default
        self.lanes = {name: RemoteLane(name, h, settings) for name, h in handles.items()}

    def __serve_build_asgi_app__(self):
        return build_app(self.lanes, self.settings, self.default)


def build(
    models: Mapping[str, str | Path],
    settings: ServeSettings | None = None,
    ray_settings: RayServeSettings | None = None,
    default: str | None = None,
) -> Any:
    """The Serve application (``serve.run`` it): ``{name: model file}`` models, each its own
    deployment ``model-<name>`` with ``ray_settings.replicas[name]`` replicas."""
    settings = settings or ServeSettings()
    ray_settings = ray_settings or RayServeSettings()
    unknown = set(ray_settings.replicas) - set(models)
    if unknown:
        raise AdpsError(f"replicas name models that are not served: {sorted(unknown)}")
    if default is not None and default not in models:
        raise AdpsError(f"default model {default!r}: no such model (served: {list(models)})")
    # a replica has no SIGHUP and no file watch: Serve swaps models
    settings = dataclasses.replace(settings, handle_sighup=False, watch_interval_s=0.0)
    actor = {"num_cpus": ray_settings.num_cpus, "num_gpus": ray_settings.num_gpus}
    ongoing = 2 * settings.max_batch  # per replica: one batch running, the next one gathering
    handles = {
        name: ModelReplica.options(  # type: ignore[attr-defined]
            name=f"model-{name}",
            num_replicas=ray_settings.replicas.get(name, 1),
            max_ongoing_requests=ongoing,
            max_queued_requests=settings.queue_size,
            ray_actor_options=actor,
        ).bind(
            name,
            str(Path(path).resolve()),
            ray_settings.device,
            ray_settings.backend,
            ray_settings.precision,
            max(1, int(ray_settings.num_cpus)),
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
        )
        for name, path in models.items()
    }
    ingress: Any = Ingress  # the deployment serve.deployment made of the class
    # the ingress only waits on the models: it takes as many requests at once as the models'
    # queues hold (Serve's default, 5, would starve the models' batches)
    return ingress.options(
        name=INGRESS,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=len(models) * (ongoing + settings.queue_size),
    ).bind(handles, settings, default)


def app_builder(args: dict[str, Any]) -> Any:
    """For ``serve run`` / ``serve deploy`` configs (``import_path:
    adps.ray.serving:app_builder``): ``args`` holds ``models`` (``{name: path}`` or a list of
    ``NAME=PATH``), and optionally ``replicas`` (``{name: n}``), ``default_model``, ``device``,
    ``backend``, ``precision``, ``num_cpus``, ``num_gpus`` and any :class:`ServeSettings` field
    (``token``, ``max_batch``, ``max_wait_ms``, ``queue_size``, ``keep_dir``, ...)."""
    args = dict(args)
    given = args.pop("models", None)
    if isinstance(given, Mapping):
        specs = [f"{name}={path}" for name, path in given.items()]
    elif isinstance(given, list | tuple):
        specs = [str(s) for s in given]
    else:
        raise AdpsError("app_builder: give 'models' as {name: path} or a list of NAME=PATH")
    models = parse_model_specs(specs)
    ray_fields = {f.name for f in dataclasses.fields(RayServeSettings)}
    ray_settings = RayServeSettings(
        **{k: args.pop(k) for k in list(args) if k in ray_fields - {"host", "port", "app_name"}}
    )
    default = args.pop("default_model", None)
    if "keep_dir" in args and args["keep_dir"] is not None:
        args["keep_dir"] = Path(args["keep_dir"])
    serve_fields = {f.name for f in dataclasses.fields(ServeSettings)}
    unknown = set(args) - serve_fields
    if unknown:
        raise AdpsError(f"app_builder: unknown settings {sorted(unknown)}")
    return build(models, ServeSettings(**args), ray_settings, default)


def serve_on_ray(
    models: Mapping[str, Path],
    settings: ServeSettings,
    ray_settings: RayServeSettings,
    default: str | None = None,
) -> int:
    """``adps serve --ray``: joins the Ray cluster at ``RAY_ADDRESS`` (else starts a local
    one), deploys, and serves until interrupted (Ctrl-C or SIGTERM)."""
    import os
    import signal

    import ray

    started = not ray.is_initialized()
    if started:  # RAY_ADDRESS: that cluster; else a Ray of our own, not one found running here
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local")

    def stop(signum: int, frame: Any) -> None:  # SIGTERM as Ctrl-C: shut Serve and Ray down
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        # inside the try: Serve's proxy answers before serve.run has seen every deployment
        # running, so a stop can come while it still waits
        serve.start(http_options={"host": ray_settings.host, "port": ray_settings.port})
        serve.run(
            build(models, settings, ray_settings, default),
            name=ray_settings.app_name,
            route_prefix="/",
        )
        served = ", ".join(
            f"{name}={path} x{ray_settings.replicas.get(name, 1)}" for name, path in models.items()
        )
        print(
            f"serving {served} on Ray Serve at http://{ray_settings.host}:{ray_settings.port} "
            f"(ingress {INGRESS}, deployments model-<name>); Ctrl-C stops it",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # the shutdown runs to its end: a second Ctrl-C or SIGTERM would leave Serve's actors
        # or a Ray instance behind
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        if started:  # our own Ray: all of it goes
            serve.shutdown()
            ray.shutdown()
        else:  # a cluster's: only this app
            serve.delete(ray_settings.app_name)
    return 0


__all__ = [
    "INGRESS",
    "Ingress",
    "ModelReplica",
    "RayServeSettings",
    "RemoteLane",
    "app_builder",
    "build",
    "serve_on_ray",
]
