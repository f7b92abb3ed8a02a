"""adps benchmark: train + test over several categories, datasets or a manifest of products, one
table at the end.

The entries come from the flags (each category of --data, each --datasets folder) or from a
manifest (:mod:`adps.cli.manifest`, one row per product with its own settings); either way they
become :class:`adps.engine.benchmark.BenchmarkEntry` values, and the engine decides which are
reused (same configuration hash), resumed or trained. This module only parses flags, prints and
picks where the entries run: one after another in this process (``--engine local``) or as one
Ray task each (``--engine ray``, :mod:`adps.ray.training`). Both run the same
:func:`adps.report.benchmark.run_entry` and write the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adps.cli.options import (
    add_data_arguments,
    add_eval_resolution_argument,
    add_overlap_argument,
    add_training_arguments,
    configs_from_args,
    data_spec,
)

if TYPE_CHECKING:
    from adps.data.spec import DataSpec
    from adps.engine.benchmark import BenchmarkEntry, Plan

_RAY_FLAGS = ("ray_address", "num_cpus", "num_gpus")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="train and test over several categories, datasets or a manifest of products",
        description="For every category of --data (--categories), every extra dataset "
        "folder (--datasets), or every row of a --manifest (one model per product, each "
        "with its own settings): train, test, and record the metrics and wall times. "
        "Writes OUT/benchmark.md and OUT/benchmark.json with per-entry rows and the "
        "unweighted mean; each entry's model and metrics stay in OUT/<name>/. "
        "When the command is run again, a finished entry is reused only if it was "
        "made by the same adps version with the same settings (model, training, "
        "data, evaluation); otherwise its files are moved to "
        "OUT/<name>/stale-<hash>/ and it is trained again. An interrupted entry "
        "with the same settings resumes. An entry that fails (unreadable data, an "
        "error in training) is reported in the table with its error, the others "
        "finish, and the command exits with 1. --engine ray trains the entries as one "
        "Ray task each, in parallel over the cores, GPUs and machines of a Ray cluster; "
        "the files are the same as with the local engine. A manifest is an option of "
        "this command rather than a command of its own because it is the same "
        "benchmark: the same table, the same reuse and resume, the flags below as "
        "every row's defaults.",
    )
    add_data_arguments(p, required=False)
    p.add_argument("--categories", nargs="+", default=None, help="categories under --data")
    p.add_argument(
        "--datasets",
        nargs="+",
        default=[],
        metavar="PATH",
        help="further dataset folders (each one entry)",
    )
    p.add_argument(
        "--manifest",
        type=Path,
        metavar="FILE",
        help="a YAML or CSV file with one row per product: name, data (a dataset "
        "folder, relative to the manifest's folder) and any setting of this command "
        "without the dashes (time_budget: 90s, image_size: 128, category: bottle, "
        "prior: memory, ...), plus num_cpus and num_gpus for --engine ray. Instead of "
        "--data/--categories/--datasets; the flags given here are every row's "
        "defaults, a YAML 'defaults:' block overrides them and a row's own value "
        "overrides both. Checked as a whole before anything trains",
    )
    add_training_arguments(p)
    add_eval_resolution_argument(p)
    add_overlap_argument(p, "test")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="output folder")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="never retrain a finished entry: stop with the differing settings "
        "instead when one was made with other settings or another version",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    r = p.add_argument_group("where the entries run")
    r.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: one entry after another in this process; ray: one Ray task per "
        "entry, as many at once as the cluster's resources allow (pip install "
        "'adps[ray]'). Same files either way (default local)",
    )
    r.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to run on: auto = the one started on this machine with 'ray "
        "start', or ray://HOST:10001 (default: start a local Ray instance for this "
        "run). On a cluster, --out, the data and adps itself must be reachable at the "
        "same paths on every node; RAY_ADDRESS, when set, is the default",
    )
    r.add_argument(
        "--num-cpus",
        type=float,
        default=None,
        metavar="N",
        help="CPUs each entry's task reserves (also its torch threads), unless its "
        "manifest row says otherwise (default 1)",
    )
    r.add_argument(
        "--num-gpus",
        type=float,
        default=None,
        metavar="SHARE",
        help="GPUs each entry's task reserves: a share such as 0.25 lets four entries "
        "train on one GPU, unless its manifest row says otherwise (default 0)",
    )
    p.set_defaults(func=run)


def benchmark_entries(args: argparse.Namespace) -> list[tuple[str, DataSpec]]:
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


def _check_flags(args: argparse.Namespace) -> None:
    from adps.errors import AdpsError

    if args.manifest is not None and (args.data or args.categories or args.datasets):
        raise AdpsError("give --manifest or --data/--categories/--datasets, not both")
    if args.engine != "ray":
        given = [f"--{f.replace('_', '-')}" for f in _RAY_FLAGS if getattr(args, f) is not None]
        if given:
            raise AdpsError(f"{', '.join(given)} only apply with --engine ray")
    args.num_cpus = 1.0 if args.num_cpus is None else args.num_cpus
    args.num_gpus = 0.0 if args.num_gpus is None else args.num_gpus


def entries_from_args(args: argparse.Namespace) -> tuple[list[BenchmarkEntry], dict | None]:
    """The entries the flags (or the manifest) describe, every check that needs no training
    done, and the run's configs for the table; an :class:`AdpsError` names the first
    problem."""
    from adps.cli.manifest import entry_settings, read_manifest
    from adps.engine.benchmark import BenchmarkEntry, Resources, config_dicts
    from adps.errors import AdpsError

    if args.manifest is not None:
        manifest = read_manifest(args.manifest, args)
        return manifest.entries, manifest.configs
    named = benchmark_entries(args)
    if not named:
        raise AdpsError(
            "nothing to benchmark: give --data (with --categories), --datasets or --manifest"
        )
    model_config, train_config = configs_from_args(args)
    try:
        resources = Resources(args.num_cpus, args.num_gpus)
    except AdpsError as exc:
        raise AdpsError(f"--num-cpus/--num-gpus: {exc}") from None
    settings = entry_settings(args)
    entries = [
        BenchmarkEntry(name, spec, model_config, train_config, args.out, settings, resources)
        for name, spec in named
    ]
    return entries, config_dicts(model_config, train_config)


def run(args: argparse.Namespace) -> int:
    from adps.engine.benchmark import METRICS, move_aside, plan
    from adps.errors import AdpsError
    from adps.report.benchmark import reused_row, write_benchmark

    _check_flags(args)
    entries, configs = entries_from_args(args)
    plans = [plan(entry, reuse_only=args.reuse) for entry in entries]
    refused = [f"entry '{p.entry.name}': {p.why}" for p in plans if p.action == "refuse"]
    if refused:  # before any training, so --reuse never spends hours and then stops
        raise AdpsError(
            "--reuse: not reusing finished entries made with other settings "
            "(rerun without --reuse to train them again): " + " | ".join(refused)
        )
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for p in plans:
        folder = p.entry.folder
        if p.action == "reuse":
            print(f"{p.entry.name}: reusing {folder / METRICS} (settings {p.block['hash'][:8]})")
            rows[p.entry.name] = reused_row(p.entry)
            continue
        if p.why:
            dest = move_aside(folder, p.old)
            print(f"{p.entry.name}: {p.why}; moved its files to {dest}, training again")
        todo.append(p)
    if todo:
        finished = _run_ray(args, todo) if args.engine == "ray" else _run_local(todo)
        rows.update(finished)
    ordered = [rows[e.name] for e in entries]
    extra = {"manifest": str(args.manifest.resolve())} if args.manifest is not None else None
    table = write_benchmark(args.out, ordered, configs, extra)
    print(table)
    print(f"metric values are percentages; table: {args.out / 'benchmark.md'}")
    failed = [r["name"] for r in ordered if r.get("error")]
    if failed:
        print(f"{len(failed)} of {len(ordered)} entries failed: {', '.join(failed)}")
        return 1
    return 0


def _report(row: dict[str, Any]) -> None:
    """What is printed when an entry finishes: its table row, or its error."""
    from adps.report.tables import markdown_row

    if row.get("error"):
        print(f"{row['name']}: failed: {row['error']}")
        return
    overlap = row.get("overlap") or {}
    if overlap.get("shared"):
        print(
            f"{row['name']}: warning: --allow-overlap: {overlap['shared']} of the "
            f"{overlap['images']} test images were learned from; its figures are inflated"
        )
    print(markdown_row(row["name"], row["metrics"]))


def _run_local(plans: list[Plan]) -> dict[str, dict[str, Any]]:
    from adps.report.benchmark import run_entry

    rows = {}
    for p in plans:
        print(f"== {p.entry.name}")
        rows[p.entry.name] = row = run_entry(p.entry, p.block)
        _report(row)
    return rows


def _run_ray(args: argparse.Namespace, plans: list[Plan]) -> dict[str, dict[str, Any]]:
    from adps.ray.training import train_entries

    print(f"training {len(plans)} entries as Ray tasks: {', '.join(p.entry.name for p in plans)}")
    rows = train_entries([(p.entry, p.block) for p in plans], args.ray_address, on_done=_report)
    return {row["name"]: row for row in rows}
