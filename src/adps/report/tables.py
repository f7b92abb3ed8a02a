"""Evaluation results as files and table rows: ``metrics.json``, ``metrics.md``, markdown rows.

Values are fractions in [0, 1] in JSON (what programs read) and percentages with one decimal
in markdown (what people read); an undefined metric is ``null`` / ``n/a``, never 0.
"""

from __future__ import annotations

import json
from pathlib import Path

from adps.engine.evaluate import EvalResult
from adps.fileio import atomic_write_text
from adps.metrics import METRIC_KEYS

__all__ = ["format_percent", "markdown_header", "markdown_row", "write_evaluation"]


def format_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown_row(name: str, metrics: dict[str, float | None]) -> str:
    return "| " + " | ".join([name] + [format_percent(metrics.get(k)) for k in METRIC_KEYS]) + " |"


def markdown_header(extra_columns: tuple[str, ...] = ()) -> str:
    columns = ["name", *METRIC_KEYS, *extra_columns]
    return "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)


def write_evaluation(
    result: EvalResult, out_dir: str | Path, name: str, extra: dict | None = None
) -> Path:
    """Writes ``metrics.json`` (fractions in [0, 1], plus speed) and ``metrics.md`` (one row)."""
    out = Path(out_dir)
    payload = {
        "name": name,
        "metrics": result.metrics,
        "num_images": len(result.scores),
        "images_per_second": result.images_per_second,
        "peak_memory_mb": result.peak_memory_mb,
        "memory_kind": result.memory_kind,
        **(extra or {}),
    }
    atomic_write_text(out / "metrics.json", json.dumps(payload, indent=2))
    atomic_write_text(
        out / "metrics.md", markdown_header() + "\n" + markdown_row(name, result.metrics) + "\n"
    )
    return out / "metrics.json"
