"""adps benchmark: train + test over several categories or datasets, one table at the end."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from adps.cli.options import (
    add_data_arguments,
    add_eval_resolution_argument,
    add_training_arguments,
    configs_from_args,
    data_spec,
)

if TYPE_CHECKING:
    from adps.data.spec import DataSpec


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark", help="train and test over several categories or datasets",
        description="For every category of --data (--categories) and every extra dataset "
                    "folder (--datasets): train, test, and record the metrics and wall times. "
                    "Writes OUT/benchmark.md and OUT/benchmark.json with per-entry rows and the "
                    "unweighted mean; each entry's model and metrics stay in OUT/<name>/. "
                    "Finished entries are reused when the command is run again.")
    add_data_arguments(p, required=False)
    p.add_argument("--categories", nargs="+", default=None, help="categories under --data")
    p.add_argument("--datasets", nargs="+", default=[], metavar="PATH",
                   help="further dataset folders (each one entry)")
    add_training_arguments(p)
    add_eval_resolution_argument(p)
    p.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def benchmark_entries(args: argparse.Namespace) -> list[tuple[str, "DataSpec"]]:
    """(unique name, data) per entry: each category of --data, then each --datasets folder."""
    specs = []
    if args.data:
        specs += [data_spec(args, category=c) for c in args.categories or [args.category]]
    specs += [data_spec(args, data=path, category=None) for path in args.datasets]
    entries, used = [], set()
    for spec in specs:
        name = spec.name
        if name in used:  # two folders both called e.g. "welding": qualify with the parent
            name = f"{Path(spec.data).resolve().parent.name}-{name}"
        while name in used:
            name += "_"
        used.add(name)
        entries.append((name, spec))
    return entries


def run_entry(args: argparse.Namespace, name: str, spec, model_config, train_config) -> dict:
    """Train (resuming an interrupted run) and test one entry; its metrics.json payload."""
    from adps.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from adps.engine.evaluate import evaluate
    from adps.engine.tiling import open_split
    from adps.engine.train import LAST, train
    from adps.report.tables import markdown_row, write_evaluation

    out = args.out / name
    print(f"== {name}")
    t0 = time.perf_counter()
    result = train(model_config, train_config, open_split(spec, "train", model_config), out,
                   resume=(out / LAST).is_file(), device=args.device,
                   weights_file=args.teacher_weights, allow_download=args.allow_download,
                   cache_dir=spec.cache_dir, progress=not args.no_progress)
    train_wall = time.perf_counter() - t0
    model = model_from_checkpoint(load_checkpoint(result.checkpoint))
    t1 = time.perf_counter()
    evaluation = evaluate(model, open_split(spec, "test", model_config), args.device,
                          eval_resolution=args.eval_resolution, progress=not args.no_progress,
                          cache_dir=spec.cache_dir)
    extra = {"train_seconds": train_wall, "test_seconds": time.perf_counter() - t1,
             "train_images_per_second": result.images_per_second,
             "eval_resolution": args.eval_resolution}
    path = write_evaluation(evaluation, out, name, extra)
    print(markdown_row(name, evaluation.metrics))
    return json.loads(path.read_text())


def summary_table(rows: list[dict]) -> tuple[str, dict]:
    """The markdown table (entries, then the unweighted mean) and the mean metrics."""
    from adps.metrics import METRIC_KEYS
    from adps.report.tables import markdown_header, markdown_row

    mean = {}
    for key in METRIC_KEYS:
        values = [r["metrics"][key] for r in rows if r["metrics"].get(key) is not None]
        mean[key] = sum(values) / len(values) if values else None
    lines = [markdown_header(("train s", "test s"))]
    for r in rows:
        lines.append(markdown_row(r["name"], r["metrics"]) +
                     f" {r['train_seconds']:.0f} | {r['test_seconds']:.0f} |")
    total_train = sum(r["train_seconds"] for r in rows)
    total_test = sum(r["test_seconds"] for r in rows)
    lines.append(markdown_row("**mean**", mean) + f" {total_train:.0f} | {total_test:.0f} |")
    return "\n".join(lines) + "\n", mean


def run(args: argparse.Namespace) -> int:
    from adps.config import to_dict
    from adps.engine.train import FINAL
    from adps.errors import AdpsError
    from adps.fileio import atomic_write_text

    entries = benchmark_entries(args)
    if not entries:
        raise AdpsError("nothing to benchmark: give --data (with --categories) or --datasets")
    model_config, train_config = configs_from_args(args)
    rows = []
    for name, spec in entries:
        done = args.out / name / "metrics.json"
        if done.is_file() and (args.out / name / FINAL).is_file():
            print(f"{name}: reusing {done}")
            rows.append(json.loads(done.read_text()))
        else:
            rows.append(run_entry(args, name, spec, model_config, train_config))
    table, mean = summary_table(rows)
    atomic_write_text(args.out / "benchmark.md", table)
    atomic_write_text(args.out / "benchmark.json", json.dumps(
        {"rows": rows, "mean": mean, "model_config": to_dict(model_config),
         "train_config": to_dict(train_config)}, indent=2))
    print(table)
    print(f"metric values are percentages; table: {args.out / 'benchmark.md'}")
    return 0
