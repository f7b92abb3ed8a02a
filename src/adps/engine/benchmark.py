"""One benchmark entry as plain data, and what decides whether it must be trained again.

An entry is a name, a dataset, the two configs and how it is evaluated. The same
:class:`BenchmarkEntry` is built by ``adps benchmark --categories``, by a manifest row, or by a
library user, and the same functions run it whether the loop is this process or a Ray task:
so the configuration hash, the reuse decision and the training + testing exist once.

Each entry's folder records what produced its numbers (``entry.json`` before training, the same
block in ``metrics.json`` after): the adps version, the model and train configs, the data and
the evaluation settings, and a hash of them. An entry is reused only when that hash is the
current one, so a table never puts today's configuration beside yesterday's numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adps.config import ModelConfig, TrainConfig, to_dict
from adps.data.spec import DataSpec
from adps.errors import AdpsError

if TYPE_CHECKING:
    from adps.data.fingerprint import Overlap
    from adps.engine.evaluate import EvalResult

ENTRY = "entry.json"  # what an entry is being trained with, written before training starts
METRICS = "metrics.json"
# DataSpec fields that change where or how fast images are read, not the numbers
_NOT_RESULT = {"cache_dir"}
EVAL_RESOLUTIONS = ("working", "original")


@dataclass(frozen=True)
class EntrySettings:
    """How an entry is trained and tested beyond its configs. ``teacher_weights`` and
    ``eval_resolution`` change its numbers (they are part of its identity); the device and the
    progress bars only change where and how fast it runs."""

    device: str = "auto"
    teacher_weights: str | None = None
    allow_download: bool = False
    eval_resolution: str = "working"
    allow_overlap: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.eval_resolution not in EVAL_RESOLUTIONS:
            raise AdpsError(
                f"eval_resolution '{self.eval_resolution}' is not one of {list(EVAL_RESOLUTIONS)}"
            )


@dataclass(frozen=True)
class Resources:
    """What a Ray task that trains one entry reserves on its node: CPUs (also its torch
    threads) and a share of a GPU. Ray accepts a GPU share below one or a whole number of GPUs,
    nothing between, so that is checked here rather than when the task is already queued."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise AdpsError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise AdpsError(f"{name} must be finite, got {value!r}")
        if self.num_cpus <= 0:
            raise AdpsError(f"num_cpus must be above 0 (training needs a CPU), got {self.num_cpus}")
        if self.num_gpus < 0:
            raise AdpsError(f"num_gpus must be 0 or more, got {self.num_gpus}")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise AdpsError(
                f"num_gpus must be a share of one GPU (0 to 1) or a whole number of GPUs, "
                f"got {self.num_gpus}"
            )

    @property
    def threads(self) -> int:
        """Torch threads for a task with these CPUs: one at least."""
        return max(1, int(self.num_cpus))


@dataclass(frozen=True)
class BenchmarkEntry:
    """One row of a benchmark: trained into ``out/name/``. Plain, picklable data, so it can be
    sent to a Ray worker as it is."""

    name: str
    spec: DataSpec
    model_config: ModelConfig
    train_config: TrainConfig
    out: Path  # the benchmark's folder; the entry's own is out/name
    settings: EntrySettings = EntrySettings()
    resources: Resources = Resources()

    @property
    def folder(self) -> Path:
        return Path(self.out) / self.name

    def configs(self) -> dict[str, dict]:
        return config_dicts(self.model_config, self.train_config)

    def identity(self) -> dict:
        """Everything that changes the entry's numbers, as JSON data: the version, the configs,
        the data (path resolved, so the same relative path from another folder is not taken
        for the same data), the teacher's weights and the evaluation. Not the cache folder,
        device or progress bars, which change where and how fast it runs."""
        from adps import version

        spec = self.spec
        data = {
            f.name: getattr(spec, f.name)
            for f in dataclasses.fields(spec)
            if f.name not in _NOT_RESULT and f.name != "data"
        }
        data["path"] = str(Path(spec.data).resolve())
        weights = self.settings.teacher_weights
        identity = {
            "adps_version": version.__version__,
            **self.configs(),
            "data": data,
            "teacher_weights": str(Path(weights).resolve()) if weights else None,
            "evaluation": {"eval_resolution": self.settings.eval_resolution},
        }
        # through JSON once, so tuples become lists and the dict equals what a file gives back
        return json.loads(json.dumps(identity, default=str))

    def block(self) -> dict[str, Any]:
        """``{"hash", "identity"}``: what entry.json and metrics.json record."""
        identity = self.identity()
        return {"hash": identity_hash(identity), "identity": identity}


