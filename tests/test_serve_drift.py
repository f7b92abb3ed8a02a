"""The drift watch (adps.serve.drift): both tests against scipy.stats, the verdict on shifted and
unshifted score streams, and the reference a calibration keeps (old checkpoints have none)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from adps.cli import main
from adps.engine.calibrate import (
    REFERENCE_SIZE,
    Thresholds,
    f1_optimal_threshold,
    threshold_for_false_alarm_rate,
)
from adps.engine.checkpoint import Checkpoint
from adps.serve.drift import (
    DriftMonitor,
    DriftSettingError,
    DriftSettings,
    Reference,
)

LEGACY = Path(__file__).parent / "data" / "checkpoints" / "v1.pt"


def test_the_score_test_sees_the_window_under_the_threshold():
    """The statistic by brute force: the largest gap between the two empirical distribution
    functions of the window's scores under the threshold and the calibration's under it."""
    rng = np.random.default_rng(5)
    thresholds = _calibrated(rng)
    monitor = DriftMonitor(Reference.of(thresholds), DriftSettings(window=60))
    scores = np.r_[rng.normal(0.5, 1, 60), [thresholds.image + 1.0] * 5]
    monitor.add(scores)
    t, ref = thresholds.image, np.asarray(thresholds.normal_scores)
    window = scores[-60:]
    under, base = window[window < t], ref[ref < t]
    grid = np.r_[under, base]
    d = max(abs((under <= x).mean() - (base <= x).mean()) for x in grid)
    ks = monitor.report()["scores_under_threshold"]
    assert ks["judged_normal"] == len(under) <= 55  # the 5 over the threshold are left out
    assert ks["statistic"] == pytest.approx(d, abs=1e-12)


def _calibrated(rng: np.random.Generator, n: int = 200, rate: float = 0.01) -> Thresholds:
    return Thresholds().calibrated(threshold_for_false_alarm_rate(rng.normal(0, 1, n), rate))


def test_the_monitor_tests_its_window_exactly_as_scipy_does():
    rng = np.random.default_rng(0)
    thresholds = _calibrated(rng)
    monitor = DriftMonitor(Reference.of(thresholds), DriftSettings(window=150))
    scores = rng.normal(0.3, 1.1, 400)
    monitor.add(scores)
    report = monitor.report()
    window = scores[-150:]
    t = thresholds.image
    ref = thresholds.normal_scores
    under = window[window < t]
    want = stats.ks_2samp(under, ref[ref < t])
    ks = report["scores_under_threshold"]
    assert ks["statistic"] == pytest.approx(want.statistic, abs=1e-12)
    assert ks["p_value"] == pytest.approx(want.pvalue)
    over = int((window >= t).sum())
    cal = thresholds.calibration
    k0, n0 = cal["normal_flagged"], cal["n_normal"]
    share = report["share_over_threshold"]
    assert share["over"] == over and share["share"] == over / 150
    assert share["p_value"] == pytest.approx(stats.betabinom.sf(over - 1, 150, k0 + 1, n0 - k0))
    assert share["expected_false_alarm_rate"] == (k0 + 1) / (n0 + 1)
    assert report["window"] == {"size": 150, "images": 150, "min_images": 20}
    assert report["seen"] == 400


def test_drift_flips_on_a_shifted_stream_and_stays_quiet_on_an_unshifted_one():
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(Reference.of(_calibrated(rng)), DriftSettings(window=200, alarm=1e-3))
    statuses = []
    for score in rng.normal(0, 1, 3000):  # the calibration's own distribution: quiet
        assert not monitor.add([score])
        statuses.append(monitor.report()["status"])
    assert statuses[:19] == ["filling"] * 19 and set(statuses[19:]) == {"ok"}
    flipped_at = None
    for i, score in enumerate(rng.normal(1.0, 1, 200)):  # shifted by one standard deviation
        if monitor.add([score]):
            flipped_at = i + 1
            break
    # from a full window: 34 to 100 images over 18 seeds (benchmarks/bench_drift.py)
    assert flipped_at is not None and flipped_at <= 150
    report = monitor.report()
    assert report["drifting"] and report["status"] == "drifting" and report["flips"] == 1
    assert report["since"] is not None
    for score in rng.normal(0, 1, 400):  # the line is back: so is the verdict
        monitor.add([score])
    # while the window still holds shifted scores it may flip back once before it clears
    # (in 5 to 6 of 40 seeds); every flip to drifting has its flip back
    report = monitor.report()
    assert not report["drifting"] and report["flips"] in (2, 4)


def test_the_baseline_test_is_scipys_on_the_window_since_the_first_images():
    """The baseline is the first ``baseline`` scores judged; the window's scores after it (none
    of them in it) are tested against it, as scipy.stats.ks_2samp does, once ``min_images``
    of them have come."""
    rng = np.random.default_rng(6)
    monitor = DriftMonitor(Reference.of(_calibrated(rng)), DriftSettings(window=50, baseline=40))
    stream = rng.normal(0.2, 1, 200)
    monitor.add(stream[:40])
    report = monitor.report()["since_baseline"]
    assert report["images"] == 40 and report["window_images"] == 0 and report["p_value"] is None
    monitor.add(stream[40:59])  # 19 since the baseline: fewer than min_images (20)
    assert monitor.report()["since_baseline"]["p_value"] is None
    for seen in (60, 85, 200):  # 20, 45, then the window's last 50 of the 160 since
        monitor.add(stream[monitor.seen : seen])
        since = stream[40:seen][-50:]
        want = stats.ks_2samp(since, stream[:40])
        report = monitor.report()["since_baseline"]
        assert report["window_images"] == len(since) == min(seen - 40, 50)
        assert report["statistic"] == pytest.approx(want.statistic, abs=1e-12)
        assert report["p_value"] == pytest.approx(want.pvalue)


def test_the_baseline_sees_a_shift_that_a_small_calibration_cannot():
    """Ten calibration images (a 10 % target), 100 unshifted images, then scores shifted by one
    standard deviation: 100 images later the calibration's tests alone (baseline 0) say
    drifting in at most one of four seeds; with the first 100 images as the baseline, the
    watch says it in all four, on the baseline's p-value (bench_drift.py measures more)."""
    drifting = {0: 0, 100: 0}
    for seed in range(4):
        rng = np.random.default_rng(seed)
        reference = Reference.of(_calibrated(rng, n=10, rate=0.1))
        stream = np.r_[rng.normal(0, 1, 100), rng.normal(1.0, 1, 100)]
        for baseline in drifting:
            monitor = DriftMonitor(reference, DriftSettings(baseline=baseline))
            monitor.add(stream)
            report = monitor.report()
            drifting[baseline] += report["drifting"]
            if baseline:
                assert report["since_baseline"]["p_value"] < report["alarm"]
    assert drifting[0] <= 1 and drifting[100] == 4


