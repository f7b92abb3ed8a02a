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
        "full queue answers 503 with Retry-After. Needs the serve extra: "
        "pip install 'adps[serve]'.",
    )
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        help="model.pt, model.onnx, model.xml (OpenVINO) or model.ts",
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adps.errors import AdpsError

    try:
        import uvicorn

        from adps.serve.app import ServeSettings, create_app
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
    )
    predictor = load(args.model, args.device, args.max_batch, args.backend, args.precision)
    app = create_app(predictor, args.model, settings)
    auth = "token required" if settings.token else "no token"
    print(
        f"serving {args.model} on http://{args.host}:{args.port} ({auth}; page at /, API "
        f"docs at /docs); runtime: {predictor.runtime}",
        flush=True,
    )
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30
    )
    return 0
