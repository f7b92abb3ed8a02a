"""Training loop: on-device data and synthesis, resumable atomic checkpoints, DDP-ready.

The whole training set is decoded once into a uint8 stack that lives on the training device, and
anomalies are synthesised there, so a step never waits on file decoding or host-to-device copies.
The loop keeps losses on the device and synchronises with the host once per epoch (progress bar),
never per step.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from adps.config import ModelConfig, TrainConfig
from adps.data.cache import load_tensor_stack
from adps.data.datasets import AnomalyDataset
from adps.data.fingerprint import Fingerprint, file_digests
from adps.data.synthesis import AnomalySynthesizer, TextureBank, rotate
from adps.engine.calibrate import Thresholds, threshold_for_false_alarm_rate
from adps.engine.checkpoint import Checkpoint, TrainingRecord
from adps.engine.device import cpu_has_bf16, resolve_device
from adps.engine.distributed import DistContext, init_distributed, shutdown_distributed
from adps.engine.inference import TorchForward, infer
from adps.engine.losses import adps_loss
from adps.engine.prior import decision_scores, fit_decision, fit_prior
from adps.engine.schedule import format_duration, lr_factor
from adps.engine.teacher_look import teacher_norm_targets
from adps.engine.tiling import Tiling, grid_tiles, tiled
from adps.errors import AdpsError
from adps.models.adps import ADPS

_PRIOR_TILES = 1024  # tiling: at most this many tiles of the frames go into the memory's fit
_CPU_MICRO_BATCH_PIXELS = 2**19  # TrainConfig.micro_batch_pixels's default on a CPU
_ANNOUNCE_AFTER = 3  # steps before the duration estimate (the first one includes warm-up)
LAST = "last.pt"  # the resumable checkpoint (optimiser, progress, RNG states)
FINAL = "model.pt"  # the deployable checkpoint (weights, configs, thresholds)


@dataclass
class TrainResult:
    checkpoint: Path
    epochs: int
    steps: int
    seconds: float
    images_per_second: float
    history: list[float] = field(default_factory=list)  # mean loss per epoch
    # what the steps computed in, in words: bf16 autocast, or float32 (asked, or on a CPU
    # without native bf16, where a time budget buys several times fewer steps)
    precision: str = "float32"


def random_rotate(
    images: torch.Tensor, prob: float, max_degrees: float, generator: torch.Generator
) -> torch.Tensor:
    """DRAEM's rotation of the normal image (prob 0.3, +-90 deg), batched; zero fill like imgaug.

    Uses synthesis's rotation, which keeps non-square images rigid (no shear)."""
    if prob <= 0:
        return images
    b = images.shape[0]
    dev = images.device
    chosen = torch.rand(b, generator=generator, device=dev) < prob
    degrees = (torch.rand(b, generator=generator, device=dev) * 2 - 1) * max_degrees
    rotated = rotate(images, torch.where(chosen, degrees, torch.zeros_like(degrees)), "zeros")
    return torch.where(chosen.view(b, 1, 1, 1), rotated, images)


