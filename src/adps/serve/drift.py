"""Drift watch: do the images a service judges still score like those it was calibrated on,
and like the first ones it judged?

The watch keeps the scores of the last ``window`` images the service judged (default 200) and,
after every request, runs three tests of them: two against the model's calibration (stored in
the checkpoint, :attr:`adps.engine.calibrate.Thresholds.normal_scores`), one against the first
images the service judged with the model. Only scores are kept: no image leaves the machine,
nor even the process, for this.

1. **The scores of the images judged normal** (score under the image threshold) against the
   calibration's normal scores under the same threshold: a two-sample Kolmogorov-Smirnov test.
   Both samples are cut at the same threshold, so while nothing drifts they come from one
   distribution. The statistic is ``D = max |F_window(x) - F_reference(x)|`` (the two empirical
   distribution functions), its two-sided p-value ``scipy.stats.ks_2samp``'s (exact at the
   window's and the reference's sizes, about a millisecond).
2. **The share of images over the threshold** against what the calibration predicts: with
   ``k0`` of its ``n0`` normal images at or over the threshold, the number ``K`` of ``n`` new
   normal images over it is beta-binomial(n, k0 + 1, n0 - k0) (the count of new scores above
   the (k0 + 1)-th highest of n0 from the same continuous distribution, exactly; the
   threshold lies just above that score, so the test errs towards quiet). Unlike a binomial
   test at the target rate, it accounts for the calibration's own uncertainty: a threshold
   set on 100 images can flag 3 % of normal parts where 1 % was asked, and that is the
   calibration's limit, not drift. The p-value is ``P(K >= k)`` (``scipy.stats.betabinom``);
   the expected false-alarm rate is its mean, ``(k0 + 1) / (n0 + 1)``. Real defects count
   too: a line whose defect rate rises well above that rate trips it, which deserves a look
   as well.

3. **The window against the service's own start** (the baseline): the first ``baseline``
   images (default 200, ``--drift-baseline``) the service judges with a model are kept as a
   second reference, and once ``min_images`` more have come, the window's scores since then
   (all of them, none shared with the baseline) are tested against it, again by
   ``scipy.stats.ks_2samp``. A calibration is often small (10 images for a 10 % target, 20
   for 5 %), and two-sample tests against it can only be as sure as it is: in simulation
   (below) a shift of normal scores by one standard deviation tripped the two tests above
   within 1,000 images in 5 of 19 runs with 10 calibration images and 13 of 20 with 20; with
   this test the watch flipped in every run, after a median 71 and 75 images. It assumes that
   the line looked as calibrated when the model was loaded; if it did not, the first two
   tests still say so.

The service turns **drifting** when any p-value falls under the alarm level
(``--drift-alarm``, default 0.001), once the window holds ``min_images`` (20) images, and
turns back once all lie at or over ten times that level (so a window on the edge does not
flap between the two). Each test runs after every request over an overlapping window, so the
level is per check, not per day. In simulation (benchmarks/bench_drift.py: normal scores, a
calibration of 200 images at 1 %, window 200, level 0.001, 20 seeds) 3 of 40 unshifted runs
flipped without cause (20 of 3,000 images, 20 of 200: the level is per check, and a long
stream makes thousands); from a full window, a shift of the scores by one standard deviation
flipped it within 34 to 100 images (median 66.5), by half of one within 13 to 200 (median 92);
without the baseline test, 48 to 111 and 13 to 245. With 20 or 10 calibration images the
baseline test adds false flips: 2 and 3 of 40 runs, against 0 and 1 without it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from scipy import stats

from adps.engine.calibrate import Thresholds, expected_false_alarm_rate

KS_TEST = (
    "two-sample Kolmogorov-Smirnov test of the window's scores under the threshold against the "
    "calibration's normal scores under it (scipy.stats.ks_2samp)"
)
CLEAR_FACTOR = 10.0  # drifting ends once every p-value reaches this many times the alarm level
BASELINE_TEST = (
    "two-sample Kolmogorov-Smirnov test of the window's scores since the baseline against the "
    "first images the service judged with this model (scipy.stats.ks_2samp)"
)
SHARE_TEST = (
    "one-sided beta-binomial test: P(K >= over | window, k0 + 1, n0 - k0), k0 of the "
    "calibration's n0 normal images at or over the threshold"
)


class DriftSettingError(ValueError):
    """A drift setting out of its bounds: ``field`` names it, so each front end can say it in
    its own words (``adps serve``: the option ``--drift-window``)."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"drift {field}: {problem}")


