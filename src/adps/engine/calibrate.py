"""Image thresholds that need no defective samples (and the F1-optimal one when some exist).

Decision rule everywhere: an image is anomalous iff ``score >= threshold``.

False-alarm calibration: with n normal validation scores and a target rate r, a new normal image
scores above the k-th highest of them with probability k / (n + 1) (exchangeable scores: the split
conformal bound). The threshold lies above the (a+1)-th highest, a = floor(r * (n + 1)) - 1, the
lowest such score whose expected false-alarm rate on new normal images, (a + 1) / (n + 1), is at
most r; halfway to the next higher score (above the highest: by half the scores' median
spacing), so that round-off between backends (torch, ONNX, CPU, GPU) cannot flip a decision on
the calibration images themselves. (The empirical quantile, which lets floor(r * n) of the n be
flagged, is with 20 images and r = 5 % the second highest score, over which new normal parts
score 9.5 % of the time.) Two refusals protect users from thresholds that look valid but are
not: fewer than ceil(1 / r) normal images cannot measure a rate of r at all, and a threshold
that would flag every normal validation image (what an F1 search on normal-only data does
elsewhere) is never returned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from adps.errors import AdpsError
from adps.metrics import f1_max_threshold, image_metrics

REFERENCE_SIZE = 4096  # normal scores kept at most; a larger set keeps this many quantiles


def reference_scores(scores: np.ndarray) -> list[float]:
    """The normal scores a calibration keeps: all of them sorted, or :data:`REFERENCE_SIZE`
    evenly spaced quantiles (at (i + 0.5) / size) of more."""
    ranked = np.sort(np.asarray(scores, np.float64).ravel())
    if len(ranked) > REFERENCE_SIZE:
        ranked = np.quantile(ranked, (np.arange(REFERENCE_SIZE) + 0.5) / REFERENCE_SIZE)
    return [float(v) for v in ranked]


def expected_false_alarm_rate(flagged: int, n_normal: int) -> float:
    """The share of new normal images expected over a threshold that flags ``flagged`` of
    ``n_normal`` calibration images, at most: a new score exceeds the (flagged + 1)-th highest
    calibration score with this probability (the module's docstring)."""
    return (flagged + 1) / (n_normal + 1)


@dataclass
class Calibration:
    threshold: float
    method: str  # "false_alarm_rate" or "f1"
    n_normal: int
    normal_flagged: int  # normal validation images with score >= threshold
    target_false_alarm_rate: float | None = None
    n_defective: int = 0
    f1: float | None = None
    # the normal images' scores, sorted (reference_scores): the drift watch's reference
    normal_scores: list[float] | None = field(default=None, repr=False)

    @property
    def false_alarm_rate(self) -> float:
        """The share of the calibration images flagged."""
        return self.normal_flagged / self.n_normal

    @property
    def expected_false_alarm_rate(self) -> float:
        """:func:`expected_false_alarm_rate` of this calibration."""
        return expected_false_alarm_rate(self.normal_flagged, self.n_normal)

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "false_alarm_rate": self.false_alarm_rate,
            "expected_false_alarm_rate": self.expected_false_alarm_rate,
        }


