"""One served model's lane: what the routes of one model need, wherever the model runs.

The service hosts one or several models (``adps serve --model a=a.pt --model b=b.pt``). Each
model is a *lane* with its own batcher, drift watch, swap and feedback folder, so a busy model
never queues another's requests and a reload swaps only its own. The routes in
:mod:`adps.serve.app` talk to a lane through a few awaitables (answer images, describe the
model, report drift, reload), which lets the same FastAPI app run the model in this process
(:class:`LocalLane`: a :class:`~adps.serve.batching.MicroBatcher` and a
:class:`~adps.serve.models.ModelHolder`) or in Ray Serve replicas (the lane of
:mod:`adps.ray.serving`, which sends images to the model's own deployment).

Model names are short words (letters, digits, ``_ . -``) because they are URL path segments,
folder names of the kept images and Ray deployment names.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from adps.engine.calibrate import Thresholds
from adps.engine.predict import Prediction, Predictor
from adps.errors import AdpsError
from adps.report.plots import overlay
from adps.serve.batching import MicroBatcher
from adps.serve.drift import DriftMonitor, DriftSettings
from adps.serve.models import ModelHolder, ReloadResult, ServedModel, watch_file

log = logging.getLogger("adps.serve")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Lane(Protocol):
    """What the routes need of one model."""

    name: str
    ready: bool

    async def start(self, spawn: Callable[[Any], None]) -> None: ...
    async def stop(self) -> None: ...
    def ident(self) -> str: ...
    async def answer(
        self, images: list[np.ndarray], wanted: set[str], names: list[str | None]
    ) -> list[dict[str, Any]]: ...
    async def facts(self) -> dict[str, Any]: ...
    async def drift_report(self) -> dict[str, Any]: ...
    async def reload(self, reason: str) -> tuple[dict[str, Any], int]: ...


def _png_base64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def answer_json(
    pred: Prediction,
    image: np.ndarray,
    thresholds: Thresholds,
    ident: str,
    outputs: set[str],
    name: str | None,
) -> dict[str, Any]:
    """One image's answer: `adps predict`'s row (:meth:`Prediction.summary`) and more; the
    route adds the milliseconds and the id."""
    t = thresholds
    answer = {
        "filename": name,
        **pred.summary(),
        "is_anomalous": bool(pred.is_anomalous),
        "threshold": {
            "image": t.decision,
            "pixel": t.pixel,
            "rule": t.rule(),
            "source": "calibrated"
            if t.image is not None
            else "uncalibrated: the pixel threshold decides",
        },
        "image_size": [int(image.shape[0]), int(image.shape[1])],
        "model_id": ident,
    }
    if "mask" in outputs:
        answer["mask_png"] = _png_base64((pred.mask * 255).astype(np.uint8))
    if "overlay" in outputs:
        answer["overlay_png"] = _png_base64(overlay(image, pred.anomaly_map, pred.mask))
    return answer


def model_facts(predictor: Predictor) -> dict[str, Any]:
    """What ``GET /v1/model`` and ``GET /v1/models`` say of a loaded model (no file facts)."""
    meta = predictor.metadata
    return {
        "runtime": predictor.runtime,
        "input_size": list(predictor.config.size),
        "model_config": meta.get("model_config"),
        "preprocess": meta.get("preprocess")
        or {
            k: meta[k]
            for k in ("image_size", "mean", "std", "input_dtype", "channel_order")
            if k in meta
        },
        "thresholds": predictor.thresholds.summary(),
        "threshold": predictor.thresholds.decision,
        "decision_rule": predictor.thresholds.rule(),
    }


def warm(model: Predictor, max_batch: int) -> None:
    """Batch 1 (a quiet line) and a full batch (a busy one): the first call of a batch size
    is slow (an OpenVINO graph is compiled per size), so neither waits on a real part."""
    height, width = model.config.size
    for size in sorted({1} if model.tiling else {1, max_batch}):
        frames = [torch.zeros((3, height, width), dtype=torch.uint8)] * size
        model.predict_tensors(frames)


def run_grouped(items: Sequence[tuple[Any, np.ndarray]]) -> list[Prediction]:
    """One model batch of (model, HWC uint8 image) pairs; around a swap it holds images of
    both models, each group run on its own model. ``model`` has a ``predictor``."""
    results: list[Prediction | None] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for i, (served, _) in enumerate(items):
        groups.setdefault(id(served), []).append(i)
    for indices in groups.values():
        served = items[indices[0]][0]
        tensors = [torch.from_numpy(items[i][1]).permute(2, 0, 1) for i in indices]
        for i, p in zip(indices, served.predictor.predict_tensors(tensors), strict=True):
            results[i] = p
    return [p for p in results if p is not None]


@dataclass(frozen=True)
class LaneSettings:
    """The part of :class:`~adps.serve.app.ServeSettings` a local lane uses."""

    max_batch: int
    max_wait_ms: float
    queue_size: int
    drift: DriftSettings
    watch_interval_s: float


class LocalLane:
    """A model in this process: its own batcher (one model thread), holder and drift watch."""

    def __init__(
        self,
        name: str,
        predictor: Predictor,
        path: Path,
        settings: LaneSettings,
        loader: Callable[[Path], Predictor],
    ):
        self.name, self.settings = name, settings
        warm_up = functools.partial(warm, max_batch=settings.max_batch)
        self.holder = ModelHolder(
            ServedModel.of(predictor, path, settings.drift), loader, warm_up, settings.drift
        )
        self.batcher: MicroBatcher | None = None
        self.ready = False

    async def start(self, spawn: Callable[[Any], None]) -> None:
        s = self.settings
        self.batcher = MicroBatcher(run_grouped, s.max_batch, s.max_wait_ms, s.queue_size)
        self.batcher.start()
        batcher = self.batcher

        async def warm_up() -> None:
            await batcher.call(functools.partial(self.holder.warm, self.holder.current.predictor))
            self.ready = True

        spawn(warm_up())
        if s.watch_interval_s > 0:
            spawn(
                watch_file(
                    self.holder,
                    s.watch_interval_s,
                    lambda: self.holder.reload("the model file changed", only_if_changed=True),
                )
            )

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    def ident(self) -> str:
        return self.holder.current.ident

    async def answer(
        self, images: list[np.ndarray], wanted: set[str], names: list[str | None]
    ) -> list[dict[str, Any]]:
        assert self.batcher is not None, "the lane has not started"
        served = self.holder.acquire()  # the request runs on the model current now, to its end
        try:
            predictions = await self.batcher.submit([(served, image) for image in images])
            if served.drift.add(p.score for p in predictions):
                log_flip(served.ident, served.drift)
            return [
                answer_json(p, image, served.predictor.thresholds, served.ident, wanted, n)
                for p, image, n in zip(predictions, images, names, strict=True)
            ]
        finally:
            self.holder.release(served)

    async def facts(self) -> dict[str, Any]:
        served = self.holder.current
        return {
            "model_id": served.ident,
            "model": self.holder.describe(),
            **model_facts(served.predictor),
            "batches_run": 0 if self.batcher is None else self.batcher.batches,
        }

    async def drift_report(self) -> dict[str, Any]:
        served = self.holder.current
        return {"model_id": served.ident, **served.drift.report()}

    async def reload(self, reason: str) -> tuple[dict[str, Any], int]:
        result: ReloadResult = await self.holder.reload(reason)
        return result.to_dict(), 422 if result.error else 200


def log_flip(ident: str, drift: DriftMonitor) -> None:
    r = drift.report()
    ks, share, base = r["scores_under_threshold"], r["share_over_threshold"], r["since_baseline"]
    facts = (
        f"window {r['window']['images']} images: scores under the threshold vs calibration "
        f"KS D {_fmt(ks['statistic'])} p {_fmt(ks['p_value'])}; over the threshold "
        f"{share['over']} (expected rate {_fmt(share['expected_false_alarm_rate'])}) p "
        f"{_fmt(share['p_value'])}; {base['window_images']} images since the baseline of "
        f"{base['images']} KS D {_fmt(base['statistic'])} p {_fmt(base['p_value'])}; "
        f"alarm {r['alarm']:g}"
    )
    if r["drifting"]:
        log.warning("drift: %s is drifting (%s)", ident, facts)
    else:
        log.warning("drift: %s is no longer drifting (%s)", ident, facts)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def name_of(path: Path) -> str:
    """A model's name when none is given: its file's stem, made a URL-safe word (``model
    v2.pt`` is ``model-v2``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-._")[:64]
    return name if NAME.fullmatch(name) else "model"


def parse_model_specs(specs: Iterable[str]) -> dict[str, Path]:
    """``NAME=PATH`` or a plain ``PATH`` (named after the file's stem) per model, in order.

    Text before the first ``=`` that holds no path separator is a name; so ``a=m.pt`` names
    ``m.pt`` ``a`` and ``runs/x=1/m.pt`` is a path. Refused (:class:`AdpsError`, naming the
    spec): an empty name or path, a name that is not a short word, two models of one name, a
    file that does not exist.
    """
    models: dict[str, Path] = {}
    for spec in specs:
        head, sep, tail = spec.partition("=")
        if sep and "/" not in head and "\\" not in head:
            name, text = head.strip(), tail.strip()
            if not name or not text:
                raise AdpsError(f"--model {spec!r}: give NAME=PATH (both non-empty) or a PATH")
        else:
            text = spec.strip()
            name = name_of(Path(text))
        if not NAME.fullmatch(name):
            raise AdpsError(
                f"--model {spec!r}: the model name {name!r} must be letters, digits, '_', '.' "
                "or '-' (up to 64, starting with a letter or digit): it is a URL path segment"
            )
        path = Path(text)
        if name in models:
            raise AdpsError(
                f"--model {spec!r}: the name {name!r} is taken by {models[name]}; name each "
                "model (--model NAME=PATH)"
            )
        if not path.is_file():
            raise AdpsError(f"--model {spec!r}: no model file at {path}")
        models[name] = path
    if not models:
        raise AdpsError("give at least one --model")
    return models


def parse_counts(specs: Iterable[str], models: Iterable[str], option: str) -> dict[str, int]:
    """``NAME=N`` per model (``--replicas``): a positive count for a served model's name."""
    known = list(models)
    counts: dict[str, int] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise AdpsError(f"{option} {spec!r}: give NAME=N with N a positive whole number")
        name = name.strip()
        if name not in known:
            raise AdpsError(f"{option} {spec!r}: no model named {name!r} (served: {known})")
        counts[name] = int(value)
    return counts


__all__ = [
    "NAME",
    "Lane",
    "LaneSettings",
    "LocalLane",
    "answer_json",
    "log_flip",
    "model_facts",
    "name_of",
    "parse_counts",
    "parse_model_specs",
    "run_grouped",
    "warm",
]
