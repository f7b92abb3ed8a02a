"""`adps predict --engine ray` against the single-process `adps predict`, on the same images,
model and runtime: throughput, peak memory, and whether the outputs are identical.

Images: ``--images N`` bottle images (MVTec AD's train/good and test folders, repeated with
horizontal/vertical flips), written once to ``runs/bench_ray_scoring/images_N/``. Each setting
runs as its own `adps predict` command (a fresh process, and for Ray a fresh local instance, so
Ray's start-up is in the time, as a user pays it). Throughput = images / the command's wall time.
Both engines also score the first 64 images alone: the difference of the two runs takes the
fixed costs out (start-up, model loading, shut-down; Ray's are larger: its own processes and one
predictor per actor), which gives ``running_throughput_ratio``, the ratio a long stream tends to.
``--out`` replaces the rows of the same name in an existing results file and keeps the others.

Memory: measured in a second run of the local and the Ray command, not in the timed ones:
reading /proc/<pid>/smaps_rollup of every process in the tree every 0.2 s costs CPU and takes
each process's memory-map lock, which slowed the Ray run (about 20 processes) by about a fifth
against 3% for the local one on 2 cores (ONNX, 1,000 images). ``driver_peak_rss_mib`` is the
`adps predict` process's own peak RSS; ``tree_peak_pss_mib`` is the peak of the summed PSS
(proportional set size: a shared page counts once, split between the processes that map it,
so Ray's shared-memory object store is not counted once per worker) of the command's whole
process tree (for Ray: the driver, raylet, GCS, the workers and actors it starts).

``--cluster`` also starts a local two-node cluster (`ray start --head --num-cpus 1` and a
second `ray start --address ... --num-cpus 1`, each a `--block` child of this script, ended by
their own pid at the end, never `ray stop`, which would end every Ray on the machine) and scores
the same images with `--ray-address` (the head's address, which is what `auto` finds when no
other cluster runs here).

    .venv/bin/python benchmarks/bench_ray_scoring.py --images 100 --runtimes torch   # quick
    .venv/bin/python benchmarks/bench_ray_scoring.py --images 1000 --runtimes torch,onnx \
        --cluster --out benchmarks/results/ray_scoring.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from ray_cluster import CLUSTER_ENV, describe_machine, two_node_cluster

ROOT = Path(__file__).resolve().parents[1]
BOTTLE = ROOT.parent / "shared" / "datasets" / "mvtec_ad" / "bottle"
WORK = ROOT / "runs" / "bench_ray_scoring"
ADPS = [sys.executable, "-m", "adps"]
STARTUP_IMAGES = 64


def make_images(n: int) -> Path:
    """``n`` PNGs from the bottle images and their flips, written once."""
    from PIL import Image, ImageOps

    folder = WORK / f"images_{n}"
    if folder.is_dir() and len(list(folder.glob("*.png"))) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(BOTTLE.glob("train/good/*.png")) + sorted(BOTTLE.glob("test/*/*.png"))
    if not sources:
        raise SystemExit(f"no bottle images under {BOTTLE}")
    flips = [
        lambda i: i,
        ImageOps.mirror,
        ImageOps.flip,
        lambda i: ImageOps.flip(ImageOps.mirror(i)),
    ]
    for k in range(n):
        image = Image.open(sources[k % len(sources)]).convert("RGB")
        flips[(k // len(sources)) % len(flips)](image).save(folder / f"{k:05d}.png")
    return folder


def _tree(pids: list[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def _kib(pid: int, field: str, file: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Peak RSS of ``driver`` and peak summed PSS of the trees under ``roots``."""

    def __init__(self, driver: int, roots: list[int]):
        super().__init__(daemon=True)
        self.driver, self.roots = driver, roots
        self.driver_rss = self.tree_pss = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.driver_rss = max(self.driver_rss, _kib(self.driver, "VmRSS", "status"))
            pss = sum(_kib(p, "Pss", "smaps_rollup") for p in _tree(self.roots))
            self.tree_pss = max(self.tree_pss, pss)
            self.done.wait(0.2)


