"""Scoring as a stream on Ray Data: `adps predict --engine ray` and :func:`predict_stream`.

The same outputs as `adps predict` (masks/, overlays/, predictions.csv, predictions.json), from
a folder, glob or file list of any size, on one machine or a cluster:

* The driver lists the inputs (:func:`adps.data.inputs.collect_inputs`, as the local engine
  does) and cuts the list into chunks of whole inference batches.
* Ray tasks decode the chunks in parallel (``map_batches`` of a function): pixels travel as raw
  uint8 bytes, an unreadable file travels as its reason.
* A pool of actors (``map_batches`` of a class on an ``ActorPoolStrategy``) each holds one predictor
  from ``adps.load`` (torch checkpoint, ONNX, OpenVINO or TorchScript) and writes each image's
  mask and overlay PNG as it goes, under the same names as the local engine.
* The driver streams the small result rows back (``iter_batches``), puts them back in input
  order with a reorder buffer (rows arrive in the order actors finish), and appends them to
  one predictions.csv and one predictions.json (:class:`PredictionTables`).

Why one table file rather than shards plus a merge: the rows are small (about 100 bytes an
image) and arrive almost in order, so the driver writes them as they come and the reorder
buffer only holds those that overtook a slower batch; the user gets the exact file the local
engine writes, with nothing to merge. Memory is bounded by Ray's streaming window (a few batches
of decoded images per actor and decode task), not by the number of inputs; the list of input
paths (one string each) is the only thing that grows with it.

The actors run on the machine Ray places them on, so on a cluster ``out`` and the inputs must be
on a file system every node sees at the same path (NFS, a mounted bucket).

``import ray`` happens inside the functions: importing this module does not load Ray.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adps.data.decode import DEFAULT_MAX_PIXELS
from adps.data.inputs import collect_inputs
from adps.errors import AdpsError
from adps.ray.decoding import decode_chunk
from adps.report.predictions import ImageOutputs, PredictionTables, RunInfo

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]

DEFAULT_CHUNK = 32  # images per Ray batch when --batch-size is not given: a multiple of 1 and 32

_OUTPUT_FIELDS = (
    ("index", "int64"),
    ("path", "string"),
    ("score", "float64"),
    ("decision", "string"),
    ("defect_area", "int64"),
    ("mask", "string"),
    ("overlay", "string"),
    ("reason", "string"),
    ("info", "string"),
)


@dataclass(frozen=True)
class RayOptions:
    """How the scoring runs on Ray.

    ``address``: None starts a new local Ray instance for the run (or uses the one this
    process is already connected to); "auto" joins the cluster started on this machine
    (``ray start``); "ray://host:10001" a remote one. ``actors``: predictors running at once
    (None: as many as the cluster has CPUs for, ``cpus_per_actor`` each). ``cpus_per_actor``
    also sets each actor's torch/OpenMP threads. ``decode_tasks``: decode tasks running at once
    (None: ``actors``); each reserves ``decode_cpus`` (default 0: decoding is short and mostly
    waits on the disk, so it shares the actors' CPUs; a reservation must fit beside the
    actors', or the run is refused). ``chunk``: images per Ray batch
    (None: a multiple of the inference batch, about 32 images); a chunk is what an actor scores
    in one call and what a decode task decodes, so it bounds the memory per task.
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    decode_tasks: int | None = None
    decode_cpus: float = 0.0
    chunk: int | None = None

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise AdpsError(f"actors must be at least 1, got {self.actors}")
        if self.cpus_per_actor <= 0:
            raise AdpsError(f"CPUs per actor must be above 0, got {self.cpus_per_actor}")
        if self.gpus_per_actor < 0:
            raise AdpsError(f"GPUs per actor must be 0 or more, got {self.gpus_per_actor}")
        if self.decode_tasks is not None and self.decode_tasks < 1:
            raise AdpsError(f"decode tasks must be at least 1, got {self.decode_tasks}")
        if not 0 <= self.decode_cpus <= 64:
            raise AdpsError(f"CPUs per decode task must lie in [0, 64], got {self.decode_cpus}")
        if self.chunk is not None and self.chunk < 1:
            raise AdpsError(f"images per chunk must be at least 1, got {self.chunk}")


@dataclass(frozen=True)
class PredictOptions:
    """What `adps predict` takes besides the inputs: the same meaning on every engine."""

    device: str = "auto"
    batch_size: int | None = None
    backend: str = "auto"
    precision: str | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    images: bool = True

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise AdpsError(f"the batch size must be at least 1, got {self.batch_size}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise AdpsError(f"max_pixels must be at least 1 or None, got {self.max_pixels}")


@dataclass
class ScoringResult:
    """What a run did: counts, failures (input, reason) in input order, the folder files
    skipped for their extension, and the run's model information."""

    out: Path
    images: int
    anomalous: int
    failures: list[tuple[str, str]]
    skipped: list[Path] = field(default_factory=list)
    runtime: str = ""
    decision_rule: str = ""


def predict_stream(
    model: str | Path,
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    options: PredictOptions | None = None,
    ray_options: RayOptions | None = None,
    recursive: bool = False,
    progress: bool = True,
) -> ScoringResult:
    """Score ``inputs`` (files, folders or glob patterns, or one of them) with ``model`` on Ray
    and write what `adps predict` writes into ``out``; see the module docstring.

    Unreadable inputs and inputs that match nothing are in ``result.failures`` (and in
    predictions.json), not raised; an input list that yields no image at all raises
    :class:`AdpsError`.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files, missing, skipped = collect_inputs([str(i) for i in items], recursive)
    if not files:
        reasons = "; ".join(f"{item}: {reason}" for item, reason in missing)
        raise AdpsError(f"no input images found ({reasons})" if reasons else "no input images")
    result = score_files(model, files, out, options, ray_options, missing, progress)
    result.skipped = skipped
    return result


def score_files(
    model: str | Path,
    files: Sequence[tuple[Path, str]],
    out: str | Path,
    options: PredictOptions | None = None,
    ray_options: RayOptions | None = None,
    missing: Sequence[tuple[str, str]] = (),
    progress: bool = True,
) -> ScoringResult:
    """Score ``files`` ((path, output name) pairs, as :func:`collect_inputs` gives them) on
    Ray; ``missing`` are inputs that matched nothing, reported first as the local engine does.

    Starts a local Ray instance (or joins ``ray_options.address``) unless this process is
    already connected; one it started is shut down before returning.
    """
    import ray

    options = options or PredictOptions()
    ray_options = ray_options or RayOptions()
    if not Path(model).is_file():
        raise AdpsError("no such model file", model)
    started = not ray.is_initialized()
    if started:
        ray.init(  # None: a new instance even where `ray start` runs one here ("local")
            address=ray_options.address or "local",
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
        )
    try:
        return _score(
            ray, Path(model), list(files), Path(out), options, ray_options, missing, progress
        )
    finally:
        if started:
            ray.shutdown()


def _score(
    ray: Any,
    model: Path,
    files: list[tuple[Path, str]],
    out: Path,
    options: PredictOptions,
    ray_options: RayOptions,
    missing: Sequence[tuple[str, str]],
    progress: bool,
) -> ScoringResult:
    from tqdm import tqdm

    actors, decoders = _pool_sizes(ray.cluster_resources().get("CPU", 0.0), ray_options)
    batch = options.batch_size
    chunk = ray_options.chunk or (
        batch * max(1, round(DEFAULT_CHUNK / batch)) if batch else DEFAULT_CHUNK
    )
    out.mkdir(parents=True, exist_ok=True)
    dataset = ray.data.from_items(
        list(_chunks(files, chunk)), override_num_blocks=math.ceil(len(files) / chunk)
    )
    dataset.context.enable_progress_bars = False  # the driver's own bar counts images
    scored = dataset.map_batches(
        decode_chunk,
        batch_size=1,  # one chunk per call: a Ray batch is a whole chunk, as the actors expect
        batch_format="pyarrow",
        fn_kwargs={"max_pixels": options.max_pixels},
        num_cpus=ray_options.decode_cpus,
        compute=ray.data.TaskPoolStrategy(size=decoders),
    ).map_batches(
        Scorer,
        batch_size=None,  # each decoded block is one chunk: never cut one in two
        batch_format="pyarrow",
        fn_constructor_kwargs={
            "model": str(model.resolve()),
            "options": options,
            "outputs": ImageOutputs(out, options.images, out.resolve()),
            "threads": max(1, int(ray_options.cpus_per_actor)),
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=ray_options.cpus_per_actor,
        num_gpus=ray_options.gpus_per_actor,
    )
    failures = list(missing)
    anomalous = 0
    info: list = []
    with (
        PredictionTables(out) as tables,
        tqdm(total=len(files), unit="img", desc="predict", disable=not progress) as bar,
    ):
        for record in _in_order(scored.iter_batches(batch_size=None, batch_format="pyarrow")):
            info = info or json.loads(record["info"])
            if record["reason"] is not None:
                failures.append((record["path"], record["reason"]))
            else:
                row = {key: record[key] for key in ("path", "score", "decision", "defect_area")}
                if options.images:
                    row.update(mask=record["mask"], overlay=record["overlay"])
                tables.add(row)
                anomalous += row["decision"] == "anomalous"
            bar.update(1)
        if tables.rows + len(failures) - len(missing) != len(files):
            raise AdpsError(  # a lost row would silently shorten the table: refuse instead
                f"Ray returned {tables.rows + len(failures) - len(missing)} results for "
                f"{len(files)} inputs"
            )
        run = RunInfo(str(model), *info)
        tables.finish(run, failures)
        rows = tables.rows
    return ScoringResult(out, rows, anomalous, failures, [], run.runtime, run.decision_rule)


def _pool_sizes(cpus: float, options: RayOptions) -> tuple[int, int]:
    """(actors, decode tasks) that fit the cluster's ``cpus`` together.

    Both stages run at once, so the actors must leave the decode tasks their CPUs: a pool that
    reserved every CPU would wait forever for a decode task Ray cannot place. Refused up front
    instead."""
    decoders = options.decode_tasks or options.actors or 1
    free = cpus - decoders * options.decode_cpus
    actors = options.actors or max(1, int(free // options.cpus_per_actor))
    if actors * options.cpus_per_actor > free + 1e-9:
        raise AdpsError(
            f"{actors} actor(s) x {options.cpus_per_actor:g} CPU and {decoders} decode task(s) "
            f"x {options.decode_cpus:g} CPU do not fit the Ray cluster's {cpus:g} CPUs (the "
            "scoring would wait forever): give fewer --actors or --cpus-per-actor"
        )
    return actors, decoders


def _chunks(files: list[tuple[Path, str]], size: int) -> Iterator[dict[str, Any]]:
    """The input list as rows of ``size`` consecutive files. The path is the one the user
    gave (what the table shows); the file is absolute (what a worker, in another working
    directory, reads)."""
    for start in range(0, len(files), size):
        part = files[start : start + size]
        yield {
            "start": start,
            "paths": [str(p) for p, _ in part],
            "files": [os.path.abspath(p) for p, _ in part],
            "names": [name for _, name in part],
        }


class Scorer:
    """Ray actor: holds one predictor; scores a decoded chunk, writes each image's mask and
    overlay, and returns one small row per image (the table's columns, or the reason it could
    not be read)."""

    def __init__(
        self, model: str, options: PredictOptions, outputs: ImageOutputs, threads: int = 1
    ):
        import torch

        from adps.export import load_predictor

        # as many torch (or ONNX Runtime, OpenVINO) threads as CPUs reserved, on every node: the
        # runtimes' default, every core of the node, would oversubscribe it with several actors,
        # and the thread count changes the order of torch's sums, so a node that left torch at
        # its default would give scores that differ from the others' in the last digit
        torch.set_num_threads(threads)
        self.predictor = load_predictor(
            model, options.device, options.batch_size, options.backend, options.precision, threads
        )
        self.outputs = outputs
        thresholds = self.predictor.thresholds
        self.info = json.dumps([self.predictor.runtime, thresholds.rule(), thresholds.pixel])

    def __call__(self, chunk: pa.Table) -> pa.Table:
        import numpy as np
        import pyarrow as pa
        import torch

        records = chunk.to_pylist()
        rows: list[dict[str, Any]] = []
        # the local engine runs its forward passes on batch_size consecutive inputs minus the
        # unreadable ones: group the same way, so that both give the same numbers
        step = self.predictor.batch_size
        groups: dict[int, list[dict]] = {}
        for record in records:
            if record["reason"] is not None:
                rows.append(
                    {"index": record["index"], "path": record["path"], "reason": record["reason"]}
                )
            else:
                groups.setdefault(record["index"] // step, []).append(record)
        for group in groups.values():
            images = [
                np.frombuffer(bytearray(r["pixels"]), np.uint8).reshape(r["height"], r["width"], 3)
                for r in group
            ]
            predictions = self.predictor.predict_tensors(
                [torch.from_numpy(image).permute(2, 0, 1) for image in images],
                [r["path"] for r in group],
            )
            for record, image, pred in zip(group, images, predictions, strict=True):
                rows.append(
                    {"index": record["index"], **self.outputs.write(pred, record["name"], image)}
                )
        for row in rows:
            row["info"] = self.info
        schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in _OUTPUT_FIELDS])
        return pa.Table.from_pylist(rows, schema=schema)


def _in_order(batches: Any) -> Iterator[dict[str, Any]]:
    """Rows of ``batches`` in input order: the reorder buffer holds only rows that arrived
    before an earlier one (a batch that overtook a slower one)."""
    waiting: dict[int, dict[str, Any]] = {}
    expected = 0
    for batch in batches:
        for record in batch.to_pylist():
            waiting[record["index"]] = record
        while expected in waiting:
            yield waiting.pop(expected)
            expected += 1
    if waiting:
        raise AdpsError(f"Ray returned no result for input number {expected}")
