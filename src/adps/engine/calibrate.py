"""Image thresholds that need no defective samples (and the F1-optimal one when some exist).

Decision rule everywhere: an image is anomalous iff ``score >= threshold``.

False-alarm calibration: with n normal validation scores and a target rate r, at most
a = floor(r * n) of them may be flagged, so the threshold lies above the (a+1)-th highest normal
score: halfway to the next higher score, so that round-off between backends (torch, ONNX, CPU,
GPU) cannot flip a decision on the calibration images themselves. Two refusals protect users from thresholds that look valid but are not:
fewer than ceil(1 / r) normal images cannot measure a rate of r at all, and a threshold that
would flag every normal validation image (what an F1 search on normal-only data does
elsewhere) is never returned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import precision_recall_curve

from adps.errors import AdpsError


@dataclass
class Calibration:
    threshold: float
    method: str  # "false_alarm_rate" or "f1"
    n_normal: int
    normal_flagged: int  # normal validation images with score >= threshold
    target_false_alarm_rate: float | None = None
    n_defective: int = 0
    f1: float | None = None

    @property
    def false_alarm_rate(self) -> float:
        return self.normal_flagged / self.n_normal

    def as_dict(self) -> dict:
        return {**asdict(self), "false_alarm_rate": self.false_alarm_rate}


def _finite(scores, what: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(scores)):
        raise AdpsError(f"{what} contain NaN or infinite values")
    return scores


def threshold_for_false_alarm_rate(normal_scores, target_rate: float = 0.01) -> Calibration:
    """Lowest threshold whose false-alarm rate on ``normal_scores`` is at most ``target_rate``."""
    if not 0 < target_rate < 1:
        raise AdpsError(f"the target false-alarm rate must lie in (0, 1), got {target_rate}")
    scores = _finite(normal_scores, "normal scores")
    n = len(scores)
    needed = math.ceil(1 / target_rate - 1e-9)
    if n < needed:
        raise AdpsError(
            f"{n} normal images cannot support a false-alarm rate of {target_rate:g}: at least "
            f"{needed} are needed (one false alarm among them is the smallest rate they can "
            f"measure); give more normal images or a larger target rate")
    allowed = math.floor(target_rate * n + 1e-9)
    ranked = np.sort(scores)[::-1]
    kept = ranked[allowed]  # the highest score that must not be flagged
    higher = ranked[ranked > kept]
    if len(higher):
        threshold = float((kept + higher.min()) / 2)
    else:  # nothing above: the same half gap, mirrored from the next lower score
        lower = ranked[ranked < kept]
        gap = (kept - lower.max()) / 2 if len(lower) else 0.0
        threshold = float(max(kept + gap, np.nextafter(kept, np.inf)))
    flagged = int((scores >= threshold).sum())
    if flagged >= n:  # cannot happen with the rule above; kept as the invariant users rely on
        raise AdpsError("calibration would flag every normal image; refusing")
    return Calibration(threshold, "false_alarm_rate", n, flagged, target_false_alarm_rate=target_rate)


def f1_optimal_threshold(scores, labels) -> Calibration:
    """Threshold maximising F1 on labelled images (needs both normal and defective ones)."""
    scores = _finite(scores, "scores")
    labels = np.asarray(labels).astype(int).ravel()
    if len(scores) != len(labels):
        raise AdpsError(f"{len(scores)} scores but {len(labels)} labels")
    n_normal, n_defective = int((labels == 0).sum()), int((labels == 1).sum())
    if n_normal == 0 or n_defective == 0:
        raise AdpsError("the F1-optimal threshold needs both normal and defective images "
                        f"(got {n_normal} normal, {n_defective} defective)")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall,
                                                                              1e-300), 0.0)[:-1]
    best = int(np.argmax(f1))
    lower = scores[scores < thresholds[best]]  # halfway down to the next score, as above
    threshold = float((thresholds[best] + lower.max()) / 2 if len(lower) else thresholds[best])
    flagged = int((scores[labels == 0] >= threshold).sum())
    if flagged == n_normal:
        raise AdpsError(
            f"the F1-optimal threshold ({threshold:.4g}) flags every normal image: the model "
            f"does not separate these images; use false-alarm calibration instead")
    return Calibration(threshold, "f1", n_normal, flagged, n_defective=n_defective,
                       f1=float(f1[best]))