def score(
    images: Path,
    model: Path,
    out: Path,
    runtime: str,
    extra: list[str],
    roots=(),
    env=None,
    sample: bool = False,
) -> dict:
    """One `adps predict` command, timed; with ``sample`` its memory is sampled too (which
    slows it: see the module's docstring)."""
    backend = ["--backend", "torch"] if runtime == "torch" else []
    command = [*ADPS, "predict", str(images), "--model", str(model), "--out", str(out)]
    command += [*backend, "--device", "cpu", "--no-progress", *extra]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    sampler = Sampler(process.pid, [process.pid, *roots]) if sample else None
    if sampler is not None:
        sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    if sampler is not None:
        sampler.done.set()
        sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    n = len(list(images.glob("*.png")))
    row = {
        "command": " ".join(command[2:]).replace(str(ROOT) + "/", ""),
        "seconds": round(seconds, 1),
        "images_per_s": round(n / seconds, 2),
        "stdout": stdout.strip().splitlines()[-1],
    }
    if sampler is not None:
        row["driver_peak_rss_mib"] = round(sampler.driver_rss / 1024)
        row["tree_peak_pss_mib"] = round(sampler.tree_pss / 1024)
    return row


def digest(folder: Path) -> str:
    """One hash of every mask PNG's name and bytes."""
    h = hashlib.sha256()
    for path in sorted((folder / "masks").glob("*.png")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def same(a: Path, b: Path) -> dict:
    """Whether two runs wrote the same table and masks; where not, by how much they differ."""
    import csv

    import numpy as np
    from PIL import Image

    rows = [list(csv.DictReader((x / "predictions.csv").read_text().splitlines())) for x in (a, b)]
    pixels = 0
    for path in sorted((a / "masks").glob("*.png")):
        other = b / "masks" / path.name
        pixels += int((np.array(Image.open(path)) != np.array(Image.open(other))).sum())
    return {
        "csv_identical": (a / "predictions.csv").read_bytes()
        == (b / "predictions.csv").read_bytes(),
        "masks_identical": digest(a) == digest(b),
        "rows_with_other_score": sum(x["score"] != y["score"] for x, y in zip(*rows, strict=True)),
        "max_score_difference": max(
            abs(float(x["score"]) - float(y["score"])) for x, y in zip(*rows, strict=True)
        ),
        "rows_with_other_decision": sum(
            x["decision"] != y["decision"] for x, y in zip(*rows, strict=True)
        ),
        "mask_pixels_differing": pixels,
    }


def cluster_run(images: Path, model: Path, out: Path, runtime: str, reference: Path) -> dict:
    """The images scored on a two-node cluster on this machine (ray_cluster.two_node_cluster),
    one sampled run (its speed is not compared); the nodes' process trees count in the
    memory."""
    with two_node_cluster() as (address, pids):
        extra = ["--engine", "ray", "--ray-address", address]
        env = {**os.environ, **CLUSTER_ENV}
        row = score(images, model, out, runtime, extra, pids, env, sample=True)
    return {**row, "vs_local_1thread": same(reference, out), "nodes": 2, "cpus_per_node": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--model", type=Path, default=ROOT / "runs/decision/bottle-s0/model.pt")
    parser.add_argument("--runtimes", default="torch,onnx", help="comma-separated: torch, onnx")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cluster", action="store_true", help="also the two-node cluster run")
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    args = parser.parse_args()

    images = make_images(args.images)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    rows = []
    load = os.getloadavg()
    for runtime in args.runtimes.split(","):
        model = args.model
        if runtime == "onnx":
            model = WORK / "model.onnx"
            if not model.is_file():
                subprocess.run(
                    [
                        *ADPS,
                        "export",
                        "--model",
                        str(args.model),
                        "--format",
                        "onnx",
                        "--out",
                        str(model),
                    ],
                    check=True,
                )
        base = WORK / f"out_{args.images}_{runtime}"
        on_ray = ["--engine", "ray", "--actors", str(args.actors)]
        local = score(images, model, base / "local", runtime, [])
        ray = score(images, model, base / "ray", runtime, on_ray)
        for row, name, extra in ((local, "local", []), (ray, "ray", on_ray)):
            sampled = score(images, model, base / f"{name}_sampled", runtime, extra, sample=True)
            row["memory_run"] = {
                k: sampled[k] for k in ("seconds", "driver_peak_rss_mib", "tree_peak_pss_mib")
            }
        # the same commands on the first STARTUP_IMAGES images: what each costs before and
        # after its images (start-up, model loading, shut-down), and so the rate once running
        few = make_images(STARTUP_IMAGES)
        short = {
            name: score(few, model, base / f"{name}_{STARTUP_IMAGES}", runtime, extra)
            for name, extra in (("local", []), ("ray", on_ray))
        }
        # Ray gives each 1-CPU actor one OpenMP thread; torch's sums then run in another order
        # than with the local run's 2 threads, so the exact reference is the local engine on 1
        one = {**os.environ, "OMP_NUM_THREADS": "1"}
        local_1 = score(images, model, base / "local_1thread", runtime, [], env=one)
        values = {
            "local": local,
            "ray": ray,
            "local_1thread": local_1,
            "throughput_ratio": round(ray["images_per_s"] / local["images_per_s"], 3),
            "throughput_ratio_vs_local_1thread": round(
                ray["images_per_s"] / local_1["images_per_s"], 3
            ),
            f"on_{STARTUP_IMAGES}_images": {
                name: {k: row[k] for k in ("seconds", "images_per_s")}
                for name, row in short.items()
            },
            # (images - STARTUP_IMAGES) / (seconds - seconds on STARTUP_IMAGES): the rate once
            # running, the fixed costs taken out
            "running_throughput_ratio": round(
                (local["seconds"] - short["local"]["seconds"])
                / (ray["seconds"] - short["ray"]["seconds"]),
                3,
            ),
            "ray_vs_local": same(base / "local", base / "ray"),
            "ray_vs_local_1thread": same(base / "local_1thread", base / "ray"),
        }
        if args.cluster:
            values["cluster"] = cluster_run(
                images, model, base / "cluster", runtime, base / "local_1thread"
            )
        rows.append(
            {
                "run": f"ray-scoring-{runtime}-{args.images}",
                "dataset": f"bottle ({args.images} images: MVTec AD bottle train/good and test, "
                "with flips)",
                "settings": {
                    "runtime": runtime,
                    "actors": args.actors,
                    "images": args.images,
                    "cpus_per_actor": 1,
                    "batch_size": "default",
                },
                "seed": None,
                "machine": describe_machine(),
                "command": "python benchmarks/bench_ray_scoring.py "
                f"--images {args.images} --runtimes {runtime}"
                + (" --cluster" if args.cluster else ""),
                "source": f"measured on {time.strftime('%Y-%m-%d')} (adps at commit {commit}) "
                f"by benchmarks/bench_ray_scoring.py; model: {args.model}",
                "load_average_at_start": [round(x, 2) for x in load],
                "values": values,
            }
        )
        print(json.dumps(rows[-1], indent=1), flush=True)
    if args.out:
        others = []  # a file of earlier runs keeps its other rows; a row of the same name goes
        if args.out.is_file():
            ran = {row["run"] for row in rows}
            others = [r for r in json.loads(args.out.read_text())["rows"] if r["run"] not in ran]
        doc = {
            "benchmark": "ray_scoring",
            "title": "adps predict --engine ray against one process: same images, model, runtime",
            "machine": rows[0]["machine"],
            "source": "; ".join(dict.fromkeys(r["source"] for r in others + rows)),
            "memory": "memory_run: a second run of the same command, sampled from /proc every "
            "0.2 s (the timed runs are not sampled: sampling slows them); driver_peak_rss_mib: "
            "the adps predict process's peak RSS; tree_peak_pss_mib: peak of the summed PSS of "
            "its whole process tree (Ray: raylet, GCS, workers, actors; cluster: also the two "
            "ray start nodes)",
            "rows": others + rows,
        }
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
