"""adps benchmark: train + test over several categories or datasets, one table at the end."""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from adps.cli.options import add_training_arguments, configs_from_args
from adps.data.spec import add_data_arguments, dataset_name, open_dataset


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
    p.add_argument("--eval-resolution", choices=("working", "original"), default="working")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _entries(args: argparse.Namespace) -> list[argparse.Namespace]:
    entries = []
    if args.data:
        for category in args.categories or [args.category]:
            entries.append(copy.copy(args))
            entries[-1].category = category
    for path in args.datasets:
        entries.append(copy.copy(args))
        entries[-1].data, entries[-1].category = path, None
    return entries


def run(args: argparse.Namespace) -> int:
    from adps.config import to_dict
    from adps.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from adps.engine.evaluate import (
        METRIC_KEYS, evaluate, markdown_header, markdown_row, write_evaluation)
    from adps.engine.train import FINAL, train
    from adps.errors import AdpsError
    from adps.fileio import atomic_write_text

    entries = _entries(args)
    if not entries:
        raise AdpsError("nothing to benchmark: give --data (with --categories) or --datasets")
    model_config, train_config = configs_from_args(args)
    rows = []
    used: set[str] = set()
    for entry in entries:
        name = dataset_name(entry)
        if name in used:  # two folders both called e.g. "welding": qualify with the parent
            name = f"{Path(entry.data).resolve().parent.name}-{name}"
        while name in used:
            name += "_"
        used.add(name)
        out = args.out / name
        done = out / "metrics.json"
        if done.is_file() and (out / FINAL).is_file():
            print(f"{name}: reusing {done}")
            rows.append(json.loads(done.read_text()))
            continue
        print(f"== {name}")
        t0 = time.perf_counter()
        result = train(model_config, train_config,
                       open_dataset(entry, "train", model_config.image_size), out,
                       resume=(out / "last.pt").is_file(), device=args.device,
                       weights_file=args.teacher_weights, allow_download=args.allow_download,
                       cache_dir=args.cache_dir, progress=not args.no_progress)
        train_wall = time.perf_counter() - t0
        model = model_from_checkpoint(load_checkpoint(result.checkpoint))
        t1 = time.perf_counter()
        evaluation = evaluate(model, open_dataset(entry, "test", model_config.image_size),
                              args.device, eval_resolution=args.eval_resolution,
                              progress=not args.no_progress, cache_dir=args.cache_dir)
        extra = {"train_seconds": train_wall, "test_seconds": time.perf_counter() - t1,
                 "train_images_per_second": result.images_per_second,
                 "eval_resolution": args.eval_resolution}
        write_evaluation(evaluation, out, name, extra)
        rows.append(json.loads(done.read_text()))
        print(markdown_row(name, evaluation.metrics))

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
    table = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "benchmark.md", table)
    atomic_write_text(args.out / "benchmark.json", json.dumps(
        {"rows": rows, "mean": mean, "model_config": to_dict(model_config),
         "train_config": to_dict(train_config)}, indent=2))
    print(table)
    print(f"metric values are percentages; table: {args.out / 'benchmark.md'}")
    return 0
