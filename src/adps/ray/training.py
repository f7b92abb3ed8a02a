"""Many models at once: one Ray task per benchmark entry (`adps benchmark --engine ray`).

Each task runs :func:`adps.report.benchmark.run_entry`, the function the local loop runs, on
whichever node has the resources the entry declares (:class:`adps.engine.benchmark.Resources`:
CPUs, a GPU share), and writes the entry's folder there. Ray is the scheduler: tasks start as
resources free up, so twelve products on a four-core machine train four at a time, and the
same call on a cluster spreads them over its nodes. The driver decides beforehand which entries
are reused (so a finished product is never sent to a worker), collects each task's row as it
finishes, and keeps the entries' order in the result.

A failure inside an entry (bad data, an error in training) comes back as a row with its error,
from the worker's own handling; a task that dies under it (its worker killed, its node lost,
after Ray's retries) becomes such a row here. Either way the other tasks finish.

On a cluster, the output folder, the data and adps must be at the same paths on every node.
``import ray`` happens inside the functions: importing this module does not load Ray.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from adps.engine.benchmark import BenchmarkEntry
from adps.errors import AdpsError
from adps.report.benchmark import failed_row, run_entry

Row = dict[str, Any]


def _train_entry(entry: BenchmarkEntry, block: dict[str, Any]) -> Row:
    """The task body: torch threads as the CPUs the task reserved (Ray sets OMP for its
    workers, torch keeps its own count), no progress bars (they would go to a worker log)."""
    import torch

    torch.set_num_threads(entry.resources.threads)
    quiet = dataclasses.replace(entry.settings, progress=False)
    return run_entry(dataclasses.replace(entry, settings=quiet), block)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise AdpsError("--engine ray needs Ray: pip install 'adps[ray]'") from exc
    return ray


def _infeasible(ray: Any, entries: Sequence[BenchmarkEntry]) -> list[str]:
    """Entries no node of the cluster could ever run (more CPUs or GPUs than any node has):
    Ray would queue them forever, so they are refused before anything starts."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    bad = []
    for entry in entries:
        need = {"CPU": entry.resources.num_cpus, "GPU": entry.resources.num_gpus}
        if not any(all(node.get(k, 0.0) >= v for k, v in need.items() if v) for node in nodes):
            bad.append(
                f"entry '{entry.name}' needs {entry.resources.num_cpus:g} CPUs and "
                f"{entry.resources.num_gpus:g} GPUs on one node"
            )
    return bad


def train_entries(
    jobs: Sequence[tuple[BenchmarkEntry, dict[str, Any]]],
    address: str | None = None,
    on_done: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Train and test each (entry, its hash block) as one Ray task; their rows, in the order
    of ``jobs``. ``on_done`` is called with each row as its task finishes.

    Joins ``address`` ("auto", "ray://host:10001"; None: the cluster ``RAY_ADDRESS`` names,
    else a new local instance for this call, never one found running on the machine, which
    may be someone else's) unless this process is already connected; an instance it started
    or joined is left (shut down for this process) before returning.
    """
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address or os.environ.get("RAY_ADDRESS") or "local",
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
        )
    try:
        return _train(ray, list(jobs), on_done)
    finally:
        if started:
            ray.shutdown()


def _train(
    ray: Any,
    jobs: list[tuple[BenchmarkEntry, dict[str, Any]]],
    on_done: Callable | None,
    body: Callable[[BenchmarkEntry, dict[str, Any]], Row] = _train_entry,
) -> list[Row]:
    """``body`` is the task (the tests give one whose worker dies)."""
    bad = _infeasible(ray, [entry for entry, _ in jobs])
    if bad:
        raise AdpsError(
            "no node of the Ray cluster has the resources: "
            + "; ".join(bad)
            + " (lower num_cpus/num_gpus, or add such a node)"
        )
    task = ray.remote(body)
    pending: dict[Any, int] = {}
    for index, (entry, block) in enumerate(jobs):
        ref = task.options(
            num_cpus=entry.resources.num_cpus,
            num_gpus=entry.resources.num_gpus,
            name=f"adps-train-{entry.name}",
        ).remote(entry, block)
        pending[ref] = index
    rows: list[Row | None] = [None] * len(jobs)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            index = pending.pop(ref)
            entry, block = jobs[index]
            try:
                row = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker or node died under the task
                row = failed_row(entry.name, block, f"the Ray task failed: {exc}")
            rows[index] = row
            if on_done is not None:
                on_done(row)
    return [row for row in rows if row is not None]


__all__ = ["train_entries"]
