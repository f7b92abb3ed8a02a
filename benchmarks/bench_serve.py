"""Load test of `adps serve`: N concurrent clients for a bounded time, micro-batching on and off.

Starts the server (a subprocess on 127.0.0.1), waits for /v1/health, then runs ``--clients``
asyncio clients (httpx) that POST one real image in a loop for ``--seconds``, and prints
requests/s, p50/p95/p99 latency and the error count per setting. The offline row is the same
model through ``adps.load`` in this process, images/s at each ``--offline-batches`` size, the
best of which is the target (the service should reach 90% of it); it decodes the same image
bytes for every prediction, as the server does. The clients run on the same machine and take
their share of its cores.

    .venv/bin/python benchmarks/bench_serve.py --model runs/demo/model.pt --image part.png
    .venv/bin/python benchmarks/bench_serve.py --model model.onnx --clients 16 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load_test(base: str, body: bytes, clients: int, seconds: float) -> dict:
    latencies, errors, statuses = [], 0, {}
    stop = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                r = await http.post(
                    f"{base}/v1/predict", content=body, headers={"Content-Type": "image/png"}
                )
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code != 200:
                    errors += 1
                    continue
            except httpx.HTTPError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        begin, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - begin
        client_cores = (time.process_time() - cpu) / wall  # what the load generator itself used
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "statuses": statuses,
        "requests_per_s": len(latencies) / wall,
        "client_cores": client_cores,
        **{f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 95, 99)},
    }


def serve(args, max_batch: int) -> dict:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "adps",
        "serve",
        "--model",
        str(args.model),
        "--port",
        str(port),
        "--device",
        args.device,
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--queue-size",
        str(args.queue_size),
        "--backend",
        args.backend,
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{base}/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {server.stderr.read()[-2000:]}")
            time.sleep(0.1)
        return asyncio.run(load_test(base, args.image.read_bytes(), args.clients, args.seconds))
    finally:
        server.terminate()
        server.wait(60)


def offline(args) -> list[tuple[int, float]]:
    """images/s of the predictor in this process doing the server's work without HTTP: decode
    the same encoded image, predict, at each batch size."""
    from adps import load
    from adps.data.datasets import read_image_bytes

    body = args.image.read_bytes()
    rows = []
    for batch in args.offline_batches:
        predictor = load(args.model, args.device, batch, args.backend)
        n = max(batch, 8)

        def work():
            images = [torch.from_numpy(read_image_bytes(body)).permute(2, 0, 1) for _ in range(n)]
            predictor.predict_tensors(images)

        work()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        rows.append((batch, n / statistics.median(times)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--image", type=Path, required=True, help="one real image to send")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument(
        "--max-batches",
        type=int,
        nargs="+",
        default=[8, 1],
        help="--max-batch settings of the server (1 = micro-batching off)",
    )
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--queue-size", type=int, default=64)
    p.add_argument("--offline-batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--backend", default="auto", help="auto, torch or openvino (server and offline alike)"
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    print(
        f"model {args.model}, image {args.image}, {args.clients} clients x {args.seconds:g} s, "
        f"torch threads {torch.get_num_threads()}"
    )
    rows = {"offline": offline(args), "serve": {}}
    best = max(rate for _, rate in rows["offline"])
    for batch, rate in rows["offline"]:
        print(f"offline predictor, batch {batch}: {rate:.1f} images/s")
    print(
        "| server --max-batch | requests/s | of offline best | p50 ms | p95 ms | p99 ms | errors "
        "| cores used by the clients |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for max_batch in args.max_batches:
        r = serve(args, max_batch)
        rows["serve"][max_batch] = r
        print(
            f"| {max_batch} | {r['requests_per_s']:.1f} | {100 * r['requests_per_s'] / best:.0f}% "
            f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} "
            f"{r['statuses']} | {r['client_cores']:.2f} |",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