@dataclass(frozen=True)
class Thresholds:
    """What decides, as stored in checkpoints and export metadata.

    A pixel is a defect pixel when its map value exceeds ``pixel``; an image is anomalous when
    its score reaches ``image``, or ``pixel`` while no image threshold has been calibrated (the
    paper's choice). ``calibration`` records how ``image`` was set (:meth:`Calibration.as_dict`),
    so a deployed model can say where its decision comes from.
    """

    pixel: float = 0.5
    image: float | None = None
    calibration: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("pixel", "image"):
            value = getattr(self, name)
            if value is None and name == "image":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise AdpsError(f"thresholds.{name}: must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.calibration is not None and not isinstance(self.calibration, dict):
            raise AdpsError(f"thresholds.calibration: must be a mapping, got {self.calibration!r}")

    @property
    def decision(self) -> float:
        """The image threshold in force: calibrated, else the pixel threshold."""
        return self.pixel if self.image is None else self.image

    @property
    def normal_scores(self) -> np.ndarray | None:
        """The calibration's normal scores, sorted (None: not kept, an older calibration)."""
        scores = (self.calibration or {}).get("normal_scores")
        return None if scores is None else np.sort(np.asarray(scores, np.float64))

    def summary(self) -> dict[str, Any]:
        """:meth:`to_dict` with the normal scores counted instead of listed (for reports)."""
        data = self.to_dict()
        cal = data.get("calibration")
        if cal is not None and cal.get("normal_scores") is not None:
            data["calibration"] = {**cal, "normal_scores": f"{len(cal['normal_scores'])} kept"}
        return data

    def rule(self) -> str:
        """The decision rule as a sentence fragment, for CLI output and reports."""
        if self.image is None:
            return f"score >= {self.pixel:g} (uncalibrated: the pixel threshold)"
        cal = self.calibration or {}
        if cal.get("method") != "false_alarm_rate" or cal.get("n_normal") is None:
            return f"score >= {self.image:.6g} (calibrated)"
        expected = expected_false_alarm_rate(cal["normal_flagged"], cal["n_normal"])
        return (
            f"score >= {self.image:.6g} (calibrated on {cal['n_normal']} normal images for a "
            f"false-alarm rate of {cal['target_false_alarm_rate']:g}; at most "
            f"{100 * expected:.2f}% of new normal images expected over it)"
        )

    def calibrated(self, calibration: Calibration) -> Thresholds:
        return replace(self, image=calibration.threshold, calibration=calibration.as_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Thresholds:
        """From a checkpoint or export; missing keys take their defaults, unknown ones refuse."""
        data = dict(data or {})
        unknown = set(data) - {"pixel", "image", "calibration"}
        if unknown:
            raise AdpsError(
                f"unknown threshold names {sorted(unknown)}; use 'pixel', 'image' and 'calibration'"
            )
        return cls(**data)


def _finite(scores, what: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(scores)):
        raise AdpsError(f"{what} contain NaN or infinite values")
    return scores


def check_calibration_size(n: int, target_rate: float) -> None:
    """Refuses a target rate outside (0, 1), and ``n`` normal images too few to measure it
    (fewer than ``ceil(1 / target_rate)``): what :func:`threshold_for_false_alarm_rate`
    checks first, for callers that want to refuse before they score anything."""
    if not 0 < target_rate < 1:
        raise AdpsError(f"the target false-alarm rate must lie in (0, 1), got {target_rate}")
    needed = math.ceil(1 / target_rate - 1e-9)
    if n < needed:
        raise AdpsError(
            f"{n} normal images cannot support a false-alarm rate of {target_rate:g}: at least "
            f"{needed} are needed (one false alarm among them is the smallest rate they can "
            f"measure); give more normal images or a larger target rate"
        )


def threshold_for_false_alarm_rate(normal_scores, target_rate: float = 0.01) -> Calibration:
    """Lowest threshold whose expected false-alarm rate on new normal images, as the module's
    docstring derives it from ``normal_scores``, is at most ``target_rate``."""
    if not 0 < target_rate < 1:
        raise AdpsError(f"the target false-alarm rate must lie in (0, 1), got {target_rate}")
    scores = _finite(normal_scores, "normal scores")
    n = len(scores)
    check_calibration_size(n, target_rate)
    allowed = math.floor(target_rate * (n + 1) + 1e-9) - 1  # >= 0: n >= ceil(1 / r) above
    ranked = np.sort(scores)[::-1]
    kept = ranked[allowed]  # the highest score that must not be flagged
    higher = ranked[ranked > kept]
    if len(higher):
        threshold = float((kept + higher.min()) / 2)
    else:  # nothing above: half the scores' typical spacing (the median gap between their
        # distinct values), not half the gap below the highest, which one outlying normal image
        # can make as wide as the defects' range
        gaps = np.diff(np.unique(scores))
        half = float(np.median(gaps)) / 2 if len(gaps) else 0.0
        threshold = float(max(kept + half, np.nextafter(kept, np.inf)))
    flagged = int((scores >= threshold).sum())
    if flagged >= n:  # cannot happen with the rule above; kept as the invariant users rely on
        raise AdpsError("calibration would flag every normal image; refusing")
    return Calibration(
        threshold,
        "false_alarm_rate",
        n,
        flagged,
        target_false_alarm_rate=target_rate,
        normal_scores=reference_scores(scores),
    )


def f1_optimal_threshold(labels, scores) -> Calibration:
    """Threshold maximising F1 on labelled images (needs both normal and defective ones).

    The F1-max point is :func:`adps.metrics.f1_max_threshold`'s (the lowest of tied optima, so it
    catches the most defects); the stored threshold sits halfway down to the next lower score,
    for the same robustness to backend round-off as the false-alarm rule.
    """
    scores = _finite(scores, "scores")
    labels = np.asarray(labels).astype(int).ravel()
    if len(scores) != len(labels):
        raise AdpsError(f"{len(labels)} labels but {len(scores)} scores")
    n_normal, n_defective = int((labels == 0).sum()), int((labels == 1).sum())
    if n_normal == 0 or n_defective == 0:
        raise AdpsError(
            "the F1-optimal threshold needs both normal and defective images "
            f"(got {n_normal} normal, {n_defective} defective)"
        )
    best = f1_max_threshold(labels, scores)
    lower = scores[scores < best]
    threshold = float((best + lower.max()) / 2 if len(lower) else best)
    flagged = int((scores[labels == 0] >= threshold).sum())
    if flagged == n_normal:
        raise AdpsError(
            f"the F1-optimal threshold ({threshold:.4g}) flags every normal image: the model "
            f"does not separate these images; use false-alarm calibration instead"
        )
    return Calibration(
        threshold,
        "f1",
        n_normal,
        flagged,
        n_defective=n_defective,
        f1=image_metrics(labels, scores)["image_f1max"],
        normal_scores=reference_scores(scores[labels == 0]),
    )
