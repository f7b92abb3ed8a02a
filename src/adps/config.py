"""Typed configs. Defaults are the paper's; every "OUR CHOICE" of the method (docs/method.md) is
a field.

Configs are frozen dataclasses: a model built from one cannot be told one thing and do another,
and ``dataclasses.replace`` makes a changed copy. They serialise into checkpoints as dicts and
come back exactly (``from_dict``); a checkpoint alone is then enough to rebuild the model and
its pre-processing.

Named recipes (:data:`RECIPES`) are the one source of defaults: ``ModelConfig.from_recipe`` and
``TrainConfig.from_recipe`` give what the CLI starts from (:data:`DEFAULT_RECIPE`), and the
CLI's ``--help`` prints their values, so no default is typed twice. A bare ``ModelConfig()`` /
``TrainConfig()`` is the "paper" recipe.

Every config checks every field in ``__post_init__`` (choices, types, ranges) and raises an
``AdpsError`` naming ``section.field``, the value and what is allowed. A typo in a YAML file or
a flag thus fails before any data is opened, instead of as a TypeError in the first forward pass
or, for a misspelt choice, not at all.

The configs sit below every layer: they import neither torch, the data pipeline nor the
models; the backbone name is checked against the registry by ``adps.models.backbones``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import operator
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NoReturn, TypeVar, get_args, get_origin

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from adps.errors import AdpsError

Fusion = Literal["wmb", "diff", "conv"]
Variant = Literal["full", "no_psm_wmb", "no_student", "no_teacher"]
ImageScore = Literal["max", "top_mean"]
ImageDecision = Literal["auto", "fused", "standardized"]
LrSchedule = Literal["multistep", "cosine"]
Prior = Literal["none", "memory"]

NUM_TEXTURE_OPS = 10
"""Photometric ops in DRAEM's texture list; ``adps.data.synthesis`` asserts its list has as many."""

_FILE_SECTIONS = ("model", "train")

# --------------------------------------------------------------------------------------- checks
# Each takes the config and a field name, so the message can say "section.field"; the ``_at``
# forms take the location and the value directly (used for the items of a tuple field).


def _fail(where: str, value: Any, allowed: str, note: str = "") -> NoReturn:
    raise AdpsError(f"{where}: must be {allowed}, got {_shown(value)}{note}")


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(config: Any, name: str) -> str:
    return f"{config._SECTION}.{name}"


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _literals(config: DataclassInstance) -> None:
    """Checks every ``Literal`` field against the choices of its annotation (so they are typed
    once, in the annotation)."""
    for name, hint in _hints(type(config)).items():
        if get_origin(hint) is Literal:
            value, options = getattr(config, name), get_args(hint)
            # the type check keeps True from passing for 1 (and 1.0 for 1)
            if type(value) not in {type(o) for o in options} or value not in options:
                raise AdpsError(
                    f"{_where(config, name)}: {_shown(value)} is not one of {list(options)}"
                )


_BOUNDS = (
    ("gt", ">", operator.gt),
    ("ge", ">=", operator.ge),
    ("lt", "<", operator.lt),
    ("le", "<=", operator.le),
)


def _number_at(
    where: str, value: Any, *, integer: bool = False, optional: bool = False, **bounds: float
) -> None:
    """A finite real (an int is fine where a float is meant) or, with ``integer``, an int, within
    the ``gt``/``ge``/``lt``/``le`` bounds; ``optional`` also allows None.

    bool is refused although Python counts it as an int (``epochs: true`` is a mistake, not 1),
    and so is a float where an int is meant (``epochs: 2.5`` would be truncated somewhere)."""
    if optional and value is None:
        return
    limits = [(symbol, test, bounds[key]) for key, symbol, test in _BOUNDS if key in bounds]
    allowed = " and ".join(f"{symbol} {bound}" for symbol, _, bound in limits)
    kinds = int if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        kind = "an integer" if integer else "a finite number"
        message = " ".join(filter(None, ["None or" if optional else "", kind, allowed]))
        note = (
            " (a string: PyYAML reads 1e-4 as text; write 1.0e-4)"
            if isinstance(value, str) and _is_number_text(value)
            else ""
        )
        _fail(where, value, message, note)
    if not all(test(value, bound) for _, test, bound in limits):
        _fail(where, value, allowed)


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(config: Any, name: str, **kwargs: Any) -> None:
    _number_at(_where(config, name), getattr(config, name), **kwargs)


