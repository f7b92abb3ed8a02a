"""Inference latency and throughput of the ADPS predictor, per runtime.

Measured, for each backend: the full eval-mode forward (normalisation, teacher, patch-fed student,
WMB, PSM, softmax, Gaussian-smoothed score) on float32 [0, 1] input already in the device's
memory (onnxruntime: numpy input on the host, outputs copied back to the host).

* latency: batch 1, median of the timed runs after --warmup untimed runs;
* throughput: images/s at each of --batch-sizes (median time per batch), and the best of them.

A cell stops early once its timed runs exceed --max-seconds (at least one timed run), so the
number of runs is printed with every figure. Backends:

* CPU: torch eager fp32; eager fp32 channels_last; eager bf16 autocast channels_last;
  torch.compile (inductor, default mode); OpenVINO (adps.export's graph, float32 input) at
  f32 and at bf16 inference precision;
  onnxruntime CPUExecutionProvider (the same graph). torch, OpenVINO and onnxruntime use the
  same thread count (--threads, default torch's).
* CUDA (when available): torch eager fp32 (cuDNN defaults, TF32 convolutions allowed); eager
  bf16 autocast; bf16 autocast + channels_last; torch.compile mode="reduce-overhead" (CUDA graphs)
  with bf16 autocast + channels_last; onnxruntime CUDAExecutionProvider when installed.

On a shared or busy machine pass ``--threads 1``: with every core in use, OpenMP's spinning
threads made torch eager up to 10x slower at 2 threads on a shared 2-core machine (the load
average is printed in the header).

Weights: the pretrained Lite0 teacher with a random student/PSM (timing does not depend on the
weights), or a trained model with --checkpoint (its image size then overrides --size).

    .venv/bin/python benchmarks/bench_inference.py                   # size 256, k 8, CPU (+CUDA)
    .venv/bin/python benchmarks/bench_inference.py --device cpu --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adps.config import ModelConfig
from adps.models.adps import ADPS


@dataclass
class Result:
    device: str
    backend: str
    dtype: str
    layout: str
    threads: str
    latency_ms: float | None = None
    latency_runs: int = 0
    throughput: dict[int, tuple[float, int]] = field(default_factory=dict)  # batch -> (img/s, n)
    setup_s: float = 0.0
    note: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="time a trained model (adps checkpoint .pt)")
    p.add_argument("--size", type=int, default=256, help="image size (default 256)")
    p.add_argument("--k", type=int, default=8, help="student patches per side (default 8)")
    p.add_argument("--batch-sizes", default="1,8,32", help="throughput batch sizes (1,8,32)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per cell (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per cell (default 2)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=20.0,
        help="stop a cell's timed runs after this many seconds (default 20)",
    )
    p.add_argument(
        "--device",
        choices=("all", "cpu", "cuda"),
        default="all",
        help="all = CPU, plus CUDA when available (default)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument(
        "--skip",
        default="",
        help="comma list of backends to skip: eager,"
        "channels_last,bf16,compile,onnxruntime,openvino",
    )
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    return p.parse_args(argv)


def build_model(args: argparse.Namespace) -> tuple[ADPS, str]:
    if args.checkpoint:
        from adps.engine.checkpoint import Checkpoint

        model = Checkpoint.load(args.checkpoint).model("cpu")
        return model, f"checkpoint {args.checkpoint}"
    config = ModelConfig(image_size=args.size, k=args.k)
    try:
        model = ADPS(config)
        what = "pretrained teacher, random student/PSM"
    except Exception as exc:  # the teacher's weights package is missing: timing is the same
        model = ADPS(config, pretrained=False)
        what = f"random weights ({exc.__class__.__name__}: teacher weights unavailable)"
    return model.eval(), what


def time_cell(
    run: Callable[[], object],
    sync: Callable[[], None],
    warmup: int,
    repeats: int,
    max_seconds: float,
) -> tuple[float, int]:
    """Median seconds per call and the number of timed calls."""
    for _ in range(warmup):
        run()
    sync()
    times: list[float] = []
    while len(times) < repeats:
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
        if sum(times) > max_seconds:
            break
    return statistics.median(times), len(times)


def measure(
    result: Result,
    make_run: Callable[[int], Callable[[], object]],
    sync: Callable[[], None],
    args: argparse.Namespace,
    batch_sizes: list[int],
) -> None:
    """Fills latency (batch 1) and throughput (every batch size); the batch-1 run is shared."""
    sizes = sorted(set(batch_sizes) | {1})
    for batch in sizes:
        try:
            seconds, n = time_cell(
                make_run(batch), sync, args.warmup, args.repeats, args.max_seconds
            )
        except Exception as exc:  # e.g. out of memory at a large batch: keep the others
            result.note += f" batch {batch} failed: {type(exc).__name__}: {str(exc)[:80]};"
            if _is_oom(exc):
                torch.cuda.empty_cache()
                break
            continue
        if batch == 1:
            result.latency_ms, result.latency_runs = seconds * 1e3, n
        if batch in batch_sizes:
            result.throughput[batch] = (batch / seconds, n)


def _is_oom(exc: Exception) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def torch_backend(
    model: ADPS,
    device: torch.device,
    *,
    channels_last: bool = False,
    bf16: bool = False,
    compile_mode: str | None = None,
):
    """A make_run(batch) factory for one torch configuration."""
    net = model.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile_mode is not None:
        # dynamic=False: one static graph per batch size, as a deployment would warm them up
        net = torch.compile(net, mode=compile_mode, dynamic=False)
    size = model.config.image_size

    def make_run(batch: int) -> Callable[[], object]:
        x = torch.rand(batch, 3, size, size, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        )

        def run():
            with torch.inference_mode(), autocast:
                return net(x)

        return run

    return make_run


def onnx_backend(model: ADPS, provider: str, threads: int | None, workdir: Path):
    from adps.engine.runtime import OnnxRunner
    from adps.export import export_onnx

    path = workdir / "model_f32.onnx"
    if not path.exists():
        export_onnx(model, path, input_dtype="float32", verify=False)  # exports a CPU copy
    runner = OnnxRunner(path, providers=[provider], threads=threads)
    if provider not in runner.providers:
        raise RuntimeError(f"{provider} did not load (session uses {runner.providers})")
    size = model.config.image_size
    rng = np.random.default_rng(0)

    def make_run(batch: int) -> Callable[[], object]:
        x = rng.random((batch, 3, size, size), dtype=np.float32)
        feed = {runner.input_name: x}
        return lambda: runner.session.run(runner.output_names, feed)

    return make_run


def openvino_backend(model: ADPS, threads: int | None, workdir: Path, precision: str = "f32"):
    from adps.engine.runtime import OpenVinoRunner
    from adps.export import export_openvino

    path = workdir / "model_f32.xml"
    if not path.exists():
        export_openvino(model, path, input_dtype="float32", verify=False)
    runner = OpenVinoRunner(path, "CPU", threads, precision)
    h, w = model.config.size
    rng = np.random.default_rng(0)

    def make_run(batch: int) -> Callable[[], object]:
        x = rng.random((batch, 3, h, w), dtype=np.float32)
        return lambda: runner(x)

    return make_run


def run_backend(
    results: list[Result],
    result: Result,
    factory: Callable[[], Callable],
    sync: Callable[[], None],
    args: argparse.Namespace,
    batch_sizes: list[int],
) -> None:
    print(
        f"  {result.device} {result.backend} ({result.dtype}, {result.layout}) ...",
        end="",
        flush=True,
    )
    start = time.perf_counter()
    try:
        make_run = factory()
        measure(result, make_run, sync, args, batch_sizes)
        if result.latency_ms is None and not result.throughput:
            result.note = "failed:" + result.note
    except Exception as exc:
        result.note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        if args.verbose:
            traceback.print_exc()
    result.setup_s = time.perf_counter() - start
    results.append(result)
    print(f" {result.setup_s:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    model, what = build_model(args)
    size, k = model.config.image_size, model.config.k
    has_cuda = torch.cuda.is_available()
    devices = {"all": ["cpu"] + (["cuda"] if has_cuda else []), "cpu": ["cpu"], "cuda": ["cuda"]}[
        args.device
    ]
    if "cuda" in devices and not has_cuda:
        sys.exit("--device cuda: CUDA is not available")
    try:
        import onnxruntime as ort

        ort_version, ort_providers = ort.__version__, ort.get_available_providers()
    except ImportError:
        ort_version, ort_providers = None, []

    load = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(
        f"ADPS inference benchmark: image {size}x{size}, k={k}, backbone "
        f"{model.config.backbone}; {what}"
    )
    print(
        f"torch {torch.__version__}, onnxruntime {ort_version}, python "
        f"{platform.python_version()}, CPU: {platform.processor() or platform.machine()} "
        f"x{os.cpu_count()}, torch threads {threads}, load average {load}"
    )
    if has_cuda:
        print(f"GPU: {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")
    print(
        f"warm-up {args.warmup}, up to {args.repeats} timed runs per cell "
        f"(stop after {args.max_seconds:g} s), batch sizes {batch_sizes}"
    )

    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for dev in devices:
            device = torch.device(dev)
            sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
            th = str(threads) if dev == "cpu" else "-"

            def add(backend, dtype, layout, factory, skip_key):
                if skip_key in skip:
                    return
                run_backend(
                    results,
                    Result(dev, backend, dtype, layout, th),
                    factory,
                    sync,
                    args,
                    batch_sizes,
                )
                torch.compiler.reset()
                model.to(memory_format=torch.contiguous_format)  # undo channels_last
                if dev == "cuda":
                    torch.cuda.empty_cache()

            add("torch eager", "fp32", "NCHW", lambda: torch_backend(model, device), "eager")
            if dev == "cpu":
                add(
                    "torch eager",
                    "fp32",
                    "channels_last",
                    lambda: torch_backend(model, device, channels_last=True),
                    "channels_last",
                )
                add(
                    "torch eager autocast",
                    "bf16",
                    "channels_last",
                    lambda: torch_backend(model, device, bf16=True, channels_last=True),
                    "bf16",
                )
                add(
                    "torch.compile (inductor)",
                    "fp32",
                    "NCHW",
                    lambda: torch_backend(model, device, compile_mode="default"),
                    "compile",
                )
                add(
                    "OpenVINO CPU",
                    "fp32",
                    "NCHW",
                    lambda: openvino_backend(model, threads, workdir),
                    "openvino",
                )
                add(
                    "OpenVINO CPU",
                    "bf16",
                    "NCHW",
                    lambda: openvino_backend(model, threads, workdir, "bf16"),
                    "openvino",
                )
            else:
                add(
                    "torch eager autocast",
                    "bf16",
                    "NCHW",
                    lambda: torch_backend(model, device, bf16=True),
                    "bf16",
                )
                add(
                    "torch eager autocast",
                    "bf16",
                    "channels_last",
                    lambda: torch_backend(model, device, bf16=True, channels_last=True),
                    "channels_last",
                )
                add(
                    "torch.compile reduce-overhead",
                    "bf16",
                    "channels_last",
                    lambda: torch_backend(
                        model, device, bf16=True, channels_last=True, compile_mode="reduce-overhead"
                    ),
                    "compile",
                )
            provider = "CPUExecutionProvider" if dev == "cpu" else "CUDAExecutionProvider"
            if ort_version is None:
                results.append(
                    Result(dev, "onnxruntime", "fp32", "NCHW", th, note="onnxruntime not installed")
                )
            elif provider not in ort_providers:
                results.append(
                    Result(
                        dev,
                        f"onnxruntime {provider}",
                        "fp32",
                        "NCHW",
                        th,
                        note="provider not available",
                    )
                )
            else:
                add(
                    f"onnxruntime {provider.replace('ExecutionProvider', '')}",
                    "fp32",
                    "NCHW",
                    lambda: onnx_backend(
                        model, provider, threads if dev == "cpu" else None, workdir
                    ),
                    "onnxruntime",
                )
            model.cpu()

    print_table(results, batch_sizes)


def print_table(results: list[Result], batch_sizes: list[int]) -> None:
    head = ["device", "backend", "dtype", "layout", "threads", "latency b1 ms (runs)"]
    head += [f"img/s b{b} (runs)" for b in batch_sizes] + ["best img/s", "time s", "notes"]
    rows = []
    for r in results:
        row = [
            r.device,
            r.backend,
            r.dtype,
            r.layout,
            r.threads,
            "-" if r.latency_ms is None else f"{r.latency_ms:.1f} ({r.latency_runs})",
        ]
        row.extend(
            f"{r.throughput[b][0]:.1f} ({r.throughput[b][1]})" if b in r.throughput else "-"
            for b in batch_sizes
        )
        if r.throughput:
            best = max(r.throughput, key=lambda b: r.throughput[b][0])
            row.append(f"{r.throughput[best][0]:.1f} @b{best}")
        else:
            row.append("-")
        row += [f"{r.setup_s:.0f}", r.note.strip()]
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]

    def line(cells: list) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print()
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    print(
        "\nlatency: median over the timed runs at batch 1; img/s: batch / median batch time; "
        "'time s' = wall time of the backend's cell (export/compile/warm-up included)."
    )


if __name__ == "__main__":
    main()
