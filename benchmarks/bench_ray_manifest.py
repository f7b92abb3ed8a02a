"""`adps benchmark --manifest` on a local two-node Ray cluster against the single process: it
completes, and the table and the models are the single-process ones.

The manifest: three products from ../shared/datasets, each its own model: MVTec AD bottle, the
battery weld (its disjoint split, benchmarks/splits/battery_weld.json) and MVTec AD screw
(image level only: masks_optional). Small working size, a fixed number of training steps and a
seed, so that a product's numbers do not depend on how fast the machine ran it (a time budget
would train for more or fewer steps under load, and the two runs could not be compared).

Two commands, each a fresh process, torch on one thread in both (a Ray task gets the threads of
the CPUs it reserves, one here; the single process is given OMP_NUM_THREADS=1 to match):

* single process: ``adps benchmark --manifest M --engine local``;
* a two-node cluster on this machine: ``ray start --head --num-cpus 1`` and a second
  ``ray start --address HEAD --num-cpus 1``, each a ``--block`` child of this script, ended by
  its own pid at the end (never ``ray stop``, which ends every Ray on the machine); then
  ``adps benchmark --manifest M --engine ray --ray-address HEAD``. HEAD is the head's address,
  which is what ``--ray-address auto`` finds when this is the only cluster on the machine (the
  explicit address keeps the run on this cluster when another one runs here too).

Compared, per product: the row names and order, the configuration hash, every metric (exact),
the number of test images, and the trained model's parameters (every tensor of model.pt's
state, exact). Also recorded: each command's wall time and each product's train and test times.

    .venv/bin/python benchmarks/bench_ray_manifest.py --quick      # a check of the script
    .venv/bin/python benchmarks/bench_ray_manifest.py --out benchmarks/results/ray_manifest.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ray_cluster import CLUSTER_ENV, describe_machine, two_node_cluster

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
WORK = ROOT / "runs" / "bench_ray_manifest"
ADPS = [sys.executable, "-m", "adps"]
WELD_SPLIT = "disjoint (benchmarks/splits/battery_weld.json)"

PRODUCTS = [
    {"name": "bottle", "data": str(SHARED / "mvtec_ad" / "bottle")},
    {
        "name": "weld",
        "data": str(SHARED / "battery_weld" / "welding"),
        "split_file": str(ROOT / "benchmarks" / "splits" / "battery_weld.json"),
    },
    {
        "name": "screw",
        "data": str(SHARED / "mvtec_ad_screw_image_level" / "screw"),
        "masks_optional": True,
    },
]
DATASETS = {"bottle": "MVTec AD bottle", "weld": "battery weld", "screw": "MVTec AD screw"}


def settings(quick: bool) -> dict:
    return {
        "image_size": 128,
        "epochs": 1,
        "steps_per_epoch": 2 if quick else 30,
        "batch_size": 8,
        "seed": 0,
        "device": "cpu",
        "num_cpus": 1,
    }


def write_manifest(folder: Path, quick: bool) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "products.yaml"
    path.write_text(
        yaml.safe_dump({"defaults": settings(quick), "products": PRODUCTS}, sort_keys=False)
    )
    return path


def benchmark(manifest: Path, out: Path, extra: list[str], env: dict | None = None) -> dict:
    """One `adps benchmark` command in a fresh process: its wall time and table."""
    shutil.rmtree(out, ignore_errors=True)
    command = [*ADPS, "benchmark", "--manifest", str(manifest), "--out", str(out)]
    command += ["--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        raise SystemExit(f"{' '.join(command)} exited with {done.returncode}")
    table = json.loads((out / "benchmark.json").read_text())
    return {
        "wall_seconds": wall,
        "table": table,
        "stdout": done.stdout,
        "load_average": [round(load_before, 2), round(load_after, 2)],
    }


def cluster_benchmark(manifest: Path, out: Path) -> dict:
    """The manifest on a two-node cluster on this machine (ray_cluster.two_node_cluster)."""
    with two_node_cluster() as (address, _):
        run = benchmark(manifest, out, ["--engine", "ray", "--ray-address", address], CLUSTER_ENV)
    return {**run, "nodes": 2, "cpus_per_node": 1}


def same_weights(a: Path, b: Path) -> bool:
    """Every tensor of the two checkpoints' model state is equal, bit for bit."""
    import torch

    from adps.engine.checkpoint import Checkpoint

    sa = Checkpoint.load(a).model().state_dict()
    sb = Checkpoint.load(b).model().state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def compare(local: dict, cluster: dict, local_out: Path, cluster_out: Path) -> dict:
    a, b = local["table"]["rows"], cluster["table"]["rows"]
    per_entry = {}
    for ra, rb in zip(a, b, strict=False):
        per_entry[ra["name"]] = {
            "same_hash": ra["entry"]["hash"] == rb["entry"]["hash"],
            "same_metrics": ra["metrics"] == rb["metrics"],
            "same_test_images": ra["num_images"] == rb["num_images"],
            "same_weights": same_weights(
                local_out / ra["name"] / "model.pt", cluster_out / rb["name"] / "model.pt"
            ),
        }
    return {
        "same_rows": [r["name"] for r in a] == [r["name"] for r in b],
        "same_mean": local["table"]["mean"] == cluster["table"]["mean"],
        "entries": per_entry,
        "all_equal": [r["name"] for r in a] == [r["name"] for r in b]
        and all(all(v.values()) for v in per_entry.values()),
    }