def _instance(config: Any, name: str, kind: type, allowed: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, kind):
        _fail(_where(config, name), value, allowed)


def _text(config: Any, name: str, optional: bool = False) -> None:
    """A non-empty string (an empty one would silently mean "unset" where it is tested)."""
    value = getattr(config, name)
    if not (optional and value is None) and not (isinstance(value, str) and value):
        _fail(
            _where(config, name),
            value,
            "None or a non-empty string" if optional else "a non-empty string",
        )


def _items(
    config: Any,
    name: str,
    allowed: str,
    check: Callable[[str, Any], None],
    *,
    length: int | None = None,
    distinct: bool = False,
    increasing: bool = False,
) -> None:
    """A tuple (``from_dict`` turns YAML lists into tuples) whose items each pass ``check``."""
    where, value = _where(config, name), getattr(config, name)
    if not isinstance(value, tuple) or (length is not None and len(value) != length):
        _fail(where, value, allowed)
    for i, item in enumerate(value):
        check(f"{where}[{i}]", item)
    if (distinct and len(set(value)) != len(value)) or (
        increasing and any(a >= b for a, b in itertools.pairwise(value))
    ):
        _fail(where, value, allowed)


@dataclass(frozen=True)
class SynthesisConfig:
    """How anomalies are synthesised; every default is DRAEM's ``data_loader.py`` value.

    Attributes:
        anomaly_prob: share of samples that receive an anomaly; the rest are returned unchanged with
            a zero mask (DRAEM: ``rand > 0.5`` returns the clean image).
        perlin_scale_min: smallest exponent ``a`` of the Perlin lattice ``2**a x 2**b``.
        perlin_scale_max: largest exponent (inclusive). DRAEM draws ``a, b`` independently from
            ``randint(0, 6)``, i.e. 1 to 32 lattice periods per side.
        threshold: noise level above which a pixel is anomalous (DRAEM: 0.5 on noise scaled by
            sqrt(2), so blobs cover a minority of the image).
        beta_max: the image keeps a share ``beta ~ U(0, beta_max)`` inside the mask, so the texture
            weight is in ``(1 - beta_max, 1]`` (DRAEM: 0.8).
        rotate_mask: rotate the noise by ``U(-90, 90)`` degrees, so blobs are not axis-aligned
            (DRAEM: imgaug ``Affine(rotate=(-90, 90))``).
        texture_ops: how many distinct photometric ops, drawn without replacement from the ten of
            DRAEM's list, each texture sample receives (DRAEM: 3).
    """

    _SECTION: ClassVar[str] = "train.synthesis"

    anomaly_prob: float = 0.5
    perlin_scale_min: int = 0
    perlin_scale_max: int = 5
    threshold: float = 0.5
    beta_max: float = 0.8
    rotate_mask: bool = True
    texture_ops: int = 3

    def __post_init__(self) -> None:
        _number(self, "anomaly_prob", ge=0, le=1)
        _number(self, "perlin_scale_min", integer=True, ge=0, le=10)
        _number(self, "perlin_scale_max", integer=True, ge=0, le=10)
        if self.perlin_scale_min > self.perlin_scale_max:
            _fail(
                _where(self, "perlin_scale_min"),
                self.perlin_scale_min,
                f"<= perlin_scale_max ({self.perlin_scale_max})",
            )
        _number(self, "threshold")
        _number(self, "beta_max", ge=0, le=1)
        _instance(self, "rotate_mask", bool, "true or false")
        _number(self, "texture_ops", integer=True, ge=0, le=NUM_TEXTURE_OPS)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    # [P] 256 x 256 for every dataset; OUR CHOICE: (height, width) for elongated parts. The
    # image is resized to it, or, with ``tiling``, cut into tiles of this size.
    image_size: int | tuple[int, int] = 256
    k: int = 8  # [P] patches per side for the student; 1 = symmetric baseline
    # OUR CHOICE: the paper's default splits at the input only; (1,) also re-cuts every patch's
    # stage-1 features into k x k pieces (the "asymmetric layers" ablation).
    split_after_stages: tuple[int, ...] = ()
    fusion: Fusion = "wmb"  # [P] WMB; "diff" = Method (1) T - S, "conv" = Method (2)
    mask_type: Literal["cosine", "mse"] = "cosine"  # how the WMB weight is computed (Table VII)
    variant: Variant = "full"  # Table VIII ablations
    # OUR CHOICE: PSM up-block widths; None = the per-backbone table of the method spec.
    psm_widths: tuple[int, int, int, int] | None = None
    student_init: Literal["random", "teacher"] = "random"  # OUR CHOICE (STPM): random
    sigma: float = 4.0  # OUR CHOICE: Gaussian sigma of the image score (RD4AD convention)
    cos_eps: float = 1e-8
    psm_init: Literal["pytorch", "draem"] = "pytorch"
    # Where the PSM stops: 1 = full resolution (the paper); 2 or 4 drop the last up-block(s),
    # whose activations at full size cost most of the PSM's time, and upsample the logits
    # bilinearly to the image size before the softmax (and the loss).
    psm_output_stride: Literal[1, 2, 4] = 1
    # The image score from the Gaussian-smoothed map: "max" (the paper) or "top_mean", the mean
    # of its highest ``score_top_share`` of pixels, which a few hot pixels cannot dominate.
    image_score: ImageScore = "max"
    score_top_share: float = 0.01
    # OUR CHOICE (not in the paper): what decides pass/fail with the memory prior (late fusion).
    # "fused": the image score of the fused map. "standardized": the memory's and the PSM's own
    # image scores, each in standard deviations above its mean on normal images the model did
    # not learn from (the memory's training images leave-one-image-out, the PSM's calibration
    # hold-out, else its training images), summed with the PSM's weighted by
    # ``decision_psm_weight``: the memory ranks parts unlike any normal one, the PSM those like
    # the synthetic defects, and neither's scale swamps the other (benchmarks/decision).
    # "auto": "standardized" where it applies (memory prior, late fusion, whole images), else
    # "fused" (a tiled image is scored from its blended map).
    image_decision: ImageDecision = "auto"
    decision_psm_weight: float = 1.0
    # OUR CHOICE (not in the paper): "memory" adds a memory of the teacher's features of the
    # normal training images (PatchCore's idea); each position's distance to its nearest normal
    # features is a prior map, fused with the PSM as `prior_fusion` says. "none" is the paper's
    # model.
    prior: Prior = "none"
    memory_size: int = 4096  # the bank's size after greedy coreset selection
    memory_neighbors: int = 1  # the prior is the mean distance to this many nearest features
    # "late": the prior map is multiplied by (1 + psm_boost * the PSM's probability), and the PSM
    # trains as in the paper; "early": the standardised prior is an extra input of the PSM at
    # strides 8 and 16, trained with the synthetic defects (psm_boost is unused).
    prior_fusion: Literal["late", "early"] = "late"
    psm_boost: float = 2.0  # late fusion; 0 = the prior alone (PatchCore with k = 1)
    # late fusion: the prior (in units of its normal 99.9th percentile) is raised to this power
    # before the product; below 1 the PSM decides more of the ranking. 1 is measured best where
    # the synthetic defects resemble the real ones least; `adps calibrate --fit-fusion` fits
    # both from labelled defects.
    prior_exponent: float = 1.0
    # OUR CHOICE (not in the paper), for parts whose defects vanish when the whole image is
    # resized to image_size: the image is scaled by ``tile_scale`` (1 = native pixels) and cut
    # into image_size tiles overlapping by ``tile_overlap`` of a tile; training draws random
    # tiles, inference blends the tile maps into one map (engine/tiling.py).
    tiling: bool = False
    tile_overlap: float = 0.25
    tile_scale: float = 1.0

    _SECTION: ClassVar[str] = "model"

    @classmethod
    def from_recipe(cls, name: str = "paper", **changes: Any) -> ModelConfig:
        """The model settings of recipe ``name`` (:data:`RECIPES`), with ``changes`` on top."""
        return cls(**{**recipe(name).model, **changes})

    @property
    def _standardizable(self) -> bool:
        return (
            self.prior == "memory"
            and self.prior_fusion == "late"
            and self.variant != "no_psm_wmb"
            and not self.tiling
        )

    @property
    def standardized_decision(self) -> bool:
        """Whether the image score is the standardized sum of the memory's and the PSM's
        (``image_decision``, "auto" resolved)."""
        return self.image_decision == "standardized" or (
            self.image_decision == "auto" and self._standardizable
        )

    def __post_init__(self) -> None:
        _literals(self)
        _text(self, "backbone")  # whether it is a known one: adps.models.backbones.get_backbone
        self._check_image_size()
        _number(self, "k", integer=True, ge=1)
        _items(
            self,
            "split_after_stages",
            "a tuple of distinct stages out of (1, 2)",
            functools.partial(_number_at, integer=True, ge=1, le=2),
            distinct=True,
        )
        if self.psm_widths is not None:
            _items(
                self,
                "psm_widths",
                "None or a tuple of 4 positive integers",
                functools.partial(_number_at, integer=True, gt=0),
                length=4,
            )
        _number(self, "sigma", ge=0)
        _number(self, "cos_eps", gt=0)
        _number(self, "score_top_share", gt=0, le=1)
        _number(self, "decision_psm_weight", ge=0)
        _number(self, "memory_size", integer=True, ge=1)
        _number(self, "memory_neighbors", integer=True, ge=1)
        _number(self, "psm_boost", ge=0)
        _number(self, "prior_exponent", gt=0, le=1)
        _instance(self, "tiling", bool, "true or false")
        _number(self, "tile_overlap", ge=0, lt=1)
        _number(self, "tile_scale", gt=0)
        if self.prior == "memory" and self.variant == "no_teacher":
            _fail(
                _where(self, "prior"),
                self.prior,
                "'none' with variant 'no_teacher'",
                " (the memory holds teacher features)",
            )
        if self.image_decision == "standardized" and not self._standardizable:
            _fail(
                _where(self, "image_decision"),
                self.image_decision,
                "'fused' or 'auto' here",
                " (the standardized decision needs the memory prior with late fusion and a "
                "PSM, on whole images: a tiled image is scored from its blended map)",
            )
        if self.prior_fusion == "early" and self.variant == "no_psm_wmb":
            _fail(_where(self, "prior_fusion"), self.prior_fusion, "'late' without a PSM")
        if self.prior_fusion == "early" and self.prior == "memory" and self.tiling:
            _fail(
                _where(self, "prior_fusion"),
                self.prior_fusion,
                "'late' with tiling",
                " (early fusion leaves each training image's own features out of its prior, "
                "and tiles are not images)",
            )
        self._check_geometry()

    @property
    def size(self) -> tuple[int, int]:
        """The working size (or tile size) as (height, width)."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    def _check_image_size(self) -> None:
        where, value = _where(self, "image_size"), self.image_size
        if isinstance(value, tuple):
            _items(
                self,
                "image_size",
                "an integer > 0 or (height, width)",
                functools.partial(_number_at, integer=True, gt=0),
                length=2,
            )
            if value[0] == value[1]:  # one spelling per size: checkpoints compare equal
                object.__setattr__(self, "image_size", value[0])
        else:
            _number_at(where, value, integer=True, gt=0)

    def _check_geometry(self) -> None:
        """The student sees k x k patches of the input (and, after each split stage, k x k
        pieces of every patch's features); each piece must still be a whole number of cells at
        the backbone's stride 16, so each side must be a multiple of 16 * k^(1 + splits)."""
        step = 16 * self.k ** (1 + len(self.split_after_stages))
        sides = self.size
        if all(side % step == 0 for side in sides):
            return

        def near(side: int) -> list[int]:
            below = side // step * step
            return [below] if side % step == 0 else [n for n in (below, below + step) if n > 0]

        if isinstance(self.image_size, int):
            nearest = [str(n) for n in near(self.image_size)]
        else:
            nearest = [size_text((h, w)) for h in near(sides[0]) for w in near(sides[1])]
        raise AdpsError(
            f"{_where(self, 'image_size')}: {size_text(self.image_size)} must be divisible by "
            f"{step}{'' if isinstance(self.image_size, int) else ' on each side'} "
            f"(16 x k^(1+splits), k = {self.k}, "
            f"splits = {len(self.split_after_stages)}); nearest valid sizes: {', '.join(nearest)}"
        )


def size_text(size: int | tuple[int, int]) -> str:
    """``256`` or ``640x256`` (height x width), as the ``--image-size`` flag spells it."""
    return str(size) if isinstance(size, int) else f"{size[0]}x{size[1]}"


def parse_size(text: str) -> int | tuple[int, int]:
    """``"256"`` -> 256, ``"640x256"`` -> (640, 256) (height x width)."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise AdpsError(
            f"a size is N or HEIGHTxWIDTH in pixels (e.g. 256 or 640x256), got {text!r}"
        )
    values = [int(p) for p in parts]
    return values[0] if len(values) == 1 or values[0] == values[1] else (values[0], values[1])


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 300  # [P]
    batch_size: int = 32  # [P]
    lr: float = 1e-4  # [P] Adam
    lr_milestones: tuple[float, ...] = (0.8, 0.9)  # [P] x gamma at 80% and 90% of training
    lr_gamma: float = 0.2
    # "multistep" = the paper's (x lr_gamma at each milestone); "cosine" decays to
    # lr_final_share of the peak. Both follow a linear warm-up over the first `warmup` share.
    lr_schedule: LrSchedule = "multistep"
    warmup: float = 0.0
    lr_final_share: float = 0.0
    # Train for this many seconds instead of `epochs`: the schedule's progress is elapsed /
    # budget, so warm-up, decay and milestones scale with it (None = train `epochs`).
    time_budget: float | None = None
    lambda_seg: float = 1.0  # [P] lambda
    focal_gamma: float = 2.0  # OUR CHOICE (DRAEM FocalLoss default)
    distill_loss: Literal["cosine", "mse"] = "cosine"  # [P] cosine (Table VII)
    mse_margin: float = 1.0  # OUR CHOICE: hinge margin pushing MSE apart on anomalous positions
    # OUR CHOICE (DRAEM): an epoch draws as many samples as there are training images.
    steps_per_epoch: int | None = None
    seed: int = 0
    rotate_prob: float = 0.3  # DRAEM code: rotate the normal image by +-90 deg with prob 0.3
    texture_dir: str | None = None  # DTD-style folder; None = textures from the training images
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    checkpoint_every: int = 50  # epochs
    checkpoint_minutes: float = 10.0  # also after any epoch ending this long after the last save
    # Share of the normal training images held out to calibrate the image threshold at the end
    # of training (0 = no calibration; the pixel threshold 0.5 then decides).
    calibration_holdout: float = 0.0
    target_false_alarm_rate: float = 0.01
    # bf16 autocast (losses in float32) on CUDA and on CPUs with native bf16 (avx512_bf16/AMX);
    # float32 elsewhere, where bf16 would be emulated and slower
    amp: bool = True
    channels_last: bool = True
    # Training memory: a step's batch goes through the network in equal micro-batches of at most
    # this many image pixels (images x height x width) whose gradients add up to the batch's, so
    # activation memory stays bounded at any image size (BatchNorm sees the micro-batch). None:
    # 2**19 on a CPU (8 images of 256 x 256, 2 of 640 x 256), no split on a GPU.
    micro_batch_pixels: int | None = None

    _SECTION: ClassVar[str] = "train"

    @classmethod
    def from_recipe(cls, name: str = "paper", **changes: Any) -> TrainConfig:
        """The training settings of recipe ``name`` (:data:`RECIPES`), with ``changes`` on top."""
        return cls(**{**recipe(name).train, **changes})

    def __post_init__(self) -> None:
        _literals(self)
        _number(self, "epochs", integer=True, ge=1)
        _number(self, "batch_size", integer=True, ge=1)
        _number(self, "lr", gt=0)
        _items(
            self,
            "lr_milestones",
            "a tuple of increasing shares of training in (0, 1]",
            functools.partial(_number_at, gt=0, le=1),
            increasing=True,
        )
        _number(self, "lr_gamma", gt=0, le=1)
        _number(self, "warmup", ge=0, lt=1)
        _number(self, "lr_final_share", ge=0, le=1)
        _number(self, "time_budget", gt=0, optional=True)
        _number(self, "lambda_seg", ge=0)
        _number(self, "focal_gamma", ge=0)
        _number(self, "mse_margin", ge=0)
        _number(self, "steps_per_epoch", integer=True, ge=1, optional=True)
        _number(self, "seed", integer=True, ge=0)
        _number(self, "rotate_prob", ge=0, le=1)
        _text(self, "texture_dir", optional=True)
        _instance(self, "synthesis", SynthesisConfig, "a SynthesisConfig (in a file: a mapping)")
        _number(self, "checkpoint_every", integer=True, ge=1)
        _number(self, "checkpoint_minutes", ge=0)
        _number(self, "calibration_holdout", ge=0, lt=1)
        _number(self, "target_false_alarm_rate", gt=0, lt=1)
        _instance(self, "amp", bool, "true or false")
        _instance(self, "channels_last", bool, "true or false")
        _number(self, "micro_batch_pixels", integer=True, ge=1, optional=True)


@dataclass(frozen=True)
class Recipe:
    """A named starting point for training: the config fields it sets on top of the dataclass
    defaults (the paper's), and what it is, in words."""

    name: str
    description: str
    model: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "paper",
            "the paper's settings (Adam 1e-4, batch 32, x0.2 at 80% and 90%, "
            "full-resolution PSM, no memory prior)",
        ),
        Recipe(
            "fast",
            "batch 16, Adam 4e-4 with 5% warm-up and cosine decay, PSM at stride 2, "
            "late-fused memory prior",
            model={"psm_output_stride": 2, "prior": "memory"},
            train={
                "batch_size": 16,
                "lr": 4e-4,
                "lr_schedule": "cosine",
                "warmup": 0.05,
                "lr_final_share": 0.02,
            },
        ),
    )
}
# measured ahead of "paper" per image seen and per minute, and the prior ahead of the PSM alone
# on bottle and battery weld (docs/benchmarks/accuracy.md)
DEFAULT_RECIPE = "fast"


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise AdpsError(f"recipe {name!r} is not one of {sorted(RECIPES)}")
    return RECIPES[name]


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


