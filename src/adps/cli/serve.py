"""adps serve: an HTTP inference service with a page for the line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from adps.cli.options import add_backend_arguments, add_device_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP (JSON API and a page)",
        description="Serve a model (model.pt, .onnx, .xml or .ts) over HTTP: POST "
        "/v1/predict (an image body or multipart files) answers score, decision, "
        "thresholds, defect area and, with ?outputs=mask,overlay, PNGs; GET "
        "/v1/health, GET /v1/model, the page at / and API docs at /docs. "
        "Concurrent requests share model batches (--max-batch, --max-wait-ms); a "
        "full queue answers 503 with Retry-After. GET /v1/drift compares what the service "
        "judged with the model's calibration and with its first images (--drift-window, "
        "--drift-alarm, --drift-baseline); with "
        "--keep-images, POST /v1/feedback files the operator's verdicts where adps update and "
        "adps calibrate take them; POST /v1/model/reload, SIGHUP or a changed --model file "
        "swaps the model without dropping a request. Several --model NAME=PATH serve several "
        "models, each under /v1/models/NAME/ (GET /v1/models lists them) with its own batcher, "
        "drift watch, swap and feedback folder; --ray runs the same service on Ray Serve with "
        "--replicas per model. Docs: docs/guide/serving.md. Needs the serve extra: pip install "
        "'adps[serve]' (and 'adps[ray]' for --ray).",
    )
    p.add_argument(
        "--model",
        required=True,
        action="append",
        metavar="[NAME=]PATH",
        help="model.pt, model.onnx, model.xml (OpenVINO) or model.ts; repeat it as "
        "NAME=PATH to serve several models (a plain PATH is named after its file's stem)",
    )
    p.add_argument(
        "--default-model",
        metavar="NAME",
        help="with several models, the one the one-model routes (/v1/predict, /v1/model, "
        "/v1/drift, /v1/feedback, /v1/model/reload) address (default: none; they answer 400 "
        "and name the models)",
    )
    p.add_argument(
        "--ray",
        action="store_true",
        help="run the service on Ray Serve (pip install 'adps[ray]'): an ingress deployment "
        "and one deployment per model, each with --replicas and Serve's request batching; "
        "joins the cluster at RAY_ADDRESS if set, else starts a local Ray",
    )
    p.add_argument(
        "--replicas",
        action="append",
        default=[],
        metavar="NAME=N",
        help="with --ray: replicas of the model NAME (default 1 each); repeat per model",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 "
        "opens it to the network, so set a token)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_device_argument(p)
    add_backend_arguments(p)
    p.add_argument(
        "--token",
        default=os.environ.get("ADPS_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' on every endpoint but health "
        "(default: the ADPS_TOKEN environment variable; none = no check)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="images per model batch gathered from concurrent requests (default 8; "
        "1 = no micro-batching)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to share its batch (default 5)",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=64,
        help="requests waiting at most before 503 (default 64)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        help="largest image accepted, in pixels, read from its header before "
        "decoding; a larger one gets 413 (default 40 M)",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=64.0,
        help="largest request accepted, in MiB (default 64)",
    )
    p.add_argument(
        "--drift-window",
        type=int,
        default=200,
        help="the drift watch tests the scores of the last this many images against the "
        "model's calibration (default 200; GET /v1/drift)",
    )
    p.add_argument(
        "--drift-alarm",
        type=float,
        default=0.001,
        help="drifting while any drift test's p-value is under this (default 0.001)",
    )
    p.add_argument(
        "--drift-baseline",
        type=int,
        default=200,
        metavar="N",
        help="the first N images the service judges with a model become a second reference "
        "for the drift watch, beside the calibration: it sees a shift of the line that a "
        "small calibration cannot (default 200; 0 turns it off)",
    )
    p.add_argument(
        "--keep-images",
        type=Path,
        metavar="DIR",
        help="keep each request's image in DIR/images under its id and take the operator's "
        "verdicts on them (POST /v1/feedback), filed in DIR/feedback; with several models, "
        "in DIR/NAME/ per model (default: keep none)",
    )
    p.add_argument(
        "--keep-max-images",
        type=int,
        default=10_000,
        help="images kept at most; the oldest go first (default 10000)",
    )
    p.add_argument(
        "--keep-max-mb",
        type=float,
        default=2048.0,
        help="MiB of kept images at most; the oldest go first (default 2048)",
    )
    p.add_argument(
        "--watch-model",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="look at the --model file this often and swap in a changed one once it has "
        "stayed the same for that long (default 2; 0 = only POST /v1/model/reload and SIGHUP)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from adps.errors import AdpsError

    try:
        import uvicorn

        from adps.serve.app import ServeSettings, create_multi_app
        from adps.serve.drift import DriftSettingError
        from adps.serve.lanes import parse_counts, parse_model_specs
    except ImportError as exc:
        raise AdpsError(
            f"adps serve needs the serve extra ({exc}); install it with pip install 'adps[serve]'"
        ) from exc
    from adps.export import load_predictor as load

    settings = ServeSettings(
        token=args.token or None,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        max_pixels=args.max_pixels,
        max_body_bytes=int(args.max_body_mb * 2**20),
        drift_window=args.drift_window,
        drift_alarm=args.drift_alarm,
        drift_baseline=args.drift_baseline,
        keep_dir=args.keep_images,
        keep_max_images=args.keep_max_images,
        keep_max_bytes=int(args.keep_max_mb * 2**20),
        watch_interval_s=args.watch_model,
        handle_sighup=True,
    )
    try:
        settings.drift  # noqa: B018 (the drift watch's settings check their bounds)
    except DriftSettingError as exc:  # the field window is the option --drift-window
        raise AdpsError(f"--drift-{exc.field.replace('_', '-')} {exc.problem}") from exc
    if args.keep_max_images < 1 or args.keep_max_mb <= 0 or args.watch_model < 0:
        raise AdpsError("--keep-max-images and --keep-max-mb must be positive, --watch-model >= 0")

    models = parse_model_specs(args.model)
    replicas = parse_counts(args.replicas, models, "--replicas")
    if replicas and not args.ray:
        raise AdpsError("--replicas needs --ray (one process serves one copy of each model)")
    if args.default_model is not None and args.default_model not in models:
        raise AdpsError(
            f"--default-model {args.default_model!r}: no such model (served: {', '.join(models)})"
        )
    if args.ray:
        from adps.ray.serving import RayServeSettings, serve_on_ray

        return serve_on_ray(
            models,
            settings,
            RayServeSettings(
                replicas=replicas,
                device=args.device,
                backend=args.backend,
                precision=args.precision,
                host=args.host,
                port=args.port,
            ),
            default=args.default_model,
        )

    def loader(path: Path):
        return load(path, args.device, args.max_batch, args.backend, args.precision)

    loaded = {name: (loader(path), path) for name, path in models.items()}
    app = create_multi_app(loaded, settings, loader, default=args.default_model)
    predictor = next(iter(loaded.values()))[0]
    handler = logging.StreamHandler()  # drift flips and model swaps, on stderr
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    service_log = logging.getLogger("adps.serve")
    service_log.addHandler(handler)
    service_log.setLevel(logging.INFO)
    service_log.propagate = False
    auth = "token required" if settings.token else "no token"
    kept = f"; keeping images in {args.keep_images}" if args.keep_images else ""
    served = ", ".join(f"{name}={path}" for name, path in models.items())
    print(
        f"serving {served} on http://{args.host}:{args.port} ({auth}; page at /, API "
        f"docs at /docs); runtime: {predictor.runtime}{kept}; pid {os.getpid()} (SIGHUP "
        f"reloads the models)",
        flush=True,
    )
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30
    )
    return 0
