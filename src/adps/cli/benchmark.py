"""adps benchmark: train + test over several categories or datasets, one table at the end.

Each entry's folder records what produced its numbers (``entry.json`` before training, the same
block in ``metrics.json`` after): the adps version, the model and train configs, the data and
the evaluation settings, and a hash of them. A rerun reuses an entry only when that hash is the
current one, so ``benchmark.json`` never puts today's configuration beside yesterday's numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
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
    from adps.data.fingerprint import Overlap
    from adps.data.spec import DataSpec

ENTRY = "entry.json"  # what an entry is being trained with, written before training starts
METRICS = "metrics.json"
# DataSpec fields that change where or how fast images are read, not the numbers
_NOT_RESULT = {"cache_dir"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="train and test over several categories or datasets",
        description="For every category of --data (--categories) and every extra dataset "
        "folder (--datasets): train, test, and record the metrics and wall times. "
        "Writes OUT/benchmark.md and OUT/benchmark.json with per-entry rows and the "
        "unweighted mean; each entry's model and metrics stay in OUT/<name>/. "
        "When the command is run again, a finished entry is reused only if it was "
        "made by the same adps version with the same settings (model, training, "
        "data, evaluation); otherwise its files are moved to "
        "OUT/<name>/stale-<hash>/ and it is trained again. An interrupted entry "
        "with the same settings resumes.",
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


# --- what an entry's numbers depend on ---------------------------------------------------------


def config_dicts(model_config, train_config) -> dict[str, dict]:
    """The configs as plain data: the one place this command reads the config types, so a
    change of their API is adapted here only."""
    from adps.config import to_dict

    return {"model": to_dict(model_config), "train": to_dict(train_config)}


def entry_identity(args: argparse.Namespace, spec: DataSpec, configs: dict) -> dict:
    """Everything that changes an entry's numbers, as JSON data: the version, the configs, the
    data (path resolved, so the same relative path from another folder is not taken for the
    same data) and the evaluation. Not the cache folder, device or progress bars, which change
    where and how fast it runs, not what it measures."""
    from adps import version

    data = {
        f.name: getattr(spec, f.name)
        for f in dataclasses.fields(spec)
        if f.name not in _NOT_RESULT and f.name != "data"
    }
    data["path"] = str(Path(spec.data).resolve())
    identity = {
        "adps_version": version.__version__,
        **configs,
        "data": data,
        "teacher_weights": (
            str(Path(args.teacher_weights).resolve()) if args.teacher_weights else None
        ),
        "evaluation": {"eval_resolution": args.eval_resolution},
    }
    # through JSON once, so tuples become lists and the dict equals what a file gives back
    return json.loads(json.dumps(identity, default=str))


def identity_hash(identity: dict) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces): equal settings, equal hash."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return flat


def identity_difference(old: dict, new: dict) -> list[str]:
    """``field: old -> new`` for each setting that differs (dotted paths, e.g. ``train.lr``)."""

    def text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    missing = object()
    a, b = _flat(old), _flat(new)
    lines = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key, missing), b.get(key, missing)
        if x != y:
            lines.append(
                f"{key}: {'(absent)' if x is missing else text(x)} -> "
                f"{'(absent)' if y is missing else text(y)}"
            )
    return lines


def recorded_entry(folder: Path) -> dict | None:
    """The ``{"hash", "identity"}`` block the folder's result was made with: from metrics.json
    once finished, else from entry.json (an interrupted run); None when nothing was recorded
    (an entry written before adps recorded it, or an unreadable file)."""
    for name in (METRICS, ENTRY):
        path = folder / name
        if path.is_file():
            try:
                payload = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            block = payload.get("entry") if name == METRICS else payload
            if isinstance(block, dict) and "hash" in block and "identity" in block:
                return block
            return None
    return None


def move_aside(folder: Path, old: dict | None) -> Path:
    """Moves the folder's files into ``stale-<old hash[:8]>/`` so a new run neither resumes
    from nor mixes with them. Moved rather than deleted: a finished result may be hours of
    training, and a mistyped flag should not destroy it."""
    base = f"stale-{old['hash'][:8]}" if old else "stale-unrecorded"
    dest, n = folder / base, 1
    while dest.exists():
        n += 1
        dest = folder / f"{base}-{n}"
    dest.mkdir()
    for path in folder.iterdir():
        if path.is_file():
            path.rename(dest / path.name)
    return dest


# --- one entry --------------------------------------------------------------------------------


def entry_overlap(args: argparse.Namespace, name: str, spec, model_config) -> Overlap:
    """What the entry's test split shares with its training split, checked before anything is
    trained: refused unless ``--allow-overlap``."""
    from adps.data.fingerprint import Fingerprint, check_overlap, file_digests
    from adps.engine.tiling import open_split

    trained = file_digests([r.image for r in open_split(spec, "train", model_config).records])
    test = [r.image for r in open_split(spec, "test", model_config).records]
    overlap = check_overlap(
        Fingerprint(frozenset(trained), recorded=True),
        test,
        f"entry '{name}': the test images",
        args.allow_overlap,
    )
    if overlap:
        print(f"{name}: warning: --allow-overlap: {overlap.summary()}; its figures are inflated")
    return overlap


def run_entry(
    args: argparse.Namespace,
    name: str,
    spec,
    model_config,
    train_config,
    entry: dict,
    overlap: Overlap,
) -> dict:
    """Train (resuming an interrupted run) and test one entry; its metrics.json payload, with
    ``entry`` (hash and identity) recorded before training so an interruption keeps it."""
    from adps.engine.checkpoint import Checkpoint
    from adps.engine.evaluate import evaluate
    from adps.engine.tiling import open_split
    from adps.engine.train import LAST, train
    from adps.fileio import atomic_write_text
    from adps.report.tables import markdown_row, write_evaluation

    out = args.out / name
    print(f"== {name}")
    atomic_write_text(out / ENTRY, json.dumps(entry, indent=2))
    t0 = time.perf_counter()
    result = train(
        model_config,
        train_config,
        open_split(spec, "train", model_config),
        out,
        resume=(out / LAST).is_file(),
        device=args.device,
        weights_file=args.teacher_weights,
        allow_download=args.allow_download,
        cache_dir=spec.cache_dir,
        progress=not args.no_progress,
    )
    train_wall = time.perf_counter() - t0
    model = Checkpoint.load(result.checkpoint).model()
    t1 = time.perf_counter()
    evaluation = evaluate(
        model,
        open_split(spec, "test", model_config),
        args.device,
        eval_resolution=args.eval_resolution,
        progress=not args.no_progress,
        cache_dir=spec.cache_dir,
    )
    extra = {
        "train_seconds": train_wall,
        "test_seconds": time.perf_counter() - t1,
        "train_images_per_second": result.images_per_second,
        "eval_resolution": args.eval_resolution,
        "entry": entry,
        "overlap": {**overlap.to_dict(), "allowed": args.allow_overlap},
    }
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
    lines.extend(
        markdown_row(r["name"], r["metrics"])
        + f" {r['train_seconds']:.0f} | {r['test_seconds']:.0f} |"
        for r in rows
    )
    total_train = sum(r["train_seconds"] for r in rows)
    total_test = sum(r["test_seconds"] for r in rows)
    lines.append(markdown_row("**mean**", mean) + f" {total_train:.0f} | {total_test:.0f} |")
    return "\n".join(lines) + "\n", mean


def _plan(args: argparse.Namespace, name: str, entry: dict) -> tuple[str, dict | None, str]:
    """("reuse" | "train" | "refuse", what the folder recorded, why it is not reusable) for one
    entry; decided for every entry before any trains, so a refusal costs no training time."""
    from adps.engine.train import FINAL, LAST

    folder = args.out / name
    old = recorded_entry(folder)
    finished = (folder / FINAL).is_file() and (folder / METRICS).is_file()
    if old is not None and old["hash"] == entry["hash"]:
        return ("reuse" if finished else "train"), old, ""  # "train" resumes from last.pt
    if not any((folder / f).is_file() for f in (FINAL, LAST, METRICS, ENTRY)):
        return "train", old, ""  # nothing there yet
    if old is None:
        why = (
            f"{folder} holds a result without a recorded configuration (written by an adps "
            f"older than this check)"
        )
    else:
        diff = identity_difference(old["identity"], entry["identity"])
        why = f"{folder} was made with other settings: " + "; ".join(diff)
    has_result = (folder / FINAL).is_file() or (folder / METRICS).is_file()
    return ("refuse" if args.reuse and has_result else "train"), old, why


def run(args: argparse.Namespace) -> int:
    from adps.errors import AdpsError
    from adps.fileio import atomic_write_text

    entries = benchmark_entries(args)
    if not entries:
        raise AdpsError("nothing to benchmark: give --data (with --categories) or --datasets")
    model_config, train_config = configs_from_args(args)
    configs = config_dicts(model_config, train_config)
    plans: list[tuple[str, DataSpec, dict[str, Any], str, dict | None, str]] = []
    for name, spec in entries:
        identity = entry_identity(args, spec, configs)
        entry: dict[str, Any] = {"hash": identity_hash(identity), "identity": identity}
        plans.append((name, spec, entry, *_plan(args, name, entry)))
    refused = [
        f"entry '{name}': {why}" for name, _, _, action, _, why in plans if action == "refuse"
    ]
    if refused:  # before any training, so --reuse never spends hours and then stops
        raise AdpsError(
            "--reuse: not reusing finished entries made with other settings "
            "(rerun without --reuse to train them again): " + " | ".join(refused)
        )
    overlaps = {
        name: entry_overlap(args, name, spec, model_config)  # before any training too
        for name, spec, _, action, _, _ in plans
        if action != "reuse"
    }
    rows = []
    for name, spec, entry, action, old, why in plans:
        folder = args.out / name
        if action == "reuse":
            print(f"{name}: reusing {folder / METRICS} (settings {entry['hash'][:8]})")
            rows.append(json.loads((folder / METRICS).read_text()))
            continue
        if why:
            dest = move_aside(folder, old)
            print(f"{name}: {why}; moved its files to {dest}, training again")
        rows.append(run_entry(args, name, spec, model_config, train_config, entry, overlaps[name]))
    table, mean = summary_table(rows)
    atomic_write_text(args.out / "benchmark.md", table)
    # the top-level configs are this run's; each row keeps the entry block it was made with
    atomic_write_text(
        args.out / "benchmark.json",
        json.dumps(
            {
                "rows": rows,
                "mean": mean,
                "model_config": configs["model"],
                "train_config": configs["train"],
            },
            indent=2,
        ),
    )
    print(table)
    print(f"metric values are percentages; table: {args.out / 'benchmark.md'}")
    return 0