T = TypeVar("T", bound="DataclassInstance")


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuilds a (nested) config from plain data (a checkpoint's dict, a YAML section).

    Unknown keys are an error so typos do not pass silently; lists become tuples (YAML has no
    tuples, and no config field is a list); a nested config may be given as a mapping. The
    values themselves are checked by the config's ``__post_init__``.
    """
    where = getattr(cls, "_SECTION", cls.__name__)
    if not isinstance(data, Mapping):
        raise AdpsError(f"{where}: expected a mapping of field: value, got {_shown(data)}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(data) - set(names)
    if unknown:
        raise AdpsError(f"{where}: unknown fields {sorted(map(str, unknown))}; known: {names}")
    defaults = cls()
    values = {}
    for key, value in data.items():
        default = getattr(defaults, key)
        if dataclasses.is_dataclass(default) and not isinstance(value, type(default)):
            value = from_dict(typing.cast("type[DataclassInstance]", type(default)), value)
        elif isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return cls(**values)


def load_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Reads a YAML config file into ``{"model": {...}, "train": {...}}``.

    Both sections are optional (an empty file gives two empty ones). Whatever is wrong with the
    file itself (unreadable, not YAML, not a mapping, an unknown section, a section that is not
    a mapping) is an ``AdpsError`` naming the file; the field values are left to
    :func:`from_dict` and the configs' checks.
    """
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AdpsError(f"cannot read the config file ({exc})", path) from exc
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise AdpsError(
            "expected a mapping with 'model:' and/or 'train:' sections, got "
            f"{type(loaded).__name__} {_shown(loaded)}",
            path,
        )
    unknown = set(loaded) - set(_FILE_SECTIONS)
    if unknown:
        raise AdpsError(
            f"unknown sections {sorted(map(str, unknown))}; allowed: 'model:' and 'train:'", path
        )
    sections = {}
    for name in _FILE_SECTIONS:
        section = loaded.get(name)
        section = {} if section is None else section  # "model:" with nothing under it
        if not isinstance(section, dict):
            raise AdpsError(
                f"section '{name}:' must be a mapping of field: value, got "
                f"{type(section).__name__} {_shown(section)}",
                path,
            )
        sections[name] = dict(section)
    return sections
