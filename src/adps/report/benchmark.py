"""A benchmark's results as files: each entry's metrics, and one table of all entries.

:func:`run_entry` is what one entry's worker does, wherever it runs (the local loop of
``adps benchmark``, or a Ray task of ``--engine ray``): check, train, test and write
``OUT/<name>/metrics.json``; a failure becomes a row that carries its error instead of
stopping the others. :func:`write_benchmark` turns the rows into ``benchmark.md`` and
``benchmark.json``.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

from adps.engine.benchmark import METRICS, BenchmarkEntry, check_overlap, train_and_test
from adps.errors import AdpsError
from adps.fileio import atomic_write_text
from adps.metrics import METRIC_KEYS
from adps.report.tables import markdown_header, markdown_row, write_evaluation

ERROR_LOG = "error.log"  # the traceback of a failed entry, beside its other files


def run_entry(entry: BenchmarkEntry, block: dict[str, Any]) -> dict[str, Any]:
    """Train and test ``entry`` and write its metrics.json; that file's payload. Any failure
    (unreadable data, an overlap refused, an error in training) returns :func:`failed_row`
    and leaves the traceback in ``OUT/<name>/error.log``, so one bad product does not cost
    the others their results."""
    try:
        run = train_and_test(entry, block, check_overlap(entry))
        path = write_evaluation(run.evaluation, entry.folder, entry.name, run.extra)
        return json.loads(path.read_text())
    except Exception as exc:  # any failure: reported in the table, see the docstring
        error = str(exc) if isinstance(exc, AdpsError) else f"{type(exc).__name__}: {exc}"
        try:
            entry.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(entry.folder / ERROR_LOG, traceback.format_exc())
        except OSError:
            pass  # the out folder itself is the problem; the row still says what failed
        return failed_row(entry.name, block, error)


def failed_row(name: str, block: dict[str, Any], error: str) -> dict[str, Any]:
    """A row in the shape of a metrics.json payload, without numbers, with the error."""
    return {
        "name": name,
        "error": " ".join(error.split()),  # one line: it goes into a markdown table cell too
        "metrics": dict.fromkeys(METRIC_KEYS),
        "train_seconds": None,
        "test_seconds": None,
        "entry": block,
    }


def reused_row(entry: BenchmarkEntry) -> dict[str, Any]:
    return json.loads((entry.folder / METRICS).read_text())


def summary_table(rows: list[dict]) -> tuple[str, dict]:
    """The markdown table (entries, then the unweighted mean over the entries that finished)
    and the mean metrics. A failed entry shows n/a and its error in the time columns."""
    mean = {}
    for key in METRIC_KEYS:
        values = [r["metrics"][key] for r in rows if r["metrics"].get(key) is not None]
        mean[key] = sum(values) / len(values) if values else None

    def seconds(row: dict, key: str) -> str:
        return f"{row[key]:.0f}" if row.get(key) is not None else "failed"

    lines = [markdown_header(("train s", "test s"))]
    lines.extend(
        markdown_row(r["name"], r["metrics"])
        + f" {seconds(r, 'train_seconds')} | {seconds(r, 'test_seconds')} |"
        for r in rows
    )
    total_train = sum(r["train_seconds"] or 0 for r in rows)
    total_test = sum(r["test_seconds"] or 0 for r in rows)
    lines.append(markdown_row("**mean**", mean) + f" {total_train:.0f} | {total_test:.0f} |")
    failed = [r for r in rows if r.get("error")]
    if failed:
        lines.append("")
        lines.extend(f"- {r['name']} failed: {r['error']}" for r in failed)
    return "\n".join(lines) + "\n", mean


def write_benchmark(
    out: Path, rows: list[dict], configs: dict[str, dict] | None, extra: dict | None = None
) -> str:
    """Writes ``out/benchmark.md`` and ``out/benchmark.json``; the markdown table. The
    top-level configs are the run's (for a manifest, what a row without settings of its own
    gets; None when that is no valid config by itself); each row keeps the entry block (hash,
    identity) it was made with, which for a manifest may differ row by row."""
    table, mean = summary_table(rows)
    atomic_write_text(out / "benchmark.md", table)
    payload = {
        "rows": rows,
        "mean": mean,
        "model_config": configs["model"] if configs else None,
        "train_config": configs["train"] if configs else None,
        **(extra or {}),
    }
    failed = [r["name"] for r in rows if r.get("error")]
    if failed:
        payload["failed"] = failed
    atomic_write_text(out / "benchmark.json", json.dumps(payload, indent=2))
    return table


__all__ = ["ERROR_LOG", "failed_row", "reused_row", "run_entry", "summary_table", "write_benchmark"]