@dataclass(frozen=True)
class DriftSettings:
    window: int = 200  # the last this many judged images are tested
    alarm: float = 0.001  # drifting while a test's p-value is under this
    min_images: int = 20  # no verdict before the window holds this many
    baseline: int = 200  # the first this many judged images: a second reference (0: none)

    def __post_init__(self) -> None:
        if self.window < 2:
            raise DriftSettingError("window", f"must hold at least 2 images, got {self.window}")
        if not 0 < self.alarm < 1:
            raise DriftSettingError("alarm", f"must lie in (0, 1), got {self.alarm}")
        if self.min_images < 1:
            raise DriftSettingError("min_images", f"must be at least 1, got {self.min_images}")
        if self.baseline != 0 and self.baseline < 2:
            raise DriftSettingError(
                "baseline", f"must be 0 (none) or at least 2 images, got {self.baseline}"
            )


@dataclass(frozen=True)
class Reference:
    """What the window is compared with, read from a model's thresholds."""

    threshold: float | None  # the image threshold in force (None: uncalibrated)
    normal_under: np.ndarray | None  # the calibration's normal scores under it, sorted
    n_normal: int | None  # calibration images
    flagged: int | None  # of them at or over the threshold
    target_rate: float | None  # the false-alarm rate the threshold was set for
    missing: str | None  # why the score test cannot run (None: it can)

    @classmethod
    def of(cls, thresholds: Thresholds) -> Reference:
        cal = thresholds.calibration or {}
        if thresholds.image is None:
            return cls(
                None,
                None,
                None,
                None,
                None,
                "the model has no calibrated image threshold (run adps calibrate)",
            )
        threshold = float(thresholds.image)
        n, flagged = cal.get("n_normal"), cal.get("normal_flagged")
        scores = thresholds.normal_scores
        under = None if scores is None else np.sort(scores[scores < threshold])
        missing = None
        if scores is None:
            missing = (
                "the model's calibration stored no normal scores (it was calibrated by an "
                "older adps); run adps calibrate again to give the drift watch its reference"
            )
        elif under is not None and len(under) == 0:
            missing = "no calibration score lies under the threshold"
        return cls(
            threshold,
            under if missing is None else None,
            None if n is None else int(n),
            None if flagged is None else int(flagged),
            cal.get("target_false_alarm_rate"),
            missing,
        )

    @property
    def expected_rate(self) -> float | None:
        """The beta-binomial mean: the share of new normal images expected over the threshold."""
        if self.n_normal is None or self.flagged is None:
            return None
        return expected_false_alarm_rate(self.flagged, self.n_normal)


