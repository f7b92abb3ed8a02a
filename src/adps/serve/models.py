"""The model a service answers with, and its swap without dropping a request.

A :class:`ServedModel` is one loaded model file: its predictor, its file's SHA-256 (the
``model_id`` every answer names: ``name@sha256-prefix``) and its drift watch. The
:class:`ModelHolder` hands each request the current one when the request arrives
(:meth:`ModelHolder.acquire`); the request runs on it to the end, whatever happens meanwhile.

:meth:`ModelHolder.reload` (``POST /v1/model/reload``, SIGHUP or a changed file) loads the file
again and warms the new model up beside the old one, in threads of its own, while the old one
keeps serving; then it switches in one assignment on the event loop, so every request that
arrives after the switch gets the new model and every one before it the old. The old model is
released once its last request is done. A file that fails to load or to warm up leaves the old
model serving; the failure says why (in the answer to the reload and in the log).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adps.engine.predict import Predictor
from adps.fileio import file_sha256
from adps.serve.drift import DriftMonitor, DriftSettings, Reference

log = logging.getLogger("adps.serve")

Signature = tuple[int, int, int]  # (inode, size, mtime_ns): has the file changed?


def file_signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(eq=False)
class ServedModel:
    predictor: Predictor
    path: Path
    sha256: str
    signature: Signature | None
    drift: DriftMonitor
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    in_flight: int = 0  # requests running on it now

    @property
    def ident(self) -> str:
        """``name@sha256-prefix``: which file answered, stable across restarts."""
        return f"{self.path.name}@{self.sha256[:12]}"

    def describe(self) -> dict[str, Any]:
        return {
            "model_id": self.ident,
            "file": self.path.name,
            "sha256": self.sha256,
            "loaded_at": self.loaded_at,
            "runtime": self.predictor.runtime,
        }

    @classmethod
    def of(
        cls, predictor: Predictor, path: Path, drift: DriftSettings, sha256: str | None = None
    ) -> ServedModel:
        signature = file_signature(path)
        return cls(
            predictor,
            path,
            sha256 or file_sha256(path),
            signature,
            DriftMonitor(Reference.of(predictor.thresholds), drift),
        )


@dataclass
class ReloadResult:
    reloaded: bool
    model_id: str  # the model serving after the attempt
    reason: str  # what asked for it
    message: str
    previous_model_id: str | None = None
    error: str | None = None
    load_s: float | None = None
    warm_s: float | None = None
    when: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class ModelHolder:
    """The current model, the ones retired but still finishing requests, and reloads."""

    def __init__(
        self,
        first: ServedModel,
        load: Callable[[Path], Predictor],
        warm: Callable[[Predictor], None],
        drift: DriftSettings,
    ):
        self.current = first
        self.load, self.warm, self.drift = load, warm, drift
        self.retired: list[ServedModel] = []
        self.last_reload: ReloadResult | None = None
        self.failed_signature: Signature | None = None  # the watcher does not retry it
        self.lock = asyncio.Lock()
        self.swaps = 0

    def acquire(self) -> ServedModel:
        """The model a request arriving now runs on; :meth:`release` it when done."""
        model = self.current
        model.in_flight += 1
        return model

    def release(self, model: ServedModel) -> None:
        model.in_flight -= 1
        if model.in_flight == 0 and model in self.retired:
            self.retired.remove(model)
            log.info("released %s after its last request", model.ident)

    def swap(self, new: ServedModel) -> ServedModel:
        """Makes ``new`` current (one assignment, on the event loop) and retires the old."""
        old, self.current = self.current, new
        self.swaps += 1
        if old.in_flight:
            self.retired.append(old)
        else:
            log.info("released %s", old.ident)
        return old

    async def reload(self, reason: str, only_if_changed: bool = False) -> ReloadResult:
        """Loads the model file again and swaps it in once warm; one reload at a time.

        An unchanged file (the same SHA-256) is not reloaded. ``only_if_changed`` (the file
        watcher): nor is a file whose last load failed, until it changes again.
        """
        async with self.lock:
            old = self.current
            path = old.path
            signature = file_signature(path)
            if only_if_changed and signature in (old.signature, self.failed_signature):
                return ReloadResult(False, old.ident, reason, "the model file is unchanged")
            start = time.perf_counter()
            try:
                sha = await asyncio.to_thread(file_sha256, path)
            except OSError as exc:
                return self._failed(old, reason, signature, f"cannot read {path}: {exc}")
            if sha == old.sha256:
                old.signature = signature
                message = f"the model file is unchanged (sha256 {sha[:12]}); still serving it"
                return ReloadResult(False, old.ident, reason, message)
            try:
                predictor = await asyncio.to_thread(self.load, path)
            except Exception as exc:
                return self._failed(old, reason, signature, f"{path.name} failed to load: {exc}")
            loaded = time.perf_counter()
            try:
                await asyncio.to_thread(self.warm, predictor)
            except Exception as exc:
                return self._failed(old, reason, signature, f"{path.name} failed to warm up: {exc}")
            warmed = time.perf_counter()
            new = ServedModel(
                predictor,
                path,
                sha,
                signature,
                DriftMonitor(Reference.of(predictor.thresholds), self.drift),
            )
            self.swap(new)
            self.failed_signature = None
            result = ReloadResult(
                True,
                new.ident,
                reason,
                f"now serving {new.ident} (was {old.ident})",
                previous_model_id=old.ident,
                load_s=round(loaded - start, 3),
                warm_s=round(warmed - loaded, 3),
            )
            log.warning(
                "model swapped (%s): %s -> %s; loaded in %.2f s, warmed up in %.2f s",
                reason,
                old.ident,
                new.ident,
                result.load_s,
                result.warm_s,
            )
            self.last_reload = result
            return result

    def _failed(
        self, old: ServedModel, reason: str, signature: Signature | None, error: str
    ) -> ReloadResult:
        self.failed_signature = signature
        log.error("model reload (%s) failed, still serving %s: %s", reason, old.ident, error)
        # the answer: the first line, the file by its name (the log has it all)
        short = error.splitlines()[0].replace(f"{old.path}: ", "")
        if len(short) > 300:
            short = short[:299] + "…"
        result = ReloadResult(False, old.ident, reason, f"still serving {old.ident}", error=short)
        self.last_reload = result
        return result

    def describe(self) -> dict[str, Any]:
        return {
            **self.current.describe(),
            "swaps": self.swaps,
            "retired_in_flight": [m.ident for m in self.retired],
            "last_reload": None if self.last_reload is None else self.last_reload.to_dict(),
        }


async def watch_file(holder: ModelHolder, interval: float, reload: Callable[[], Awaitable]):
    """Calls ``reload`` once the model file has changed and then stayed the same for one
    ``interval`` (a copy still being written is not read half-way)."""
    seen: Signature | None = None
    while True:
        await asyncio.sleep(interval)
        signature = file_signature(holder.current.path)
        if (
            signature is not None
            and signature == seen
            and signature not in (holder.current.signature, holder.failed_signature)
        ):
            await reload()
        seen = signature


__all__ = ["ModelHolder", "ReloadResult", "ServedModel", "file_signature", "watch_file"]
