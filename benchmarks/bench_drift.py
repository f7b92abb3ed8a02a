"""How fast the service's drift watch (adps.serve.drift) flips, and how often it flips without
cause, on simulated scores: normal scores, a threshold calibrated on 200 of them for a 1 %
false-alarm rate, the default window (200) and alarm level (0.001), 20 seeds. Each seed runs
3,000 unshifted images (false flips), then shifts the scores by one standard deviation; and,
after 200 unshifted images (a full window), by half of one. Scores only, no model: a minute.

    python benchmarks/bench_drift.py
"""

from __future__ import annotations

import numpy as np

from adps.engine.calibrate import Thresholds, threshold_for_false_alarm_rate
from adps.serve.drift import DriftMonitor, DriftSettings, Reference


def images_to_flip(monitor: DriftMonitor, scores: np.ndarray) -> int | None:
    """How many of ``scores`` the monitor takes before it turns drifting (None: it does not)."""
    for i, score in enumerate(scores):
        if monitor.add([score]):
            return i + 1
    return None


def main() -> None:
    false_flips, flips = 0, {1.0: [], 0.5: []}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        calibration = threshold_for_false_alarm_rate(rng.normal(0, 1, 200), 0.01)
        reference = Reference.of(Thresholds().calibrated(calibration))
        for shift, quiet in ((1.0, 3000), (0.5, 200)):
            monitor = DriftMonitor(reference, DriftSettings())
            false_flips += images_to_flip(monitor, rng.normal(0, 1, quiet)) is not None
            if not monitor.drifting:
                flips[shift].append(images_to_flip(monitor, rng.normal(shift, 1, 1000)))
    print(f"false flips: {false_flips} of 40 unshifted runs (20 of 3,000 images, 20 of 200)")
    for shift, counts in flips.items():
        seen = [c for c in counts if c is not None]
        print(
            f"shift {shift:g} sd: flipped in {len(seen)} of {len(counts)} runs, after "
            f"{min(seen)} to {max(seen)} images (median {np.median(seen):.0f})"
        )


if __name__ == "__main__":
    main()
