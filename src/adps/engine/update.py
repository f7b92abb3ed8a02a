"""Updating a trained model on the line with new normal images (``adps update``, ``adps.update``).

A line changes (a new supplier's material, a re-aimed lamp, a swapped camera) and good parts
start to look different. The memory prior learns without training: the new images' teacher
features join the memory, and the prior's statistics are re-estimated, in about a minute on a
CPU. Optionally the student and the PSM are fine-tuned from the checkpoint for a time budget.
Either way the image threshold is set again, on new normal images the model did not learn from.

What an update does, in order:

1. The new normal images are split into those the model learns from and those that calibrate
   it: a seeded held-out share of them (``holdout``), or all of them with a separate folder of
   calibration images (``calibrate_dir``). The calibration images must be able to measure the
   target false-alarm rate, and must not be images the model trained on, as with
   ``adps calibrate``; both are checked before anything is computed.
2. Teacher: its BatchNorm statistics are moved so that the new images leave each layer with
   the mean and spread the training images left it with (:mod:`adps.engine.teacher_look`;
   with ``refresh_norms``): the new look then reaches the memory and the PSM in the form they
   learned. A parent that does not record that look (trained before it was recorded) is
   measured on ``train_dir`` where given, else its teacher is kept (the summary says so).
3. Memory (:func:`adps.engine.prior.extend_prior`): the greedy coreset of the old bank and the
   new images' features together, with the same size bound; the new images are numbered after
   the old ones in ``memory.sources``. The prior's statistics (``memory.stats``) are
   re-estimated on the calibration images, which the bank does not hold. A tiling model's
   memory holds tiles: the new frames' grid tiles join it (at most as many as training takes),
   numbered as tiles.
4. With a time budget, the student and the PSM are fine-tuned from the checkpoint's weights
   with the usual synthetic defects, on the new images and, if given, the old training images
   (``train_dir``; the checkpoint does not hold its images, so without it the fine-tune sees
   the new images only). The teacher and the memory do not change.
5. The student's and the PSM's BatchNorm statistics are re-estimated on the new images with
   synthetic defects, without a gradient step (:mod:`adps.engine.norms`; ``refresh_norms``):
   a lamp or a camera's gain moves their activations, and the old statistics then normalise
   them wrongly. This comes after a fine-tune: training leaves running averages over its
   batches, which hold the old training images as well as the new ones, averages of two lamps
   that fit neither.
6. The standardized decision's statistics (``memory.score_stats``), where the model decides
   that way (refitted where ``adps calibrate`` refits them), and the image threshold are
   fitted on the calibration images, scored by torch as at the end of training (the
   standardized decision's score from the same pass that gives its statistics).
7. The result is written as a new checkpoint, atomically (a crash or a kill leaves no half
   file, and the input is only replaced when asked): its lineage records the parent's hash,
   when, how many images were added with a hash of their set, and what changed; its
   fingerprint gains the new images (trained) and the calibration images (calibrated), so
   ``adps test`` and ``adps calibrate`` refuse them later.

Without a time budget no trained weight changes: only the ``memory.*`` buffers, the BatchNorm
statistics (the teacher's, the student's and the PSM's) and the thresholds differ from the
parent.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from adps.config import DEFAULT_RECIPE, TrainConfig
from adps.data.cache import load_tensor_stack
from adps.data.datasets import AnomalyDataset, Record, find_images, name_some
from adps.data.fingerprint import Fingerprint, check_overlap, file_digests
from adps.data.synthesis import TextureBank
from adps.engine.calibrate import (
    Calibration,
    check_calibration_size,
    threshold_for_false_alarm_rate,
)
from adps.engine.checkpoint import Checkpoint, TrainingRecord
from adps.engine.device import resolve_device
from adps.engine.distributed import shutdown_distributed
from adps.engine.inference import TorchForward, infer
from adps.engine.norms import refresh_norm_statistics
from adps.engine.prior import PriorFit, decision_scores, decision_statistics, extend_prior
from adps.engine.schedule import format_duration, parse_duration
from adps.engine.teacher_look import align_teacher_norms, teacher_norm_targets
from adps.engine.tiling import Tiling, at_working_size, grid_tiles, tiled
from adps.engine.train import Trainer, some_tiles
from adps.errors import AdpsError
from adps.models.adps import ADPS

DEFAULT_HOLDOUT = 0.3  # share of the new images kept out to calibrate on, without calibrate_dir
# the fine-tune's peak learning rate, as a share of the one the model was trained with: it
# starts from trained weights with a fresh optimiser, where the full rate would undo training
FINE_TUNE_LR_SHARE = 0.25
_DEFAULT_TARGET = 0.01  # the false-alarm rate when the model records none


@dataclass(frozen=True)
class UpdateResult:
    """What :func:`update` did and wrote."""

    checkpoint: Path  # the new model file
    parent: Path
    images_added: int  # new images the memory (and a fine-tune) learned from
    calibration_images: int  # normal images that set the statistics and the threshold
    calibration: Calibration
    memory: PriorFit  # bank_size after the update, features = old bank rows + new features
    bank_before: int
    updated: tuple[str, ...]  # what changed: memory, memory statistics, student, psm, ...
    seconds: float  # wall time of the whole update, writing included
    fine_tune: TrainingRecord | None = None  # what the fine-tune did, if it ran
    fine_tune_images: int = 0
    norms_seconds: float | None = None  # the BatchNorm statistics' re-estimate (None: kept)

    def summary(self) -> list[str]:
        """Lines for a person: what was learned, the new threshold, where it was written."""
        m, c = self.memory, self.calibration
        lines = [
            f"memory: {m.bank_size} rows chosen from the old bank's {self.bank_before} and "
            f"{m.features - self.bank_before} features of {self.images_added} new images "
            f"({m.seconds:.1f} s)",
        ]
        if self.norms_seconds is not None:
            lines.append(
                "BatchNorm statistics of the student and the PSM re-estimated on the "
                f"{self.images_added} new images ({self.norms_seconds:.1f} s)"
            )
            if "teacher normalization" in self.updated:
                lines.append("the teacher's normalization moved to the training images' look")
            else:
                lines.append(
                    "the teacher's normalization kept: the model does not record its training "
                    "images' look (trained before adps recorded it); give its training images "
                    "(--train-dir) to align it to the new images"
                )
        if self.fine_tune is not None:
            lines.append(
                f"fine-tune: {self.fine_tune.steps} steps on {self.fine_tune_images} images in "
                f"{format_duration(self.fine_tune.seconds)}"
            )
        lines += [
            f"threshold: {c.threshold:.6g}, flags {c.normal_flagged} of {c.n_normal} "
            f"calibration images; expected on new normal images: at most "
            f"{100 * c.expected_false_alarm_rate:.2f}% (target {c.target_false_alarm_rate:g})",
            f"updated {', '.join(self.updated)} in {self.seconds:.1f} s; model: {self.checkpoint}",
        ]
        return lines


def default_out(model: str | Path) -> Path:
    """Where an update writes when not told: ``NAME-updated.pt`` beside the model."""
    model = Path(model)
    return model.with_name(f"{model.stem}-updated{model.suffix or '.pt'}")


def update(
    model: str | Path,
    normal_dir: str | Path,
    out: str | Path | None = None,
    *,
    calibrate_dir: str | Path | None = None,
    holdout: float | None = None,
    target_far: float | None = None,
    time_budget: float | str | None = None,
    train_dir: str | Path | None = None,
    lr: float | None = None,
    refresh_norms: bool = True,
    overwrite: bool = False,
    allow_overlap: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> UpdateResult:
    """Updates the model file ``model`` with the normal images of ``normal_dir`` (searched
    recursively) and writes the result to ``out`` (default :func:`default_out`); this is
    ``adps.update``. The module's docstring says what it does, in order.

    Args:
        calibrate_dir: normal images the model has not seen that calibrate the update; then
            every image of ``normal_dir`` is learned from. Without it, a held-out share of
            ``normal_dir`` calibrates.
        holdout: that share (default :data:`DEFAULT_HOLDOUT`); not with ``calibrate_dir``.
        target_far: the false-alarm rate the threshold is set for (default: the one the
            model's threshold was set for, else its training config's, else 0.01).
        time_budget: also fine-tune the student and the PSM for this long (seconds, or a
            duration such as "2m"); None: memory only, no trained weight changes.
        train_dir: the model's old training images, for the fine-tune to learn from beside the
            new ones (they do not join the memory), and to measure the training images' look
            at the teacher where the model does not record it.
        lr: the fine-tune's peak learning rate (default: :data:`FINE_TUNE_LR_SHARE` of the
            model's).
        refresh_norms: align the teacher's BatchNorm statistics to the new images, and
            re-estimate the student's and the PSM's on them, after the fine-tune if there is
            one (:mod:`adps.engine.norms`); False keeps the parent's (with a fine-tune: those
            its training left).
        overwrite: replace ``out`` if it exists (``out=model`` updates the model in place).
        allow_overlap: go on when calibration images are images the model trained on.

    Raises:
        AdpsError: for anything the caller can fix, naming the file or setting: no readable
            image, a model without a memory prior, too few calibration images for the target
            rate, calibration images the model learned from, an existing ``out``.
    """
    start = time.perf_counter()
    model_path = Path(model)
    ckpt = Checkpoint.load(model_path)
    config = ckpt.model_config
    bank = ckpt.state.get("memory.bank")
    if config.prior != "memory" or bank is None:
        raise AdpsError(
            f"has no memory prior (model.prior is {config.prior!r}), and adding new normal "
            "images to the memory is what an update does; train the model with --prior memory "
            "(the fast recipe's default)",
            model_path,
        )
    if bank.shape[0] == 0:
        raise AdpsError(
            "its memory prior was never fitted (an empty memory.bank): train it to the end, "
            "or resume it with adps train --resume",
            model_path,
        )
    out_path = _out_path(model_path, out, overwrite)
    budget = _budget(time_budget)
    target = _default_target(ckpt) if target_far is None else target_far
    learn, calibrate = _split(Path(normal_dir), calibrate_dir, holdout, target, seed)
    learn_digests, calibrate_digests = file_digests(learn), file_digests(calibrate)
    _check_calibration_images(ckpt, learn_digests, calibrate, calibrate_digests, allow_overlap)
    old_images = [] if train_dir is None else find_images(train_dir, recursive=True)
    early = config.prior_fusion == "early"
    if budget is not None and early and old_images:
        raise AdpsError(
            "a fine-tune of an early-fusion model learns from the new images only (its PSM "
            "leaves each image's own memory rows out, and the memory does not record which "
            "old file a row came from): leave out --train-dir"
        )

    dev = resolve_device(device)
    net = ckpt.model(dev)
    learn_images = _decode(learn, net, progress)
    calibrate_images = _decode(calibrate, net, progress)
    tiling = Tiling.of(config)
    memory_learn, memory_calibrate = learn_images, calibrate_images
    if tiling is not None:  # the memory holds tile features, at most as many as training's
        memory_learn = some_tiles(grid_tiles(learn_images, tiling), seed)
        memory_calibrate = some_tiles(grid_tiles(calibrate_images, tiling), seed)
    updated, targets = [], ckpt.teacher_norm_targets
    if refresh_norms and targets is None and old_images:  # a parent from before they existed
        old_look = _decode(old_images, net, progress)
        if tiling is not None:
            old_look = some_tiles(grid_tiles(old_look, tiling), seed)
        targets = teacher_norm_targets(net, old_look)
    if refresh_norms and targets is not None:  # first: the memory takes the aligned features
        align_teacher_norms(net, memory_learn, targets, seed)
        updated.append("teacher normalization")
    memory_fit = extend_prior(net, memory_learn, memory_calibrate, batch_size, progress, seed)
    updated = ["memory", "memory statistics", *updated]
    first = int(ckpt.state["memory.sources"].max()) + 1  # the new images' first number
    # the training settings give the refresh's and the fine-tune's synthetic defects
    settings = _training_settings(ckpt) if refresh_norms or budget is not None else None
    textures = None  # decoded once for both
    if settings is not None and settings.texture_dir is not None:
        textures = TextureBank.from_folder(settings.texture_dir, config.image_size, dev)
    training, fine_tune = ckpt.training, None
    trained = set(learn_digests)
    if budget is not None:
        assert settings is not None
        renumber = first if early else None
        net, fine_tune = _fine_tune(
            ckpt,
            settings,
            net,
            [*old_images, *learn],
            budget,
            lr,
            seed,
            dev,
            progress,
            renumber,
            textures,
        )
        updated += ["student", "psm"]
        trained |= set(file_digests(old_images))
        training = fine_tune if training is None else _after(training, fine_tune)
    norms_seconds = None
    if refresh_norms:  # after the fine-tune: its running averages hold the old lamp too
        assert settings is not None
        norms_start = time.perf_counter()
        groups = first + torch.arange(len(learn_images)) if early else None
        if refresh_norm_statistics(net, learn_images, settings, textures, seed, groups):
            updated.append("normalization statistics")
            norms_seconds = time.perf_counter() - norms_start
    if ckpt.standardized_decision:  # as adps calibrate: refitted where the model has them
        # one pass gives both: the image score is the standardized sum of these two scores
        memory_scores, psm_scores = decision_scores(
            net, calibrate_images, False, batch_size, progress
        )
        assert net.memory is not None  # checked above
        net.memory.set_score_stats(decision_statistics(memory_scores, psm_scores))
        scores = net.memory.decide(memory_scores, psm_scores, config.decision_psm_weight)
        updated.append("decision statistics")
    else:
        forward = tiled(TorchForward(net, dev), config, batch_size or 8)
        _, scores, _ = infer(forward, calibrate_images, dev, 1 if tiling else batch_size, progress)
    calibration = threshold_for_false_alarm_rate(scores.cpu().numpy(), target)
    updated.append("threshold")

    recorded = ckpt.fingerprint.recorded  # a parent that recorded nothing cannot say it all
    fingerprint = ckpt.fingerprint | Fingerprint(
        frozenset(trained), frozenset(calibrate_digests), recorded
    )
    change = (
        f"updated with {len(learn)} new normal images: memory {memory_fit.bank_size} rows from "
        f"{memory_fit.features} (old bank and new features)"
        + ("" if fine_tune is None else f", student and PSM fine-tuned {fine_tune.steps} steps")
        + f", threshold {calibration.threshold:.6g} for a false-alarm rate of {target:g} on "
        f"{len(calibrate)} normal images"
    )
    child = ckpt.derive(
        model_path,
        change,
        images=learn_digests,
        updated=updated,
        state=Checkpoint.of(net).state,
        thresholds=ckpt.thresholds.calibrated(calibration),
        fingerprint=fingerprint,
        training=training,
        teacher_norm_targets=targets,
    )
    child.save(out_path)
    return UpdateResult(
        out_path,
        model_path,
        len(learn),
        len(calibrate),
        calibration,
        memory_fit,
        int(bank.shape[0]),
        tuple(updated),
        time.perf_counter() - start,
        fine_tune,
        len(old_images) + len(learn) if fine_tune is not None else 0,
        norms_seconds,
    )


# --- checks before any work --------------------------------------------------------------------
def _out_path(model: Path, out: str | Path | None, overwrite: bool) -> Path:
    path = default_out(model) if out is None else Path(out)
    if path.is_dir():
        raise AdpsError("is a folder; give the new model's file name", path)
    if path.exists() and not overwrite:
        what = "is the model being updated" if path.resolve() == model.resolve() else "exists"
        raise AdpsError(
            f"{what}; pass --overwrite (overwrite=True) to replace it (atomically: a failed "
            "update leaves it as it is)",
            path,
        )
    return path


def _budget(time_budget: float | str | None) -> float | None:
    if time_budget is None:
        return None
    budget = parse_duration(time_budget) if isinstance(time_budget, str) else float(time_budget)
    if not budget > 0:
        raise AdpsError(f"the fine-tune's time budget must be positive, got {time_budget!r}")
    return budget


def _default_target(ckpt: Checkpoint) -> float:
    """The false-alarm rate the model's threshold was set for, else its training config's."""
    calibration = ckpt.thresholds.calibration or {}
    if calibration.get("target_false_alarm_rate") is not None:
        return float(calibration["target_false_alarm_rate"])
    if ckpt.train_config is not None:
        return ckpt.train_config.target_false_alarm_rate
    return _DEFAULT_TARGET


def _split(
    normal_dir: Path,
    calibrate_dir: str | Path | None,
    holdout: float | None,
    target: float,
    seed: int,
) -> tuple[list[Path], list[Path]]:
    """(images to learn from, images to calibrate on), refused before any work when the
    calibration images cannot measure ``target``."""
    files = find_images(normal_dir, recursive=True)
    if calibrate_dir is not None:
        if holdout:
            raise AdpsError(
                "give a held-out share of the new images (--holdout) or --calibrate-dir, not both"
            )
        calibrate = find_images(calibrate_dir, recursive=True)
        try:
            check_calibration_size(len(calibrate), target)
        except AdpsError as exc:
            raise AdpsError(f"{exc} (--calibrate-dir, --target-far)", calibrate_dir) from exc
        return files, calibrate
    share = DEFAULT_HOLDOUT if holdout is None else holdout
    if not 0 < share < 1:
        raise AdpsError(
            f"the held-out share must lie in (0, 1), got {share:g}; the threshold is set on "
            "images the model did not learn from (or give --calibrate-dir)"
        )
    n = len(files)
    n_hold = round(share * n)
    if n_hold >= n:
        raise AdpsError(
            f"holding out {share:g} of the {n} new images leaves none to learn from", normal_dir
        )
    try:
        check_calibration_size(n_hold, target)
    except AdpsError as exc:
        raise AdpsError(
            f"holding out {share:g} of the {n} new images leaves {n_hold} to calibrate on: "
            f"{exc} (--target-far), a larger --holdout, or --calibrate-dir with normal images "
            "the model has not seen",
            normal_dir,
        ) from exc
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = set(order[:n_hold].tolist())
    return [f for i, f in enumerate(files) if i not in held], [files[i] for i in sorted(held)]


def _check_calibration_images(
    ckpt: Checkpoint,
    learn_digests: Sequence[str],
    calibrate: Sequence[Path],
    calibrate_digests: Sequence[str],
    allow_overlap: bool,
) -> None:
    """Calibration images the update learns from are always refused (the memory would hold
    them, so they would score as nothing new does); images the model trained on earlier are
    refused unless ``allow_overlap``, as ``adps calibrate`` does."""
    learned = set(learn_digests)
    both = [str(p) for p, d in zip(calibrate, calibrate_digests, strict=True) if d in learned]
    if both:
        raise AdpsError(
            f"{len(both)} calibration images are also among the new images learned from "
            f"(same content): {name_some([Path(p).name for p in both])}; calibrate on images "
            "the update does not learn from"
        )
    overlap = check_overlap(
        ckpt.fingerprint,
        calibrate,
        "the calibration images",
        allow_overlap,
        roles=("trained",),
    )
    if overlap:
        warnings.warn(
            f"--allow-overlap: {overlap.summary()}; the threshold is set too low", stacklevel=3
        )


# --- the work ----------------------------------------------------------------------------------
def _decode(files: Sequence[Path], model: ADPS, progress: bool) -> torch.Tensor:
    """uint8 (N, 3, H, W) at the model's working size (frames when it tiles); an unreadable
    file is an error naming it."""
    config = model.config
    dataset = AnomalyDataset([Record(p, None, 0) for p in files], config.size)
    if config.tiling:
        dataset = at_working_size(dataset, config)
    return load_tensor_stack(dataset, progress=progress)[0]


class _FineTune(Trainer):
    """The trainer from a checkpoint's weights. The update fits the decision's statistics and
    the threshold afterwards on its calibration images, so the trainer neither fits them nor
    keeps budget time for them."""

    @property
    def decides_standardized(self) -> bool:
        return False


def _training_settings(ckpt: Checkpoint) -> TrainConfig:
    """The model's training settings (the default recipe's where it records none), without a
    texture folder that is not on this machine: synthetic defects then use recoloured images."""
    base = ckpt.train_config or TrainConfig.from_recipe(DEFAULT_RECIPE)
    textures = base.texture_dir
    if textures is not None and not Path(textures).is_dir():
        warnings.warn(
            f"the texture folder the model was trained with ({textures}) is not here; the "
            "update's synthetic defects use recoloured training images",
            stacklevel=3,
        )
        return dataclasses.replace(base, texture_dir=None)
    return base


def _fine_tune(
    ckpt: Checkpoint,
    base: TrainConfig,
    net: ADPS,
    files: Sequence[Path],
    budget: float,
    lr: float | None,
    seed: int,
    device: torch.device,
    progress: bool,
    renumber: int | None,
    textures: TextureBank | None,
) -> tuple[ADPS, TrainingRecord]:
    """``net`` (memory updated) after fine-tuning its student and PSM on ``files`` for
    ``budget`` seconds with the checkpoint's training settings, and what the fine-tune did.

    ``textures``: the decoded texture folder of ``base`` (None: none, or decoded here).
    ``renumber`` (early fusion, ``files`` the new images only): the number of the first new
    image in ``memory.sources``. The PSM's prior leaves each training image's own rows out by
    the trainer's image order, so for the fine-tune the new images' rows are numbered 0, 1, ...
    in that order and the old rows -1 (no image); the memory's numbering is put back after."""
    config = dataclasses.replace(
        base,
        time_budget=budget,
        lr=base.lr * FINE_TUNE_LR_SHARE if lr is None else lr,
        calibration_holdout=0.0,
        steps_per_epoch=None,
        seed=seed,
    )
    memory = net.memory
    assert memory is not None  # update checked
    state = dict(Checkpoint.of(net).state)
    sources = memory.sources.clone()
    if renumber is not None:
        state["memory.sources"] = torch.where(
            sources >= renumber, sources - renumber, torch.full_like(sources, -1)
        ).cpu()
    dataset = AnomalyDataset([Record(p, None, 0) for p in files], ckpt.model_config.size)
    if ckpt.model_config.tiling:
        dataset = at_working_size(dataset, ckpt.model_config)
    with tempfile.TemporaryDirectory(prefix="adps-update-") as scratch:
        trainer = _FineTune(
            ckpt.model_config,
            config,
            dataset,
            scratch,
            device=str(device),
            progress=progress,
            init_state=state,
            textures=textures,
        )
        try:
            result = trainer.fit()
        finally:
            shutdown_distributed(trainer.dist)
    tuned = trainer.model.eval()
    assert tuned.memory is not None
    tuned.memory.set_bank(tuned.memory.bank, sources)  # the memory's own numbering back
    record = TrainingRecord(result.epochs, result.steps, result.seconds, tuple(result.history))
    return tuned, record


def _after(parent: TrainingRecord, fine_tune: TrainingRecord) -> TrainingRecord:
    """The training record of the parent followed by a fine-tune: counts and time added."""
    return TrainingRecord(
        parent.epochs + fine_tune.epochs,
        parent.steps + fine_tune.steps,
        parent.seconds + fine_tune.seconds,
        parent.history + fine_tune.history,
    )


__all__ = ["DEFAULT_HOLDOUT", "FINE_TUNE_LR_SHARE", "UpdateResult", "default_out", "update"]