def random_crops(
    images: torch.Tensor, index: torch.Tensor, size: tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """One random ``size`` crop of each ``images[index]``, gathered in one indexing operation
    (the frames themselves are never copied whole)."""
    _, c, h, w = images.shape
    th, tw = size
    dev = images.device
    b = len(index)
    ys = torch.randint(0, h - th + 1, (b,), generator=generator, device=dev)
    xs = torch.randint(0, w - tw + 1, (b,), generator=generator, device=dev)
    rows = (ys[:, None] + torch.arange(th, device=dev))[:, None, :, None]
    cols = (xs[:, None] + torch.arange(tw, device=dev))[:, None, None, :]
    channels = torch.arange(c, device=dev)[None, :, None, None]
    return images[index.view(b, 1, 1, 1), channels, rows, cols]


def micro_batches(batch: int, image_pixels: int, limit: int | None) -> int:
    """Into how many equal parts a step's ``batch`` is split: the fewest whose size divides the
    batch and holds at most ``limit`` pixels (one image per part at the least; None: one)."""
    if limit is None:
        return 1
    return next(
        (p for p in range(1, batch + 1) if batch % p == 0 and batch // p * image_pixels <= limit),
        batch,
    )


def step_micro_batch(
    config: TrainConfig, size: tuple[int, int], device: torch.device, world_size: int = 1
) -> int:
    """Images in each forward pass of a training step on ``device``: a process's share of the
    batch in :func:`micro_batches` parts (on a CPU at most ``_CPU_MICRO_BATCH_PIXELS`` pixels
    unless the config says otherwise). Its BatchNorm statistics are those of batches this big."""
    local = config.batch_size // world_size
    limit = config.micro_batch_pixels
    if limit is None and device.type == "cpu":
        limit = _CPU_MICRO_BATCH_PIXELS
    return local // micro_batches(local, size[0] * size[1], limit)


def holdout_indices(n: int, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(indices of the images to train on, of the held-out ones or None) of ``n`` training
    images, a fixed draw from the seed.

    Refuses up front, before any training time is spent, when the held-out share is too small
    to measure the target false-alarm rate.
    """
    share = config.calibration_holdout
    if share <= 0:
        return torch.arange(n), None
    n_hold = round(share * n)
    needed = math.ceil(1 / config.target_false_alarm_rate - 1e-9)
    if n_hold < needed or n_hold >= n:
        raise AdpsError(
            f"holding out {share:g} of {n} training images gives {n_hold}; a "
            f"false-alarm rate of {config.target_false_alarm_rate:g} needs at least {needed} "
            f"(and some left to train on): raise the target rate or name a folder of normal "
            f"images with `adps calibrate` instead"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    return order[n_hold:].sort().values, order[:n_hold].sort().values


def some_tiles(tiles: torch.Tensor, seed: int) -> torch.Tensor:
    """At most ``_PRIOR_TILES`` of ``tiles``, a fixed draw from ``seed``, in their order: the
    tiles a tiling model's memory is fitted from."""
    if len(tiles) <= _PRIOR_TILES:
        return tiles
    generator = torch.Generator().manual_seed(seed)
    return tiles[torch.randperm(len(tiles), generator=generator)[:_PRIOR_TILES].sort().values]


class Trainer:
    """Owns the model, optimiser and data for one run; ``fit`` runs (or resumes) it.

    Construction is a sequence of named steps (process group, data, model, optimiser, sampling)
    so each can be read, and changed, on its own.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        dataset: AnomalyDataset,
        out_dir: str | Path,
        device: str = "auto",
        weights_file: str | None = None,
        allow_download: bool = False,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        init_state: Mapping[str, torch.Tensor] | None = None,
        textures: TextureBank | None = None,
    ):
        """``init_state``: start from these weights (a checkpoint's state, teacher and memory
        included) instead of the pretrained teacher and a new student and PSM: a fine-tune
        (``adps update --time-budget``). A fitted memory in it is kept, not fitted again.
        ``textures``: ``train_config.texture_dir`` already decoded at the model's size, by a
        caller that needed it first (the update's BatchNorm re-estimate)."""
        self.clock = clock  # wall-clock seconds; tests pass a fake one
        self.started = clock()  # a time budget counts from here: decoding and the memory too
        self.model_config, self.config = model_config, train_config
        self.out_dir = Path(out_dir)
        self._init_process_group(device, progress)
        self._check_dataset(dataset)
        self._load_data(dataset, cache_dir, textures)
        self._build_model(weights_file, allow_download, init_state)
        self._build_optimizer()
        self._init_sampling()
        self.start_epoch = 0
        self.step = 0  # optimiser steps done, over every session of this run
        self.elapsed = 0.0  # training seconds spent, over every session (the budget's account)
        # seconds the budget spent outside training steps, over every session (decoding, the
        # memory's fit), and those it keeps for the calibration after training (estimated)
        self.overhead = 0.0
        self.reserve = 0.0
        self.history: list[float] = []
        # the training images' look at the teacher's BatchNorm layers, for adps update
        self.teacher_norm_targets: Mapping[str, torch.Tensor] | None = None

    def _init_process_group(self, device: str, progress: bool) -> None:
        self.device = resolve_device(device)
        self.dist: DistContext = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.progress = progress and self.dist.is_main
        if self.config.batch_size % self.dist.world_size:
            raise AdpsError(
                f"batch_size {self.config.batch_size} must be divisible by the "
                f"number of processes ({self.dist.world_size})"
            )
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes every step: tune once

    def _check_dataset(self, dataset: AnomalyDataset) -> None:
        size = self.model_config.size
        self.tiling = Tiling.of(self.model_config)
        if self.tiling is not None:  # any frame size that holds a tile
            if dataset.size is None or any(f < t for f, t in zip(dataset.size, size, strict=True)):
                raise AdpsError(
                    f"tiling: the training images, scaled by tile_scale "
                    f"{self.tiling.scale:g}, are {dataset.size} (height, width), smaller than "
                    f"the {size[0]} x {size[1]} tile; raise --tile-scale or choose a smaller "
                    f"--tile",
                    dataset.records[0].image,
                )
        elif dataset.size is None or dataset.size != size:
            raise AdpsError(
                f"the training dataset must be resized to the model's "
                f"{size[0]} x {size[1]} (got {dataset.size})"
            )
        if sum(dataset.labels):
            raise AdpsError(
                "the training set contains anomalous images; ADPS trains on normal images only"
            )

    def _load_data(
        self,
        dataset: AnomalyDataset,
        cache_dir: str | Path | None,
        textures: TextureBank | None = None,
    ) -> None:
        """The uint8 image stack on the device, the calibration hold-out, the synthesiser, and
        the fingerprint of which images were used for what."""
        images, _, _ = load_tensor_stack(dataset, cache_dir=cache_dir, progress=self.progress)
        kept, held = holdout_indices(len(images), self.config)
        images, self.holdout = images[kept], None if held is None else images[held]
        digests = file_digests([record.image for record in dataset.records])
        self.fingerprint = Fingerprint(
            frozenset(digests[i] for i in kept.tolist()),
            frozenset(() if held is None else (digests[i] for i in held.tolist())),
            recorded=True,
        )
        if self.device.type == "cuda":
            images = images.pin_memory()
        self.images = images.to(self.device, non_blocking=True)
        if textures is None and self.config.texture_dir:
            textures = TextureBank.from_folder(
                self.config.texture_dir, self.model_config.image_size, self.device
            )
        self.synthesizer = AnomalySynthesizer(textures, self.config.synthesis)

    def _build_model(
        self,
        weights_file: str | None,
        allow_download: bool,
        init_state: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        torch.manual_seed(self.config.seed)
        self.model = ADPS(
            self.model_config,
            pretrained=init_state is None,
            weights_file=weights_file,
            allow_download=allow_download,
        )
        if init_state is not None:
            self.model.load_state_dict(init_state, strict=True)
        self.model.to(self.device)
        self.memory_format = (
            torch.channels_last if self.config.channels_last else torch.contiguous_format
        )
        self.model.to(memory_format=self.memory_format)
        self.net: nn.Module = self.model
        if self.dist.enabled:
            self.net = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.model_config.variant != "full",
            )
        native_bf16 = self.device.type == "cuda" or cpu_has_bf16()
        self.use_amp = self.config.amp and native_bf16
        self.model.autocast_student = self.device.type == "cuda"  # see ADPS.autocast_student

    @property
    def precision(self) -> str:
        """The steps' precision in words, saying why where bf16 was asked for but not used."""
        if self.use_amp:
            return "bf16"
        if self.config.amp:  # asked for, but the CPU would only emulate it
            return "float32 (this CPU has no native bf16: a time budget buys fewer steps)"
        return "float32"

    def _build_optimizer(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=self.config.lr)

    def _init_sampling(self) -> None:
        """Each rank draws its own synthetic defects but a disjoint share of every epoch."""
        cfg = self.config
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + self.dist.rank)
        self.sampler: DistributedSampler[int] = DistributedSampler(
            range(len(self.images)),  # type: ignore[arg-type]  # a sampler only needs len()
            self.dist.world_size,
            self.dist.rank,
            shuffle=True,
            seed=cfg.seed,
        )
        self.local_batch = cfg.batch_size // self.dist.world_size
        micro = step_micro_batch(cfg, self.model_config.size, self.device, self.dist.world_size)
        self.parts = self.local_batch // micro
        self.steps_per_epoch = cfg.steps_per_epoch or math.ceil(len(self.images) / cfg.batch_size)

    # --- state ------------------------------------------------------------------------------
    def checkpoint(self, epoch: int, **fields) -> Checkpoint:
        """The model as it is after ``epoch`` epochs, with what the run did so far."""
        return Checkpoint.of(
            self.model,
            train_config=self.config,
            fingerprint=self.fingerprint,
            training=TrainingRecord(epoch, self.step, self.elapsed, tuple(self.history)),
            teacher_norm_targets=self.teacher_norm_targets,
            **fields,
        )

    def state(self, epoch: int) -> Checkpoint:
        """The resumable checkpoint: the model plus the optimiser and RNG states."""
        return self.checkpoint(
            epoch,
            resume={
                "overhead": self.overhead,
                # the seconds set aside for the decision's fit and calibration after training
                "reserve": self.reserve,
                "optimizer": self.optimizer.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
            },
        )

    def resume(self) -> bool:
        path = self.out_dir / LAST
        if not path.is_file():
            return False
        ckpt = Checkpoint.load(path)
        if ckpt.model_config != self.model_config:
            raise AdpsError(
                "was written with a different model configuration; resume with the "
                "same settings or start a new output folder",
                path,
            )
        if ckpt.resume is None or ckpt.training is None:
            raise AdpsError("holds no training state to resume from", path)
        self.model.load_state_dict(ckpt.state, strict=True)
        self.optimizer.load_state_dict(ckpt.resume["optimizer"])
        self.step, self.elapsed = ckpt.training.steps, ckpt.training.seconds
        torch.set_rng_state(ckpt.resume["rng"]["torch"])
        self.generator.set_state(ckpt.resume["rng"]["generator"])
        self.start_epoch = ckpt.training.epochs
        self.overhead = float(ckpt.resume.get("overhead", 0.0))
        self.history = list(ckpt.training.history)
        self.teacher_norm_targets = ckpt.teacher_norm_targets
        # what earlier sessions learned from counts too, should the data have changed since
        self.fingerprint = ckpt.fingerprint | self.fingerprint
        return True

    def save(self, epoch: int, name: str = LAST) -> Path:
        path = self.out_dir / name
        if self.dist.is_main:
            self.state(epoch).save(path)
        return path

    # --- loop -------------------------------------------------------------------------------
    def train_step(self, index: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if self.tiling is None:
            images = self.images[index]
        else:
            images = random_crops(self.images, index, self.model_config.size, self.generator)
        images = images.float().div_(255.0)
        images = random_rotate(images, cfg.rotate_prob, 90.0, self.generator)
        images, masks = self.synthesizer(images, self.generator)
        images = images.contiguous(memory_format=self.memory_format)
        early = self.model.early_prior  # the prior of each image leaves its own features out
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        for part in range(self.parts):  # the losses are means: each part's share adds up
            rows = slice(part * len(images) // self.parts, (part + 1) * len(images) // self.parts)
            # under DDP, gradients are averaged across processes once, after the last part
            last = part == self.parts - 1
            sync = (
                self.net.no_sync()
                if isinstance(self.net, DistributedDataParallel) and not last
                else nullcontext()
            )
            with sync:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                    outputs = self.net(images[rows], groups=index[rows] if early else None)
                part_loss, _ = adps_loss(outputs, masks[rows], cfg, self.model_config.cos_eps)
                (part_loss / self.parts).backward()
            loss += part_loss.detach() / self.parts
        self.optimizer.step()
        return loss

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        n = self.steps_per_epoch * self.local_batch
        return (
            order[torch.arange(n) % len(order)]
            .view(self.steps_per_epoch, self.local_batch)
            .to(self.device)
        )

    @property
    def decides_standardized(self) -> bool:
        return self.model.memory is not None and self.model_config.standardized_decision

    @property
    def read_batch(self) -> int:
        """Images per forward pass after training (the decision's fit, calibration): a step's
        micro-batch, so those passes hold no more memory than training did."""
        return 1 if self.tiling else max(1, self.local_batch // self.parts)

    def fit_decision(self) -> None:
        """The standardized decision's statistics, after training: the PSM's scores are those
        of the trained PSM (engine/prior.py, fit_decision)."""
        fit_decision(self.model, self.images, self.holdout, self.read_batch, self.progress)

    def calibrate(self) -> Thresholds:
        """Image threshold from the held-out normal images (none held out: uncalibrated)."""
        if self.holdout is None:
            return Thresholds()
        forward = tiled(
            TorchForward(self.model, self.device), self.model_config, self.config.batch_size
        )
        _, scores, _ = infer(forward, self.holdout, self.device, self.read_batch)
        self.model.train()
        calibration = threshold_for_false_alarm_rate(
            scores.numpy(), self.config.target_false_alarm_rate
        )
        return Thresholds().calibrated(calibration)

    def training_progress(self, session_start: float, elapsed_before: float) -> float:
        """Share of training done: of the time budget, else of the planned steps. Under DDP the
        time-based value is rank 0's, so every rank uses the same learning rate and stops at
        the same step."""
        cfg = self.config
        if cfg.time_budget is None:
            return self.step / (cfg.epochs * self.steps_per_epoch)
        value = (elapsed_before + self.clock() - session_start) / self.training_budget
        if self.dist.enabled:
            shared = torch.tensor([value], dtype=torch.float64, device=self.device)
            torch.distributed.broadcast(shared, 0)
            value = float(shared)
        return value

    @property
    def training_budget(self) -> float:
        """The seconds of the time budget left for training steps: the budget is the user's wall
        time from start to model.pt, so decoding, the memory's fit and the calibration after
        training come out of it."""
        assert self.config.time_budget is not None
        return max(self.config.time_budget - self.overhead - self.reserve, 1e-9)

    def _calibration_seconds(self) -> float:
        """How long :meth:`fit_decision` and :meth:`calibrate` will take: each timed on a second
        pass over its first batch, on the path it takes (the decision's memory scores, leave
        one image out on the training images, cost more than a plain forward)."""
        batch, seconds = self.read_batch, 0.0

        def timed(run: Callable[[], object], images: torch.Tensor) -> float:
            run()  # the first pass after training warms up: timing it overestimates
            start = self.clock()
            run()
            return (self.clock() - start) * math.ceil(len(images) / batch)

        if self.holdout is not None:  # calibration: the model's forward on the hold-out
            forward = tiled(TorchForward(self.model, self.device), self.model_config, batch)
            first = self.holdout[:batch]
            seconds += timed(lambda: infer(forward, first, self.device, batch), self.holdout)
        if self.decides_standardized:
            source = self.images if self.holdout is None else self.holdout
            own = self.holdout is None
            seconds += timed(
                lambda: decision_scores(self.model, source[:batch], own, batch), source
            )
        self.model.train()
        return seconds

    def set_lr(self, progress: float) -> float:
        lr = self.config.lr * lr_factor(progress, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def announce_duration(self, steps: int, seconds: float) -> None:
        """After the first steps: how long the requested schedule will take here."""
        cfg = self.config
        if cfg.time_budget is not None or not self.dist.is_main or steps == 0:
            return
        total = seconds / steps * (cfg.epochs * self.steps_per_epoch - self.step)
        message = (
            f"{cfg.epochs} epochs ({cfg.epochs * self.steps_per_epoch} steps) will take "
            f"about {format_duration(total)} more on this machine, "
            f"{format_duration(total + self.overhead + self.reserve)} in all with decoding, the "
            "memory's fit and calibration"
        )
        if self.device.type == "cpu" and total > 3600:
            message += (
                "; to train in the time you have, give a budget instead, e.g. "
                "--time-budget 30m (the schedule then fits the budget)"
            )
        tqdm.write(message)

    def fit_prior(self) -> None:
        """The memory prior from the training images, before training: early fusion trains the
        PSM on it, and either way it is then in every checkpoint, last.pt included."""
        images, holdout = self.images, self.holdout
        if self.tiling is not None:  # the memory holds tile features, at the tiles' scale
            images = self._some(grid_tiles(images.cpu(), self.tiling)).to(self.device)
            holdout = None if holdout is None else self._some(grid_tiles(holdout, self.tiling))
        fit = fit_prior(
            self.model, images, holdout, self.config.batch_size, self.progress, self.config.seed
        )
        # the look the memory learned, which an update moves a new look's teacher features to
        self.teacher_norm_targets = teacher_norm_targets(self.model, images)
        if self.dist.is_main:
            tqdm.write(
                f"memory prior: {fit.bank_size} of {fit.features} normal features kept, "
                f"scaled by {fit.statistics} statistics ({fit.seconds:.0f} s)"
            )

    def _some(self, tiles: torch.Tensor) -> torch.Tensor:
        return some_tiles(tiles, self.config.seed)

    def fit(self, on_epoch_end: Callable[[int, float], None] | None = None) -> TrainResult:
        """Trains until ``epochs`` are done or the time budget is spent (checked before every
        step, so training ends within one step of it), then writes ``model.pt``."""
        cfg = self.config
        if self.model.memory is not None and not self.model.memory.fitted:  # resumed: last.pt
            self.fit_prior()
            self.save(self.start_epoch)  # resumable from here on without fitting it again
        budget = cfg.time_budget
        self.reserve = self._calibration_seconds()
        self.overhead += self.clock() - self.started
        outside = self.overhead + self.reserve
        if budget is not None and outside >= budget and self.dist.is_main:
            tqdm.write(
                f"warning: decoding, the memory's fit and calibration take "
                f"{format_duration(outside)} of the {format_duration(budget)} budget; "
                "training one step only (give a larger budget, or a smaller --memory-size)"
            )
        self.model.train()
        session_start = last_save = self.clock()
        elapsed_before, steps = self.elapsed, 0
        if budget is None:
            bar = tqdm(
                total=cfg.epochs,
                initial=self.start_epoch,
                desc="train",
                unit="epoch",
                disable=not self.progress,
            )
        else:
            bar = tqdm(
                total=round(budget),
                initial=round(min(self.overhead + self.elapsed, budget)),
                desc="train",
                unit="s",
                disable=not self.progress,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s [{postfix}]",
            )
        epoch, finished = self.start_epoch, False
        while not finished and (budget is not None or epoch < cfg.epochs):
            t0 = self.clock()
            total, done_steps = torch.zeros((), device=self.device), 0
            for index in self.epoch_indices(epoch):
                progress = self.training_progress(session_start, elapsed_before)
                if budget is not None and progress >= 1.0 and self.step > 0:
                    finished = True
                    break
                lr = self.set_lr(progress)
                total += self.train_step(index)
                done_steps += 1
                self.step += 1
                steps += 1
                if steps == _ANNOUNCE_AFTER:
                    self.announce_duration(steps, self.clock() - session_start)
            if done_steps == 0:
                if finished:  # the budget ran out as an epoch began: last.pt gets the end state
                    self.elapsed = elapsed_before + self.clock() - session_start
                    self.save(epoch)
                break
            epoch += 1
            mean_loss = float(total) / done_steps  # one host sync per epoch
            self.history.append(mean_loss)
            now = self.clock()
            self.elapsed = elapsed_before + now - session_start
            rate = done_steps * cfg.batch_size / max(now - t0, 1e-9)
            postfix = {"loss": f"{mean_loss:.4f}", "img_s": f"{rate:.0f}", "lr": f"{lr:.1e}"}
            if budget is None:
                bar.update(1)
            else:
                spent = self.overhead + self.elapsed
                postfix["left"] = format_duration(max(budget - spent, 0.0))
                bar.update(round(min(spent, budget)) - bar.n)
            bar.set_postfix(postfix)
            last_epoch = finished or (budget is None and epoch == cfg.epochs)
            overdue = now - last_save > 60 * cfg.checkpoint_minutes
            if epoch % cfg.checkpoint_every == 0 or last_epoch or overdue:
                self.save(epoch)
                last_save = self.clock()
            if on_epoch_end is not None:
                on_epoch_end(epoch, mean_loss)
        bar.close()
        seconds = self.clock() - session_start
        final = self.out_dir / FINAL
        if self.dist.is_main:
            # what ran: under a time budget the budget decided the epochs, not cfg.epochs
            ran = cfg if budget is None else dataclasses.replace(cfg, epochs=max(epoch, 1))
            if self.decides_standardized:
                self.fit_decision()
            self.checkpoint(epoch, thresholds=self.calibrate()).replace(train_config=ran).save(
                final
            )
        images = steps * cfg.batch_size
        return TrainResult(
            final,
            epoch,
            steps,
            seconds,
            images / seconds if seconds > 0 else 0.0,
            list(self.history),
            self.precision,
        )


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    dataset: AnomalyDataset,
    out_dir: str | Path,
    resume: bool = False,
    **kwargs,
) -> TrainResult:
    """Train (or resume) one model; writes ``last.pt`` periodically and ``model.pt`` at the end."""
    trainer = Trainer(model_config, train_config, dataset, out_dir, **kwargs)
    try:
        if resume and not trainer.resume():
            raise AdpsError(f"--resume was given but there is no {LAST} to resume from", out_dir)
        return trainer.fit()
    finally:
        shutdown_distributed(trainer.dist)