def config_dicts(model_config: ModelConfig, train_config: TrainConfig) -> dict[str, dict]:
    """The configs as plain data: the one place a benchmark reads the config types, so a
    change of their API is adapted here only."""
    return {"model": to_dict(model_config), "train": to_dict(train_config)}


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


@dataclass(frozen=True)
class Plan:
    """What to do with one entry: "reuse" its finished result, "train" it (resuming from its
    last.pt when ``old`` has the same hash), or "refuse" (``reuse_only`` and another setting).
    ``why`` says why a folder's files are not reusable ("" when they are, or there are none)."""

    entry: BenchmarkEntry
    block: dict[str, Any]
    action: str
    old: dict | None
    why: str


def plan(entry: BenchmarkEntry, reuse_only: bool = False) -> Plan:
    """Decided for every entry before any trains, so a refusal costs no training time."""
    from adps.engine.train import FINAL, LAST

    block = entry.block()
    folder = entry.folder
    old = recorded_entry(folder)
    finished = (folder / FINAL).is_file() and (folder / METRICS).is_file()
    if old is not None and old["hash"] == block["hash"]:
        return Plan(entry, block, "reuse" if finished else "train", old, "")  # train = resume
    if not any((folder / f).is_file() for f in (FINAL, LAST, METRICS, ENTRY)):
        return Plan(entry, block, "train", old, "")  # nothing there yet
    if old is None:
        why = (
            f"{folder} holds a result without a recorded configuration (written by an adps "
            f"older than this check)"
        )
    else:
        diff = identity_difference(old["identity"], block["identity"])
        why = f"{folder} was made with other settings: " + "; ".join(diff)
    has_result = (folder / FINAL).is_file() or (folder / METRICS).is_file()
    return Plan(entry, block, "refuse" if reuse_only and has_result else "train", old, why)


def check_overlap(entry: BenchmarkEntry) -> Overlap:
    """What the entry's test split shares with its training split, checked before it is
    trained: an :class:`AdpsError` unless ``allow_overlap``."""
    from adps.data.fingerprint import Fingerprint, file_digests
    from adps.data.fingerprint import check_overlap as check
    from adps.engine.tiling import open_split

    spec, model_config = entry.spec, entry.model_config
    trained = file_digests([r.image for r in open_split(spec, "train", model_config).records])
    test = [r.image for r in open_split(spec, "test", model_config).records]
    return check(
        Fingerprint(frozenset(trained), recorded=True),
        test,
        f"entry '{entry.name}': the test images",
        entry.settings.allow_overlap,
    )


@dataclass
class EntryRun:
    """A trained and tested entry: the evaluation and what metrics.json records beside it."""

    evaluation: EvalResult
    extra: dict[str, Any]


def train_and_test(entry: BenchmarkEntry, block: dict[str, Any], overlap: Overlap) -> EntryRun:
    """Train (resuming an interrupted run of the same settings) and test one entry. ``block``
    (hash and identity) is recorded in entry.json before training so an interruption keeps
    it; the caller writes the metrics."""
    from adps.engine.checkpoint import Checkpoint
    from adps.engine.evaluate import evaluate
    from adps.engine.tiling import open_split
    from adps.engine.train import LAST, train
    from adps.fileio import atomic_write_text

    out, s = entry.folder, entry.settings
    atomic_write_text(out / ENTRY, json.dumps(block, indent=2))
    t0 = time.perf_counter()
    result = train(
        entry.model_config,
        entry.train_config,
        open_split(entry.spec, "train", entry.model_config),
        out,
        resume=(out / LAST).is_file(),
        device=s.device,
        weights_file=s.teacher_weights,
        allow_download=s.allow_download,
        cache_dir=entry.spec.cache_dir,
        progress=s.progress,
    )
    train_wall = time.perf_counter() - t0
    model = Checkpoint.load(result.checkpoint).model()
    t1 = time.perf_counter()
    evaluation = evaluate(
        model,
        open_split(entry.spec, "test", entry.model_config),
        s.device,
        eval_resolution=s.eval_resolution,
        progress=s.progress,
        cache_dir=entry.spec.cache_dir,
    )
    extra = {
        "train_seconds": train_wall,
        "test_seconds": time.perf_counter() - t1,
        "train_images_per_second": result.images_per_second,
        "eval_resolution": s.eval_resolution,
        "entry": block,
        "overlap": {**overlap.to_dict(), "allowed": s.allow_overlap},
    }
    return EntryRun(evaluation, extra)


__all__ = [
    "ENTRY",
    "METRICS",
    "BenchmarkEntry",
    "EntryRun",
    "EntrySettings",
    "Plan",
    "Resources",
    "check_overlap",
    "config_dicts",
    "identity_difference",
    "identity_hash",
    "move_aside",
    "plan",
    "recorded_entry",
    "train_and_test",
]