def test_a_rising_share_over_the_threshold_alone_trips_it():
    rng = np.random.default_rng(2)
    thresholds = _calibrated(rng)
    monitor = DriftMonitor(Reference.of(thresholds), DriftSettings(window=100))
    normal = rng.normal(0, 1, 100)
    under = normal[normal < thresholds.image][:80]
    monitor.add(under)
    monitor.add([thresholds.image + 1.0] * 20)  # 20 % over a threshold that flags about 1 %
    report = monitor.report()
    assert report["drifting"] and report["share_over_threshold"]["p_value"] < 1e-6


def test_calibrations_keep_their_normal_scores_sorted_and_bounded(tmp_path):
    rng = np.random.default_rng(4)
    scores = rng.normal(0, 1, 300)
    cal = threshold_for_false_alarm_rate(scores, 0.01)
    assert cal.normal_scores == sorted(scores.tolist())
    big = rng.normal(0, 1, 3 * REFERENCE_SIZE)
    kept = threshold_for_false_alarm_rate(big, 0.01).normal_scores
    assert kept is not None and len(kept) == REFERENCE_SIZE
    assert kept == pytest.approx(
        np.quantile(big, (np.arange(REFERENCE_SIZE) + 0.5) / REFERENCE_SIZE).tolist()
    )
    f1 = f1_optimal_threshold(np.r_[np.zeros(50), np.ones(10)], np.r_[scores[:50], 3 + scores[:10]])
    assert f1.normal_scores == sorted(scores[:50].tolist())
    # and they travel in the checkpoint
    ckpt = Checkpoint.load(LEGACY).replace(thresholds=Thresholds().calibrated(cal))
    again = Checkpoint.load(ckpt.save(tmp_path / "model.pt")).thresholds
    assert np.array_equal(again.normal_scores, np.sort(scores))
    summary = again.summary()["calibration"]
    assert summary["normal_scores"] == "300 kept" and summary["n_normal"] == 300


def test_an_old_checkpoint_loads_and_the_watch_says_it_has_no_reference():
    thresholds = Checkpoint.load(LEGACY).thresholds
    assert thresholds.normal_scores is None
    reference = Reference.of(thresholds)
    assert "stored no normal scores" in (reference.missing or "")
    assert "adps calibrate" in (reference.missing or "")
    monitor = DriftMonitor(reference)
    monitor.add([thresholds.image - 0.01] * 30)
    report = monitor.report()
    assert report["status"] == "no reference" and not report["drifting"]
    assert report["reference"] == reference.missing
    assert report["scores_under_threshold"]["p_value"] is None
    # the share test still runs: it needs only the calibration's counts
    assert report["share_over_threshold"]["p_value"] == 1.0
    uncalibrated = DriftMonitor(Reference.of(Thresholds()))
    uncalibrated.add([0.1] * 30)
    assert uncalibrated.report()["status"] == "no reference"
    assert "no calibrated image threshold" in uncalibrated.report()["reference"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("alarm", 0), ("alarm", 1.5), ("window", 1), ("min_images", 0), ("baseline", 1)],
)
def test_settings_are_checked(field, value):
    with pytest.raises(DriftSettingError, match=f"^drift {field}: must .*got {value}$") as caught:
        DriftSettings(**{field: value})
    assert caught.value.field == field  # what adps serve names its option by
    assert isinstance(caught.value, ValueError)
    DriftSettings(baseline=0)  # no baseline: allowed


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--drift-baseline", "1", "--drift-baseline must be 0 (none) or at least 2 images, got 1"),
        ("--drift-baseline", "-5", "--drift-baseline must be 0 (none) or at least 2 images, got"),
        ("--drift-alarm", "0", "--drift-alarm must lie in (0, 1), got 0.0"),
        ("--drift-window", "1", "--drift-window must hold at least 2 images, got 1"),
    ],
)
def test_adps_serve_refuses_bad_drift_settings_before_loading_a_model(
    option, value, message, capsys
):
    assert main(["serve", "--model", "missing.pt", option, value]) == 2
    assert message in capsys.readouterr().err