def commit() -> str:
    """The checkout's commit (short), with "+changes" when its tracked files differ from it."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "src"], capture_output=True)
    return head.stdout.strip() + ("+changes" if dirty.returncode else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 training steps: a script check")
    parser.add_argument("--out", type=Path, default=None, help="result JSON to write")
    parser.add_argument("--work", type=Path, default=WORK, help="manifest and run folders")
    args = parser.parse_args()

    manifest = write_manifest(args.work, args.quick)
    local_out, cluster_out = args.work / "local", args.work / "cluster"
    print("single process ...", flush=True)
    local = benchmark(manifest, local_out, [])
    print(f"  {local['wall_seconds']:.0f} s; two-node Ray cluster ...", flush=True)
    cluster = cluster_benchmark(manifest, cluster_out)
    print(f"  {cluster['wall_seconds']:.0f} s", flush=True)
    verdict = compare(local, cluster, local_out, cluster_out)
    print(json.dumps(verdict, indent=2))

    machine = describe_machine()
    script = "benchmarks/bench_ray_manifest.py"
    command = (
        f"python {script}"
        + (" --quick" if args.quick else "")
        + (f" --out {args.out}" if args.out else "")
    )
    source = f"measured on {time.strftime('%Y-%m-%d')} (adps at commit {commit()}) by {script}"
    common = {"seed": 0, "machine": machine, "command": command, "source": source}
    config = settings(args.quick)
    rows = []
    for engine, run in (("single process", local), ("two-node Ray cluster", cluster)):
        for row in run["table"]["rows"]:
            name = row["name"]
            rows.append(
                {
                    "run": f"{engine}: {name}",
                    "engine": engine,
                    "dataset": DATASETS[name],
                    **({"test_split": WELD_SPLIT} if name == "weld" else {}),
                    "settings": config,
                    "metrics": row["metrics"],
                    "values": {
                        "train_seconds": row["train_seconds"],
                        "test_seconds": row["test_seconds"],
                        "test_images": row["num_images"],
                        "hash": row["entry"]["hash"][:12],
                    },
                    **common,
                }
            )
    for engine, run in (("single process", local), ("two-node Ray cluster", cluster)):
        rows.append(
            {
                "run": f"{engine}: the whole manifest",
                "engine": engine,
                "dataset": "bottle, weld, screw",
                "settings": {
                    **config,
                    **({"nodes": 2, "cpus_per_node": 1} if "nodes" in run else {}),
                },
                "values": {
                    "wall_seconds": run["wall_seconds"],
                    "entries": len(run["table"]["rows"]),
                    "load_average_1min_before_after": run["load_average"],
                },
                "caveat": "wall time on a 2-core machine shared with other jobs (the 1-minute "
                "load average before and after is recorded): the cluster's two one-CPU nodes "
                "train two products at once, each task pays a worker start and torch import, "
                "and Ray's own processes share the same two cores",
                **common,
            }
        )
    rows.append(
        {
            "run": "two-node Ray cluster against the single process",
            "dataset": "bottle, weld, screw",
            "settings": config,
            "values": verdict,
            "compared": "per product: row names and order, configuration hash, every metric "
            "(exact), test image count, every tensor of the trained model (exact)",
            **common,
        }
    )
    doc = {
        "benchmark": "ray_manifest",
        "title": "Many models from a manifest: a two-node Ray cluster against one process",
        "kind": "single measurements, one a row (key = run)",
        "machine": machine,
        "source": source,
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.out}")
    if not verdict["all_equal"]:
        raise SystemExit("the cluster's results differ from the single process's")


if __name__ == "__main__":
    main()
