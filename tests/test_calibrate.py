"""Thresholds (adps.engine.calibrate): the false-alarm and F1 rules against brute force, their
refusals, and calibration through `adps calibrate` and at the end of training."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from adps.engine.calibrate import f1_optimal_threshold, threshold_for_false_alarm_rate
from adps.errors import AdpsError


def test_false_alarm_threshold_by_hand():
    scores = np.arange(100, dtype=float)  # 0..99
    cal = threshold_for_false_alarm_rate(scores, 0.01)
    # a new score lies over the highest of 100 with probability 1/101 <= 1 %, over the second
    # highest with 2/101 > 1 %: nothing may be flagged; half the scores' spacing above 99
    assert cal.threshold == 99.5
    assert cal.normal_flagged == 0 and cal.false_alarm_rate == 0
    cal = threshold_for_false_alarm_rate(scores, 0.05)  # 5/101 <= 5 % < 6/101: 4 flagged
    assert cal.normal_flagged == 4 and (scores >= cal.threshold).sum() == 4
    assert cal.threshold == 95.5


def test_ties_never_push_the_rate_over_the_target():
    scores = np.array([0.1] * 50 + [0.9] * 50)
    cal = threshold_for_false_alarm_rate(scores, 0.02)
    assert cal.normal_flagged == 0  # flagging any 0.9 would flag all fifty of them
    assert cal.threshold == pytest.approx(0.9 + 0.4)  # half the one gap between distinct values


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=10, max_size=300), st.sampled_from([0.01, 0.05, 0.1]))
def test_false_alarm_rule_against_brute_force(values, rate):
    scores = np.array(values, dtype=float) / 7
    n = len(scores)
    if n < np.ceil(1 / rate):
        with pytest.raises(AdpsError, match="cannot support"):
            threshold_for_false_alarm_rate(scores, rate)
        return
    cal = threshold_for_false_alarm_rate(scores, rate)
    flagged = (scores >= cal.threshold).sum()
    # the expected rate on new normal images: over the (flagged + 1)-th highest score
    assert (flagged + 1) / (n + 1) <= rate and flagged < n
    # the lowest such threshold up to the half gap: every score below it breaks the rate
    # if it were the threshold, and no score lies between the threshold and the kept score
    for candidate in np.unique(scores):
        if candidate < cal.threshold:
            assert ((scores >= candidate).sum() + 1) / (n + 1) > rate
    below = scores[scores < cal.threshold].max()
    above = scores[scores >= cal.threshold]
    if len(above):
        assert cal.threshold == pytest.approx((below + above.min()) / 2)
    else:  # above the highest by half the median gap between distinct scores
        distinct = np.unique(scores)
        half = np.median(np.diff(distinct)) / 2 if len(distinct) > 1 else 0
        assert cal.threshold == pytest.approx(max(distinct[-1] + half, np.nextafter(below, 1)))


def test_one_outlying_normal_image_does_not_lift_the_threshold_far_above_it():
    # 20 images for 5 %: above the highest; one outlier at 100 among 0..18, spaced 1 apart
    scores = np.r_[np.arange(19.0), 100.0]
    cal = threshold_for_false_alarm_rate(scores, 0.05)
    assert cal.normal_flagged == 0 and cal.threshold == 100.5  # not 100 + 81 / 2


@pytest.mark.parametrize(("n", "rate"), [(100, 0.05), (20, 0.05), (10, 0.1), (300, 0.01)])
def test_new_normal_images_are_flagged_at_most_at_the_target_rate(n, rate):
    """The promise, checked by simulation against scipy: over many calibrations on n normal
    scores (standard normal), the share of new normal parts over the threshold (norm.sf) is
    at most the target on average, and lies between the bounds of the two scores around it."""
    from scipy import stats

    rng = np.random.default_rng(7)
    reps = 3000
    samples = rng.standard_normal((reps, n))
    cals = [threshold_for_false_alarm_rate(s, rate) for s in samples]
    true_rate = stats.norm.sf([c.threshold for c in cals])
    k = cals[0].normal_flagged  # continuous scores: the same count every time
    assert all(c.normal_flagged == k for c in cals)
    error = 4 * true_rate.std() / np.sqrt(reps)
    expected = cals[0].expected_false_alarm_rate  # what calibrate and update print
    assert k / (n + 1) - error <= true_rate.mean() <= expected + error
    assert expected == (k + 1) / (n + 1) <= rate < (k + 2) / (n + 1)  # the lowest such score


def test_refuses_when_data_cannot_support_the_rate():
    with pytest.raises(AdpsError, match="at least 100"):
        threshold_for_false_alarm_rate(np.random.default_rng(0).random(40), 0.01)
    with pytest.raises(AdpsError, match="NaN"):
        threshold_for_false_alarm_rate(np.array([np.nan] * 200), 0.01)
    with pytest.raises(AdpsError, match="target"):
        threshold_for_false_alarm_rate(np.ones(200), 0.0)


def test_never_flags_every_normal_image():
    cal = threshold_for_false_alarm_rate(np.full(200, 0.3), 0.5)  # all tied
    assert cal.normal_flagged == 0 and cal.threshold > 0.3


def test_f1_threshold_matches_brute_force():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(60), np.ones(30)]
    scores = np.r_[rng.normal(0, 1, 60), rng.normal(1.5, 1, 30)]
    cal = f1_optimal_threshold(labels, scores)
    best = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert cal.f1 == pytest.approx(best)
    assert f1_score(labels, scores >= cal.threshold) == pytest.approx(best)
    assert cal.n_defective == 30 and cal.n_normal == 60


def test_f1_refuses_single_class_and_useless_models():
    with pytest.raises(AdpsError, match="both normal and defective"):
        f1_optimal_threshold(np.zeros(5), np.ones(5))
    # defective images score below every normal one: F1 is best when flagging everything
    with pytest.raises(AdpsError, match="flags every normal"):
        f1_optimal_threshold(np.r_[np.zeros(5), np.ones(5)], np.r_[np.ones(5), np.zeros(5)])


@pytest.mark.integration
@pytest.mark.slow
def test_calibrate_command_stores_threshold(tmp_path, capsys):
    """End to end: a tiny model, 100 normal images from the procedural generator."""
    import torch

    from adps.cli import main
    from adps.config import ModelConfig, TrainConfig
    from adps.data.datasets import MVTecAD
    from adps.data.procedural import make_demo_dataset
    from adps.engine.checkpoint import Checkpoint
    from adps.engine.train import train

    category = make_demo_dataset(
        tmp_path / "d", size=64, n_train=108, n_test_good=2, n_test_defect=12
    )
    train_set = MVTecAD(category.parent, category.name, "train", size=64)
    train_set.records = train_set.records[:8]  # train on 8, calibrate on the other 100
    result = train(
        ModelConfig(image_size=64, k=4),
        TrainConfig(epochs=1, batch_size=4, steps_per_epoch=1),
        train_set,
        tmp_path / "run",
        device="cpu",
        progress=False,
    )
    holdout = tmp_path / "holdout"
    holdout.mkdir()
    for path in sorted((category / "train" / "good").glob("*.png"))[8:]:
        (holdout / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "calibrated.pt"
    code = main(
        [
            "calibrate",
            "--model",
            str(result.checkpoint),
            "--normal-dir",
            str(holdout),
            "--defect-dir",
            str(category / "test"),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    thresholds = Checkpoint.load(out).thresholds.to_dict()
    assert thresholds["calibration"]["n_normal"] == 100
    assert thresholds["calibration"]["normal_flagged"] <= 1
    assert "F1-optimal" in capsys.readouterr().out
    import adps

    predictor = adps.load(out, device="cpu")
    scores = np.array([p.score for p in predictor(sorted(holdout.glob("*.png")))])
    assert (scores >= thresholds["image"]).sum() == thresholds["calibration"]["normal_flagged"]
    # too few images for 1%: refused with exit code 2, checkpoint untouched
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(holdout.glob("*.png"))[:20]:
        (few / path.name).write_bytes(path.read_bytes())
    before = result.checkpoint.read_bytes()
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(result.checkpoint),
                "--normal-dir",
                str(few),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "cannot support" in capsys.readouterr().err
    assert result.checkpoint.read_bytes() == before
    assert torch.is_tensor(Checkpoint.load(result.checkpoint).state["psm.head.weight"])


def test_calibration_at_the_end_of_training(tmp_path):
    import torch

    from adps.config import ModelConfig, TrainConfig
    from adps.data.cache import load_tensor_stack
    from adps.data.datasets import MVTecAD
    from adps.data.procedural import make_demo_dataset
    from adps.engine.checkpoint import Checkpoint
    from adps.engine.inference import TorchForward, infer
    from adps.engine.train import Trainer, holdout_indices

    category = make_demo_dataset(
        tmp_path / "d", size=64, n_train=24, n_test_good=1, n_test_defect=1
    )
    dataset = MVTecAD(category.parent, category.name, "train", size=64)
    config = TrainConfig(
        epochs=1,
        batch_size=4,
        steps_per_epoch=1,
        calibration_holdout=0.5,
        target_false_alarm_rate=0.1,
    )
    trainer = Trainer(
        ModelConfig(image_size=64, k=4),
        config,
        dataset,
        tmp_path / "run",
        device="cpu",
        progress=False,
    )
    result = trainer.fit()
    ckpt = Checkpoint.load(result.checkpoint)
    thresholds = ckpt.thresholds.to_dict()
    assert thresholds["calibration"]["n_normal"] == 12
    # recompute independently: the held-out images, the saved model, the documented rule
    images, _, _ = load_tensor_stack(dataset, progress=False)
    kept, held = holdout_indices(len(images), config)
    train_part, held_out = images[kept], images[held]
    assert len(train_part) == 12 and len(held_out) == 12
    assert not any(torch.equal(a, b) for a in train_part for b in held_out)
    cpu = torch.device("cpu")
    _, scores, _ = infer(TorchForward(trainer.model, cpu), held_out, cpu)  # as calibrated
    assert torch.equal(
        trainer.model.state_dict()["psm.head.weight"], ckpt.model().state_dict()["psm.head.weight"]
    )
    expected = threshold_for_false_alarm_rate(scores.numpy(), 0.1)
    assert thresholds["image"] == pytest.approx(expected.threshold, rel=1e-5)
    assert (scores.numpy() >= thresholds["image"]).sum() <= 1


def test_training_refuses_a_holdout_too_small_before_training(tmp_path):
    from adps.config import ModelConfig, TrainConfig
    from adps.data.datasets import MVTecAD
    from adps.data.procedural import make_demo_dataset
    from adps.engine.train import train

    category = make_demo_dataset(
        tmp_path / "d", size=64, n_train=20, n_test_good=1, n_test_defect=1
    )
    with pytest.raises(AdpsError, match="needs at least 100"):
        train(
            ModelConfig(image_size=64, k=4),
            TrainConfig(epochs=1, calibration_holdout=0.2, target_false_alarm_rate=0.01),
            MVTecAD(category.parent, category.name, "train", size=64),
            tmp_path / "run",
            device="cpu",
            progress=False,
        )
    assert not (tmp_path / "run").exists()


def test_the_rule_states_what_the_calibration_promises():
    from adps.engine.calibrate import Thresholds

    cal = threshold_for_false_alarm_rate(np.arange(20.0), 0.05)
    rule = Thresholds().calibrated(cal).rule()
    assert rule.startswith("score >= 19.5 (calibrated on 20 normal images")
    assert "at most 4.76% of new normal images" in rule  # 1 / 21
    f1 = f1_optimal_threshold(np.r_[np.zeros(20), np.ones(5)], np.r_[np.arange(20.0), [30.0] * 5])
    assert Thresholds().calibrated(f1).rule() == "score >= 24.5 (calibrated)"
