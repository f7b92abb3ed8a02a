"""The model artifact: one typed, frozen :class:`Checkpoint`, saved atomically.

A checkpoint alone rebuilds the predictor: the full model state (teacher included, so no
weights package is needed at deployment), both configs, the calibrated thresholds, the fitted
fusion, the training fingerprint (which images it learned from), what the training run did and
where the model came from (its lineage). Everything else is derived from those fields, never
stored twice: the pre-processing comes from the model config and its backbone, the export
metadata from :meth:`Checkpoint.describe`.

On disk it is a dict of tensors and plain containers, so loading uses
``torch.load(weights_only=True)`` and never unpickles arbitrary objects. Files of every earlier
format (:data:`READABLE`) keep loading.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from adps.config import ModelConfig, TrainConfig, from_dict, to_dict
from adps.data.fingerprint import Fingerprint, set_digest
from adps.engine.calibrate import Thresholds
from adps.engine.fusion import FusionFit
from adps.errors import AdpsError
from adps.fileio import atomic_save, file_sha256
from adps.models.adps import ADPS
from adps.models.backbones import get_backbone
from adps.version import __version__

FORMAT = "adps-checkpoint-v2"
READABLE = ("adps-checkpoint-v1", FORMAT)
_V1_TRAINING = ("epoch", "step", "elapsed", "history")  # v1 kept these at the top level
_RESUME = ("optimizer", "rng")


@dataclass(frozen=True)
class TrainingRecord:
    """What a training run did (not what it was asked to do: a time budget decides the
    length)."""

    epochs: int
    steps: int
    seconds: float  # training time over every session of the run
    history: tuple[float, ...] = ()  # mean loss per epoch

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "steps": self.steps,
            "seconds": self.seconds,
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingRecord:
        return cls(
            int(data["epochs"]),
            int(data["steps"]),
            float(data["seconds"]),
            tuple(float(v) for v in data.get("history", ())),
        )


@dataclass(frozen=True)
class Lineage:
    """One step from a parent model file to this one.

    A step that learned from new images (``adps update``) also records how many
    (``images_added``), which (``images_hash``: :func:`adps.data.fingerprint.set_digest` of
    their content hashes, so two models can be compared without the images) and what it changed
    (``updated``, e.g. ``("memory", "threshold")``). Steps of files written before these fields
    existed read with their defaults, and a step without them is written as before.
    """

    parent: str  # SHA-256 of the parent checkpoint's file
    change: str  # what was done, in words
    when: str  # ISO 8601, UTC
    images_added: int = 0
    images_hash: str | None = None
    updated: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"parent": self.parent, "change": self.change, "when": self.when}
        if self.images_added or self.images_hash is not None:
            data.update(images_added=self.images_added, images_hash=self.images_hash)
        if self.updated:
            data["updated"] = list(self.updated)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Lineage:
        """From a stored step; keys a later version may add are ignored."""
        images_hash = data.get("images_hash")
        return cls(
            str(data["parent"]),
            str(data["change"]),
            str(data["when"]),
            int(data.get("images_added", 0)),
            None if images_hash is None else str(images_hash),
            tuple(str(v) for v in data.get("updated", ())),
        )


@dataclass(frozen=True)
class Checkpoint:
    """Weights, configs, thresholds and provenance of one model; change one with
    :meth:`replace` or :meth:`derive`, build it from a model with :meth:`of`."""

    model_config: ModelConfig
    state: Mapping[str, torch.Tensor] = field(repr=False)
    train_config: TrainConfig | None = None
    thresholds: Thresholds = Thresholds()
    fusion_fit: FusionFit | None = None
    fingerprint: Fingerprint = Fingerprint()
    training: TrainingRecord | None = None
    lineage: tuple[Lineage, ...] = ()
    # per teacher BatchNorm layer, its normalised output's (mean, std) over the training images
    # (adps.engine.teacher_look.teacher_norm_targets): where an update moves a new look to
    teacher_norm_targets: Mapping[str, torch.Tensor] | None = field(default=None, repr=False)
    # the trainer's optimiser and RNG states: only in a resumable last.pt
    resume: Mapping[str, Any] | None = field(default=None, repr=False)
    adps_version: str = __version__

    @classmethod
    def of(cls, model: ADPS, **fields: Any) -> Checkpoint:
        """The checkpoint of ``model`` (its state copied to the CPU) with ``fields``."""
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return cls(model.config, state, **fields)

    def model(self, device: str | torch.device = "cpu") -> ADPS:
        """The eval-mode model; the teacher's weights come from here, not a package."""
        model = ADPS(self.model_config, pretrained=False)
        model.load_state_dict(self.state, strict=True)
        return model.to(device).eval()

    def replace(self, **changes: Any) -> Checkpoint:
        return dataclasses.replace(self, **changes)

    def derive(
        self,
        parent: str | Path,
        change: str,
        *,
        images: Collection[str] = (),
        updated: Sequence[str] = (),
        **changes: Any,
    ) -> Checkpoint:
        """This checkpoint, read from the file ``parent``, changed by ``change`` (words) and
        ``changes`` (fields), with the step recorded in its lineage; with ``images`` (the
        content hashes of the images this step learned from) their count and
        :func:`set_digest`, with ``updated`` what the step changed."""
        step = Lineage(
            file_sha256(parent),
            change,
            datetime.now(UTC).isoformat(timespec="seconds"),
            len(set(images)),
            set_digest(images) if images else None,
            tuple(updated),
        )
        return self.replace(lineage=(*self.lineage, step), resume=None, **changes)

    @property
    def standardized_decision(self) -> bool:
        """Whether the image score is the standardized decision whose statistics recalibration
        refits: configured so, in a model from after that decision existed (a checkpoint
        without ``memory.score_stats`` keeps deciding on the fused map)."""
        return self.model_config.standardized_decision and "memory.score_stats" in self.state

    @property
    def preprocess(self) -> dict[str, Any]:
        """How images reach the network, derived from the config and its backbone: RGB in
        [0, 1] at ``image_size``, normalised inside the model with ``mean`` and ``std``."""
        spec = get_backbone(self.model_config.backbone)
        return {
            "backbone": spec.name,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "image_size": self.model_config.image_size,
            "input_range": [0.0, 1.0],
        }

    def describe(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-able data: what exports carry as metadata and
        the service reports."""
        return {
            "adps_version": self.adps_version,
            "preprocess": self.preprocess,
            "model_config": to_dict(self.model_config),
            "train_config": None if self.train_config is None else to_dict(self.train_config),
            "thresholds": self.thresholds.to_dict(),
            "fusion_fit": None if self.fusion_fit is None else self.fusion_fit.to_dict(),
            "training": None if self.training is None else self.training.to_dict(),
            "lineage": [step.to_dict() for step in self.lineage],
            "fingerprint": {
                "trained": len(self.fingerprint.trained),
                "calibrated": len(self.fingerprint.calibrated),
                "recorded": self.fingerprint.recorded,
            },
        }

    # --- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = self.describe()
        del data["preprocess"], data["fingerprint"]  # derived / summarised: stored in full below
        return {
            "format": FORMAT,
            **data,
            "model": dict(self.state),
            "fingerprint": self.fingerprint.to_dict() if self.fingerprint.recorded else None,
            "teacher_norm_targets": (
                None if self.teacher_norm_targets is None else dict(self.teacher_norm_targets)
            ),
            "resume": None if self.resume is None else dict(self.resume),
        }

    def save(self, path: str | Path) -> Path:
        """Writes the file atomically: a crash leaves the previous file whole."""
        return atomic_save(self.to_dict(), path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | Path | None = None) -> Checkpoint:
        """From the dict of a file of any :data:`READABLE` format."""
        if data.get("format") == "adps-checkpoint-v1":
            data = _upgrade_v1(data)
        try:
            train = data.get("train_config")
            fusion = data.get("fusion_fit")
            training = data.get("training")
            return cls(
                model_config=from_dict(ModelConfig, data["model_config"]),
                state=data["model"],
                train_config=None if train is None else from_dict(TrainConfig, train),
                thresholds=Thresholds.from_dict(data.get("thresholds")),
                fusion_fit=None if fusion is None else FusionFit.from_dict(fusion),
                fingerprint=Fingerprint.from_dict(data.get("fingerprint")),
                training=None if training is None else TrainingRecord.from_dict(training),
                lineage=tuple(Lineage.from_dict(step) for step in data.get("lineage", ())),
                teacher_norm_targets=data.get("teacher_norm_targets"),
                resume=data.get("resume"),
                adps_version=str(data.get("adps_version", "?")),
            )
        except AdpsError as exc:
            raise AdpsError(f"holds an invalid setting: {exc}", path) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise AdpsError(f"is an incomplete adps checkpoint ({exc!r})", path) from exc

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        path = Path(path)
        if not path.is_file():
            raise AdpsError("checkpoint not found", path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise AdpsError(f"cannot be read as an adps checkpoint ({exc})", path) from exc
        if not isinstance(data, dict) or data.get("format") not in READABLE:
            raise AdpsError(
                f"is not an adps checkpoint (expected one of the formats {', '.join(READABLE)})",
                path,
            )
        return cls.from_dict(data, path)


def _upgrade_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A v1 dict in v2's shape: its training counters gathered into ``training``, optimiser
    and RNG states into ``resume``; ``preprocess`` (derived now) and the fingerprint (v1 had
    none) dropped."""
    new = {k: v for k, v in data.items() if k not in (*_V1_TRAINING, *_RESUME, "preprocess")}
    if "step" in data:
        new["training"] = {
            "epochs": data.get("epoch", 0),
            "steps": data["step"],
            "seconds": data.get("elapsed", 0.0),
            "history": data.get("history", ()),
        }
    if "optimizer" in data:
        new["resume"] = {k: data[k] for k in _RESUME if k in data}
    return new


__all__ = ["FORMAT", "READABLE", "Checkpoint", "Lineage", "TrainingRecord"]