class DriftMonitor:
    """The rolling window of one served model's scores and its verdict (thread-safe)."""

    def __init__(self, reference: Reference, settings: DriftSettings = DriftSettings()):
        self.reference, self.settings = reference, settings
        self.scores: deque[float] = deque(maxlen=settings.window)
        self.baseline: list[float] = []  # the first settings.baseline judged images' scores
        self.seen = 0  # images judged since the model was loaded
        self.drifting = False
        self.flips = 0
        self.since: str | None = None  # when the verdict last changed
        self.lock = threading.Lock()
        self.last: dict[str, Any] = self._evaluate()

    def add(self, scores: Iterable[float]) -> bool:
        """Adds judged images' scores; True when the verdict flipped with them."""
        with self.lock:
            for score in scores:
                self.scores.append(float(score))
                if len(self.baseline) < self.settings.baseline:
                    self.baseline.append(float(score))
                self.seen += 1
            self.last = self._evaluate()
            drifting = bool(self.last["drifting"])
            if drifting == self.drifting:
                return False
            self.drifting, self.flips = drifting, self.flips + 1
            self.since = datetime.now(UTC).isoformat(timespec="seconds")
            return True

    def report(self) -> dict[str, Any]:
        """The window, the three tests and the verdict, as JSON-able data."""
        with self.lock:
            return {**self.last, "flips": self.flips, "since": self.since, "seen": self.seen}

    def _evaluate(self) -> dict[str, Any]:
        ref, cfg = self.reference, self.settings
        window = np.fromiter(self.scores, np.float64, len(self.scores))
        n = len(window)
        over = None if ref.threshold is None else int((window >= ref.threshold).sum())
        share: dict[str, Any] = {
            "test": SHARE_TEST,
            "over": over,
            "share": None if over is None or n == 0 else over / n,
            "expected_false_alarm_rate": ref.expected_rate,
            "target_false_alarm_rate": ref.target_rate,
            "calibration_images": ref.n_normal,
            "calibration_flagged": ref.flagged,
            "p_value": None,
        }
        scores: dict[str, Any] = {
            "test": KS_TEST,
            "judged_normal": None if over is None else n - over,
            "reference_size": None if ref.normal_under is None else len(ref.normal_under),
            "statistic": None,
            "p_value": None,
            "window_median": None,
            "reference_median": None
            if ref.normal_under is None
            else float(np.median(ref.normal_under)),
        }
        ready = n >= cfg.min_images
        if ready and over is not None and ref.n_normal is not None and ref.flagged is not None:
            a, b = ref.flagged + 1, ref.n_normal - ref.flagged
            share["p_value"] = float(stats.betabinom.sf(over - 1, n, a, b))  # P(K >= over)
        if ready and ref.normal_under is not None and ref.threshold is not None:
            under = window[window < ref.threshold]
            if len(under):
                ks = stats.ks_2samp(under, ref.normal_under)
                scores.update(
                    statistic=float(ks.statistic),
                    p_value=float(ks.pvalue),
                    window_median=float(np.median(under)),
                )
        # the window's scores that came after the baseline was full: none of them is in it
        since = window[max(0, n - (self.seen - len(self.baseline))) :]
        full = cfg.baseline > 0 and len(self.baseline) == cfg.baseline
        baseline: dict[str, Any] = {
            "test": BASELINE_TEST,
            "size": cfg.baseline,
            "images": len(self.baseline),
            "window_images": len(since) if full else 0,
            "statistic": None,
            "p_value": None,
        }
        if full and len(since) >= cfg.min_images:
            ks = stats.ks_2samp(since, self.baseline)
            baseline.update(statistic=float(ks.statistic), p_value=float(ks.pvalue))
        tests = (scores["p_value"], share["p_value"], baseline["p_value"])
        p_values = [p for p in tests if p is not None]
        level = cfg.alarm * (CLEAR_FACTOR if self.drifting else 1.0)  # hysteresis
        drifting = ready and any(p < level for p in p_values)
        # without a calibration to compare with, the baseline test alone can say "ok"
        unreferenced = ref.missing is not None and baseline["p_value"] is None
        if drifting:
            status = "drifting"
        elif unreferenced and (ref.threshold is None or ready):
            status = "no reference"  # at most the share test runs, and it is quiet
        elif not ready:
            status = "filling"
        else:
            status = "ok"
        return {
            "status": status,
            "drifting": drifting,
            "reference": "calibration" if ref.missing is None else ref.missing,
            "alarm": cfg.alarm,
            "clear": cfg.alarm * CLEAR_FACTOR,
            "window": {"size": cfg.window, "images": n, "min_images": cfg.min_images},
            "threshold": ref.threshold,
            "scores_under_threshold": scores,
            "share_over_threshold": share,
            "since_baseline": baseline,
        }


__all__ = [
    "DriftMonitor",
    "DriftSettingError",
    "DriftSettings",
    "Reference",
]
