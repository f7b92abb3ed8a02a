"""Load test of `adps serve`: N concurrent clients for a bounded time, micro-batching on and off.

Starts the server (a subprocess on 127.0.0.1), waits for /v1/health, then runs ``--clients``
asyncio clients (httpx) that POST one real image in a loop for ``--seconds``, and prints
requests/s, p50/p95/p99 latency and the error count per setting. The offline row is the same
model through ``adps.load`` in this process, images/s at each ``--offline-batches`` size, the
best of which is the target (the service should reach 90% of it); it decodes the same image
bytes for every prediction, as the server does. The clients run on the same machine and take
their share of its cores.

With ``--reload-model M2`` the server serves a copy of ``--model``; ``--reload-at`` seconds into
each load test the copy is replaced by ``M2`` (a rename, as ``mv`` does) and ``POST
/v1/model/reload`` swaps it in. The row then also reports the failed requests, the answers of
each model, whether they switched at one point in time (every answer of the old model began
before every answer of the new one ended), when the reload was asked and answered, and the
longest time without an answer around it.

    .venv/bin/python benchmarks/bench_serve.py --model runs/demo/model.pt --image part.png
    .venv/bin/python benchmarks/bench_serve.py --model model.onnx --clients 16 --seconds 60
    .venv/bin/python benchmarks/bench_serve.py --model model.pt --image part.png \
        --reload-model model-updated.pt --reload-at 20 --seconds 40 --max-batches 8

Several models at once: repeat ``--model NAME=PATH``; the server hosts them all and client
``i`` posts to ``/v1/models/<model i mod n>/predict``; each row then also reports requests/s,
latency and errors per model (``per_model``), and the offline figure is measured per model.
``--append-to benchmarks/results/serve.json`` adds the run's rows to the results file.
``--ray`` runs the server as ``adps serve --ray`` (Ray Serve on a local Ray it starts, the
clients through Serve's HTTP proxy; ``--replicas NAME=N`` passed on).

    .venv/bin/python benchmarks/bench_serve.py --model a=a.pt --model b=b.pt --image part.png \
        --clients 8 --seconds 30 --max-batches 8 [--ray --replicas a=1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import httpx
import numpy as np
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load_test(
    base: str,
    body: bytes,
    clients: int,
    seconds: float,
    swap: tuple[Path, Path, float] | None,
    routes: dict[str, str] | None = None,
) -> dict:
    """``swap``: (the served file, the model to put in its place, seconds into the test);
    ``routes``: {model name: predict path} with several models (client i posts to the
    route i mod n), else /v1/predict."""
    routes = routes or {"": "/v1/predict"}
    names = list(routes)
    latencies, errors, statuses = [], 0, {}
    per_model: dict[str, dict] = {n: {"latencies": [], "errors": 0, "statuses": {}} for n in names}
    answers: list[tuple[float, float, int, str | None]] = []  # start, end, status, model_id
    reload: dict = {}
    begin = time.perf_counter()
    stop = begin + seconds

    async def client(http: httpx.AsyncClient, name: str) -> None:
        nonlocal errors
        mine = per_model[name]
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                r = await http.post(
                    f"{base}{routes[name]}", content=body, headers={"Content-Type": "image/png"}
                )
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                mine["statuses"][r.status_code] = mine["statuses"].get(r.status_code, 0) + 1
                model = r.json().get("model_id") if swap is not None else None
                answers.append((start - begin, time.perf_counter() - begin, r.status_code, model))
                if r.status_code != 200 or (name and r.json().get("model") != name):
                    errors += 1  # an answer from another model is an error too
                    mine["errors"] += 1
                    continue
            except httpx.HTTPError:
                errors += 1
                mine["errors"] += 1
                answers.append((start - begin, time.perf_counter() - begin, -1, None))
                continue
            latencies.append(time.perf_counter() - start)
            mine["latencies"].append(latencies[-1])

    async def swapper(http: httpx.AsyncClient) -> None:
        assert swap is not None
        served, replacement, at = swap
        await asyncio.sleep(at)
        tmp = served.with_name(f".{served.name}.new")
        shutil.copyfile(replacement, tmp)
        os.replace(tmp, served)
        reload["asked_s"] = time.perf_counter() - begin
        r = await http.post(f"{base}/v1/model/reload")
        reload["answered_s"] = time.perf_counter() - begin
        reload["status"] = r.status_code
        reload["answer"] = r.json()

    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        begin, cpu = time.perf_counter(), time.process_time()
        stop = begin + seconds
        tasks = [client(http, names[i % len(names)]) for i in range(clients)]
        if swap is not None:
            tasks.append(swapper(http))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - begin
        client_cores = (time.process_time() - cpu) / wall  # what the load generator itself used
    ms = np.array(latencies) * 1000
    row = {
        "requests": len(latencies),
        "errors": errors,
        "statuses": statuses,
        "requests_per_s": len(latencies) / wall,
        "client_cores": client_cores,
        **{f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 95, 99)},
    }
    if len(names) > 1:
        row["per_model"] = {}
        for name, m in per_model.items():
            ms = np.array(m["latencies"]) * 1000
            row["per_model"][name] = {
                "clients": sum(1 for i in range(clients) if names[i % len(names)] == name),
                "requests": len(m["latencies"]),
                "errors": m["errors"],
                "statuses": m["statuses"],
                "requests_per_s": len(m["latencies"]) / wall,
                **{
                    f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else None
                    for q in (50, 95, 99)
                },
            }
    if swap is not None:
        row["swap"] = swap_summary(answers, reload)
    return row


def swap_summary(answers: list[tuple[float, float, int, str | None]], reload: dict) -> dict:
    """Failed requests and the switch point of a load test across a model swap (seconds from
    the start of the test)."""
    new_id = reload.get("answer", {}).get("model_id") if reload.get("status") == 200 else None
    ok = [a for a in answers if a[2] == 200]
    new = [a for a in ok if new_id is not None and a[3] == new_id]
    old = [a for a in ok if a not in new]
    ends = sorted(a[1] for a in ok)
    around = [
        b - a
        for a, b in pairwise(ends)
        if "asked_s" in reload and reload["asked_s"] - 5 <= b <= reload["answered_s"] + 5
    ]
    return {
        "reload": reload,
        "failed": len(answers) - len(ok),
        "old_answers": len(old),
        "new_answers": len(new),
        "models": sorted({str(a[3]) for a in ok}),
        "last_old_start_s": max((a[0] for a in old), default=None),
        "last_old_end_s": max((a[1] for a in old), default=None),
        "first_new_start_s": min((a[0] for a in new), default=None),
        "first_new_end_s": min((a[1] for a in new), default=None),
        "one_switch_point": bool(old and new and max(a[0] for a in old) < min(a[1] for a in new)),
        "longest_gap_around_swap_ms": 1000 * max(around) if around else None,
    }


def serve(args, max_batch: int) -> dict:
    port = free_port()
    scratch = tempfile.TemporaryDirectory(prefix="bench-serve-")
    models = dict(args.models)
    swap = None
    if args.reload_model is not None:  # a copy the swap can replace
        (name, first), *_ = models.items()
        model = Path(scratch.name) / first.name
        shutil.copyfile(first, model)
        models[name] = model
        swap = (model, args.reload_model, args.reload_at)
    specs = [f"{name}={path}" for name, path in models.items()]
    cmd = [
        sys.executable,
        "-m",
        "adps",
        "serve",
        *(x for spec in specs for x in ("--model", spec)),
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
        "--watch-model",
        "0",  # the swap is the reload's, at a known time
    ]
    if args.ray:
        cmd += ["--ray", *(x for spec in args.replicas for x in ("--replicas", spec))]
    routes = {name: f"/v1/models/{name}/predict" for name in models} if len(models) > 1 else None
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(3000):
            try:
                if httpx.get(f"{base}/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {server.stderr.read()[-2000:]}")
            time.sleep(0.1)
        return asyncio.run(
            load_test(base, args.image.read_bytes(), args.clients, args.seconds, swap, routes)
        )
    finally:
        server.terminate()  # adps serve --ray shuts its Serve and Ray down on SIGTERM
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        scratch.cleanup()


def offline(args, model: Path) -> list[tuple[int, float]]:
    """images/s of the predictor in this process doing the server's work without HTTP: decode
    the same encoded image, predict, at each batch size."""
    from adps import load
    from adps.data.decode import read_image_bytes

    body = args.image.read_bytes()
    rows = []
    for batch in args.offline_batches:
        predictor = load(model, args.device, batch, args.backend)
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
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="the model; repeat as NAME=PATH to serve several at once",
    )
    p.add_argument("--ray", action="store_true", help="serve with adps serve --ray")
    p.add_argument("--replicas", nargs="*", default=[], metavar="NAME=N", help="with --ray")
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
    p.add_argument(
        "--reload-model",
        type=Path,
        help="swap this model in during each load test (POST /v1/model/reload)",
    )
    p.add_argument(
        "--reload-at", type=float, default=None, help="seconds into the load test (default: half)"
    )
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--append-to",
        type=Path,
        metavar="RESULTS_JSON",
        help="with several models: add this run's rows to a results file in the format of "
        "benchmarks/results/serve.json (a row of the same name is replaced)",
    )
    p.add_argument("--runtime-label", default="", help="the rows' runtime, e.g. 'OpenVINO f32'")
    p.add_argument("--dataset-label", default="", help="the rows' dataset, e.g. 'bottle + screw'")
    args = p.parse_args()
    from adps.serve.lanes import parse_model_specs

    args.models = parse_model_specs(args.model)
    if args.reload_model is not None and len(args.models) > 1:
        p.error("--reload-model swaps the one --model; give one")
    if args.reload_at is None:
        args.reload_at = args.seconds / 2
    print(
        f"models {', '.join(f'{n}={m}' for n, m in args.models.items())}"
        f"{' on Ray Serve' if args.ray else ''}, image {args.image}, "
        f"{args.clients} clients x {args.seconds:g} s, "
        f"torch threads {torch.get_num_threads()}"
    )
    per_model = {name: offline(args, path) for name, path in args.models.items()}
    rows: dict = {"offline": next(iter(per_model.values())), "serve": {}}
    if len(per_model) > 1:
        rows["offline_per_model"] = per_model
    # several models share the machine: the target is the mean of their offline bests
    best = float(np.mean([max(rate for _, rate in r) for r in per_model.values()]))
    for name, offline_rows in per_model.items():
        for batch, rate in offline_rows:
            print(f"offline predictor {name}, batch {batch}: {rate:.1f} images/s")
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
        for name, m in r.get("per_model", {}).items():
            print(
                f"  model {name} ({m['clients']} clients): {m['requests_per_s']:.1f} requests/s, "
                f"p50 {_ms(m['p50_ms'])}, p95 {_ms(m['p95_ms'])}, errors {m['errors']} "
                f"{m['statuses']}",
                flush=True,
            )
        if "swap" in r:
            w = r["swap"]
            answer = w["reload"].get("answer", {})
            print(
                f"  swap: reload asked at {w['reload'].get('asked_s', float('nan')):.2f} s, "
                f"answered at {w['reload'].get('answered_s', float('nan')):.2f} s "
                f"(status {w['reload'].get('status')}, load {answer.get('load_s')} s, warm-up "
                f"{answer.get('warm_s')} s{', ' + answer['error'] if 'error' in answer else ''}); "
                f"{w['failed']} failed requests; {w['old_answers']} answers from the old model, "
                f"{w['new_answers']} from the new; last old answer began at "
                f"{_s(w['last_old_start_s'])} and ended at {_s(w['last_old_end_s'])}, first new "
                f"answer began at {_s(w['first_new_start_s'])} and ended at "
                f"{_s(w['first_new_end_s'])}; one switch point: {w['one_switch_point']}; longest "
                f"gap between answers around the swap {_ms(w['longest_gap_around_swap_ms'])}",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    if args.append_to and len(args.models) > 1:
        append_rows(args, rows, per_model, sys.argv[1:])


def append_rows(args, rows: dict, per_model: dict, argv: list[str]) -> None:
    """This run's rows (one per --max-batch) in the results file, one row a line as the file
    keeps them; the per-model split goes in the server column and in ``metrics.per_model``."""
    doc = json.loads(args.append_to.read_text())
    bests = {n: max(r, key=lambda x: x[1]) for n, r in per_model.items()}
    mean_best = float(np.mean([b[1] for b in bests.values()]))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    load = os.getloadavg()[0]
    names = list(args.models)
    for max_batch, r in rows["serve"].items():
        per = r["per_model"]
        split = "; ".join(
            f"{n} {m['requests_per_s']:.1f}/s, p50 {_ms(m['p50_ms'])}, {m['errors']} errors"
            for n, m in per.items()
        )
        where = (
            "`adps serve --ray` (an ingress and a deployment per model on a local Ray)"
            if args.ray
            else "`adps serve`"
        )
        run = f"serve-{len(names)}-models-{'ray' if args.ray else 'plain'}-b{max_batch}"
        row = {
            "run": run,
            "runtime": f"{args.runtime_label or args.backend}, {len(names)} models at once",
            "runtime_note_before": f"{', '.join(names)}, {args.clients // len(names)} clients "
            "each; ",
            "runtime_note_after": "; the target is the mean of the models' offline bests",
            "dataset": args.dataset_label or ", ".join(names),
            "settings": {
                "max_batch": max_batch,
                "clients": args.clients,
                "seconds": args.seconds,
                "models": names,
                "ray": args.ray,
                "replicas": args.replicas,
                "backend": args.backend,
            },
            "server": f"{where}, `--max-batch {max_batch}`: {split}",
            "seed": None,
            "metrics": {
                "requests_per_s": round(r["requests_per_s"], 1),
                "of_offline_best_pct": round(100 * r["requests_per_s"] / mean_best),
                **{f"p{q}_ms": round(r[f"p{q}_ms"]) for q in (50, 95, 99)},
                "errors": r["errors"],
                "requests": r["requests"],
                "offline_best_images_per_s": round(mean_best, 1),
                "offline_best_batch": max(b[0] for b in bests.values()),
                "per_model": {
                    n: {k: round(v, 1) if isinstance(v, float) else v for k, v in m.items()}
                    for n, m in per.items()
                },
            },
            "command": "python benchmarks/bench_serve.py " + shlex.join(argv),
            "caveat": f"clients on the same machine (they used {r['client_cores']:.2f} cores); "
            f"load average {load:.1f} at the end",
            "machine": machine(),
            "source": f"measured with benchmarks/bench_serve.py at commit {commit}",
        }
        doc["rows"] = [x for x in doc["rows"] if x["run"] != run] + [row]
    head = json.dumps({k: v for k, v in doc.items() if k != "rows"}, indent=1, ensure_ascii=False)
    lines = ",\n".join("  " + json.dumps(x, ensure_ascii=False) for x in doc["rows"])
    args.append_to.write_text(head[:-2] + ',\n "rows": [\n' + lines + "\n ]\n}\n")


def machine() -> str:
    """``2-core AMD EPYC 7B13 CPU, no GPU``: the cores this process may use and the CPU."""
    import platform

    name = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{len(os.sched_getaffinity(0))}-core {name}, {gpu}"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


if __name__ == "__main__":
    main()
