"""How fast the service's drift watch (adps.serve.drift) flips, and how often it flips without
cause, on simulated scores: normal scores, a threshold calibrated on 200 of them for a 1 %
false-alarm rate, on 20 for 5 % or on 10 for 10 % (the sizes `adps calibrate` accepts at
least), the default window (200) and alarm level (0.001), with the test against the first
200 judged images (the baseline) and without it, 20 seeds. Each seed runs 3,000 unshifted
images (false flips), then shifts the scores by one standard deviation; and, after 200
unshifted images (a full window), by half of one. Scores only, no model: about ten minutes.

    python benchmarks/bench_drift.py --out benchmarks/results/drift.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from adps.engine.calibrate import Thresholds, threshold_for_false_alarm_rate
from adps.serve.drift import DriftMonitor, DriftSettings, Reference


def images_to_flip(monitor: DriftMonitor, scores: np.ndarray) -> int | None:
    """How many of ``scores`` the monitor takes before it turns drifting (None: it does not)."""
    for i, score in enumerate(scores):
        if monitor.add([score]):
            return i + 1
    return None


CALIBRATIONS = ((200, 0.01), (20, 0.05), (10, 0.1))  # images, target false-alarm rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="write the result file here")
    args = parser.parse_args()
    rows = []
    for n_cal, target in CALIBRATIONS:
        for baseline in (DriftSettings().baseline, 0):
            settings = DriftSettings(baseline=baseline)
            false_flips, flips = 0, {1.0: [], 0.5: []}
            for seed in range(20):
                rng = np.random.default_rng(seed)
                calibration = threshold_for_false_alarm_rate(rng.normal(0, 1, n_cal), target)
                reference = Reference.of(Thresholds().calibrated(calibration))
                for shift, quiet in ((1.0, 3000), (0.5, 200)):
                    monitor = DriftMonitor(reference, settings)
                    false_flips += images_to_flip(monitor, rng.normal(0, 1, quiet)) is not None
                    if not monitor.drifting:
                        flips[shift].append(images_to_flip(monitor, rng.normal(shift, 1, 1000)))
            name = f"{n_cal} calibration images at {100 * target:g} %, baseline {baseline or 'off'}"
            print(f"{name}: {false_flips} false flips of 40 unshifted runs", flush=True)
            common = {
                "dataset": "simulated normal scores",
                "settings": asdict(settings) | {"calibration_images": n_cal, "target_far": target},
                "seed": "0-19",
                "machine": "2-core AMD EPYC CPU, no GPU",
                "command": "python " + " ".join(sys.argv),
                "source": f"benchmarks/bench_drift.py, run on {time.strftime('%Y-%m-%d')}",
            }
            unshifted = {"runs": 40, "false_flips": false_flips, "images": "20 x 3,000 + 20 x 200"}
            rows.append({"run": f"{name}: unshifted", "values": unshifted, **common})
            for shift, counts in flips.items():
                seen = [c for c in counts if c is not None]
                values = {
                    "runs": len(counts),
                    "flipped_runs": len(seen),
                    "images_to_flip_min": min(seen, default=None),
                    "images_to_flip_median": float(np.median(seen)) if seen else None,
                    "images_to_flip_max": max(seen, default=None),
                }
                print(f"  shift {shift:g} sd: {values}", flush=True)
                rows.append({"run": f"{name}: shift {shift:g} sd", "values": values, **common})
    if args.out:
        doc = {
            "benchmark": "drift",
            "title": "The service's drift watch on simulated scores",
            "kind": "single measurements, one a row (key = run)",
            "machine": rows[0]["machine"],
            "source": "benchmarks/bench_drift.py",
            "rows": rows,
        }
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
