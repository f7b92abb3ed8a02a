"""The recipe runs of benchmarks/recipes/run.sh as one markdown table, and the plot of pixel AP
and AUPRO against training minutes with PatchCore's point (benchmarks/peers/out/patchcore.json
when the peer script ran here, else the figures recorded in benchmarks/results/patchcore.json).
A run whose folder also holds prior.json (benchmarks/bench_prior.py --out) gains a row for the
same model with the late-fusion memory prior. The rows of runs whose folders an earlier session
did not keep come from benchmarks/results/accuracy_per_minute.json (the rows with a "session").
The committed figures and the docs pages are benchmarks/results/ and
`python benchmarks/results/render.py`; this script prints the runs of one machine's runs/ folder
beside them, to be added to a result file.

    python benchmarks/recipes/table.py [--runs runs/recipes] [--plot /tmp/minutes.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "benchmarks" / "peers" / "out" / "patchcore.json"
RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")
PRIOR_ROW = "fused, boost 2, memory 4096"  # bench_prior's row for the default prior


def recorded_peers() -> dict:
    """benchmarks/results/patchcore.json in this script's shape (fractions, by dataset)."""
    rows = json.loads((RESULTS / "patchcore.json").read_text())["rows"]
    return {
        {"battery weld": "weld"}.get(r["dataset"], r["dataset"]): {
            **{k: v / 100 for k, v in r["metrics"].items()},
            "fit_seconds": r["fit_seconds"],
        }
        for r in rows
        if not r.get("quoted")
    }


def earlier_rows() -> list[dict]:
    """The committed rows of runs whose folders were not kept."""
    rows = json.loads((RESULTS / "accuracy_per_minute.json").read_text())["rows"]
    out = []
    for r in rows:
        if "session" not in r:
            continue
        s = r["settings"]
        recipe = (
            f"{s['lr_schedule']} lr {s['lr']:g}, batch {s['batch']}, "
            f"{'bf16' if s['precision'] == 'bf16' else 'fp32'}, PSM stride "
            f"{s['psm_stride']}, budget {r['budget_minutes']:g} min"
        )
        out.append(
            {
                "run": f"{r['run']} (earlier session)",
                "dataset": "welding" if r["dataset"] == "battery weld" else r["dataset"],
                "minutes": float(r["train_minutes"]),
                "recipe": recipe,
                "metrics": {k: v / 100 for k, v in r["metrics"].items()},
            }
        )
    return out


def load_runs(runs: Path) -> list[dict]:
    rows = []
    for path in sorted(runs.glob("*/*/metrics.json")):
        payload = json.loads(path.read_text())
        ckpt_dir = path.parent
        config = json.loads((ckpt_dir.parent / "benchmark.json").read_text())["train_config"]
        model = json.loads((ckpt_dir.parent / "benchmark.json").read_text())["model_config"]
        row = {
            "run": ckpt_dir.parent.name,
            "dataset": payload["name"],
            "minutes": payload["train_seconds"] / 60,
            "metrics": payload["metrics"],
            "recipe": describe(model, config),
        }
        rows.append(row)
        prior = ckpt_dir / "prior.json"
        if prior.is_file():
            fused = [r for r in json.loads(prior.read_text()) if r["name"] == PRIOR_ROW]
            if fused:
                rows.append(
                    {
                        **row,
                        "run": row["run"] + " + prior",
                        "recipe": row["recipe"] + ", late memory prior (4096)",
                        "metrics": fused[0],
                    }
                )
    return rows


def describe(model: dict, train: dict) -> str:
    budget = train.get("time_budget")
    length = f"budget {budget / 60:g} min" if budget else f"{train['epochs']} epochs"
    precision = "bf16" if train.get("amp") else "fp32"
    prior = (
        f", {model.get('prior_fusion', 'late')} memory prior"
        if model.get("prior") == "memory"
        else ""
    )
    return (
        f"{train.get('lr_schedule', 'multistep')} lr {train['lr']:g}, batch "
        f"{train['batch_size']}, {precision}, PSM stride {model.get('psm_output_stride', 1)}"
        f"{prior}, {length}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "recipes")
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    rows = earlier_rows() + load_runs(args.runs)
    print("| run | dataset | settings | train min | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---|---|" + "---|" * len(COLUMNS))
    for r in rows:
        print(
            f"| {r['run']} | {r['dataset']} | {r['recipe']} | {r['minutes']:.1f} | "
            + " | ".join(f"{100 * r['metrics'][c]:.1f}" for c in COLUMNS)
            + " |"
        )
    peers = json.loads(PEERS.read_text()) if PEERS.is_file() else recorded_peers()
    peers = {{"weld": "welding"}.get(k, k): v for k, v in peers.items()}  # adps's entry names
    for name, p in peers.items():
        print(
            f"| PatchCore (anomalib{', quoted' if p.get('quoted') else ''}) | {name} | "
            f"Lite0 blocks.2+4, 9 neighbours | {p['fit_seconds'] / 60:.1f} | "
            + " | ".join(f"{100 * p[c]:.1f}" if p.get(c) is not None else "" for c in COLUMNS)
            + " |"
        )
    if args.plot:
        plot(rows, peers, args.plot)


def plot(rows: list[dict], peers: dict, out: Path) -> None:
    """Budgeted runs only (their minutes are the budget), one marker per recipe, PatchCore as
    a star at its fit time."""
    from matplotlib.figure import Figure

    timed = [r for r in rows if "budget" in r["recipe"]]
    datasets = sorted({r["dataset"] for r in timed})
    fig = Figure(figsize=(4.8 * len(datasets), 4.6), layout="constrained")
    for i, name in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), i + 1)
        for key, colour in (("pixel_ap", "#d1495b"), ("aupro", "#1f6fb4")):
            for r in (r for r in timed if r["dataset"] == name):
                if "early" in r["recipe"]:
                    continue  # one early-fusion run: in the table, not the plot
                kind = (
                    "fast recipe + prior"
                    if "prior" in r["recipe"]
                    else "fast recipe"
                    if "cosine" in r["recipe"]
                    else "paper recipe"
                )
                marker, alpha = {
                    "fast recipe + prior": ("D", 1.0),
                    "fast recipe": ("o", 0.75),
                    "paper recipe": ("s", 0.4),
                }[kind]
                ax.plot(
                    r["minutes"],
                    100 * r["metrics"][key],
                    marker,
                    color=colour,
                    alpha=alpha,
                    markersize=8,
                    label=f"adps {kind}, {key}",
                )
            peer = peers.get(name)
            if peer and peer.get(key) is not None:  # image-level sets have no pixel metrics
                quoted = " (quoted)" if peer.get("quoted") else ""
                ax.plot(
                    peer["fit_seconds"] / 60,
                    100 * peer[key],
                    "*",
                    color=colour,
                    markersize=14,
                    label=f"PatchCore{quoted}, {key}",
                )
        ax.set_title(name)
        ax.set_xlim(0, max([12] + [r["minutes"] + 2 for r in timed]))
        ax.set_xlabel("training minutes (2-core CPU)")
        ax.set_ylabel("percent")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))  # one entry per label
        ax.legend(
            unique.values(),
            unique.keys(),
            fontsize=7,
            ncol=2,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
        )
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
