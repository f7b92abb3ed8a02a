"""The recipe runs of benchmarks/recipes/run.sh as one markdown table, and the plot of pixel AP
and AUPRO against training minutes with PatchCore's point (benchmarks/peers/out/patchcore.json).

    python benchmarks/recipes/table.py [--runs runs/recipes] [--plot benchmarks/recipes/minutes.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "benchmarks" / "peers" / "out" / "patchcore.json"
COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")


def load_runs(runs: Path) -> list[dict]:
    rows = []
    for path in sorted(runs.glob("*/*/metrics.json")):
        payload = json.loads(path.read_text())
        ckpt_dir = path.parent
        config = json.loads((ckpt_dir.parent / "benchmark.json").read_text())["train_config"]
        model = json.loads((ckpt_dir.parent / "benchmark.json").read_text())["model_config"]
        rows.append({"run": ckpt_dir.parent.name, "dataset": payload["name"],
                     "minutes": payload["train_seconds"] / 60, "metrics": payload["metrics"],
                     "recipe": describe(model, config)})
    return rows


def describe(model: dict, train: dict) -> str:
    budget = train.get("time_budget")
    length = f"budget {budget / 60:g} min" if budget else f"{train['epochs']} epochs"
    precision = "bf16" if train.get("amp") else "fp32"
    return (f"{train.get('lr_schedule', 'multistep')} lr {train['lr']:g}, batch "
            f"{train['batch_size']}, {precision}, PSM stride {model.get('psm_output_stride', 1)}, "
            f"{length}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "recipes")
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    rows = load_runs(args.runs)
    print("| run | dataset | settings | train min | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---|---|" + "---|" * len(COLUMNS))
    for r in rows:
        print(f"| {r['run']} | {r['dataset']} | {r['recipe']} | {r['minutes']:.1f} | "
              + " | ".join(f"{100 * r['metrics'][c]:.1f}" for c in COLUMNS) + " |")
    peers = json.loads(PEERS.read_text()) if PEERS.is_file() else {}
    peers = {{"weld": "welding"}.get(k, k): v for k, v in peers.items()}  # adps's entry names
    for name, p in peers.items():
        print(f"| PatchCore (anomalib) | {name} | Lite0 blocks.2+4, 9 neighbours | "
              f"{p['fit_seconds'] / 60:.1f} | "
              + " | ".join(f"{100 * p[c]:.1f}" for c in COLUMNS) + " |")
    if args.plot:
        plot(rows, peers, args.plot)


# PatchCore on bottle as measured for the issue (its fit did not finish here; see README)
QUOTED = {"bottle": {"fit_seconds": 26.0, "pixel_ap": 0.750, "aupro": 0.933}}


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
                fast = "cosine" in r["recipe"]
                ax.plot(r["minutes"], 100 * r["metrics"][key], "o" if fast else "s",
                        color=colour, alpha=1.0 if fast else 0.45, markersize=8,
                        label=f"adps {'fast' if fast else 'paper'} recipe, {key}")
            peer, quoted = peers.get(name), name not in peers
            peer = peer or QUOTED.get(name)
            if peer:
                ax.plot(peer["fit_seconds"] / 60, 100 * peer[key], "*", color=colour,
                        markersize=14, label=f"PatchCore{' (quoted)' if quoted else ''}, {key}")
        ax.set_title(name)
        ax.set_xlim(0, max([12] + [r["minutes"] + 2 for r in timed]))
        ax.set_xlabel("training minutes (2-core CPU)")
        ax.set_ylabel("percent")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # one entry per label
        ax.legend(unique.values(), unique.keys(), fontsize=7, ncol=2, loc="upper center",
                  bbox_to_anchor=(0.5, -0.2))
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
