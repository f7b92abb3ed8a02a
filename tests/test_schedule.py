"""The learning-rate schedule over progress, time-budgeted training with a fake clock, the
duration estimate, bf16 detection, and bf16 maps of a trained model against float32."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adps.config import ModelConfig, TrainConfig
from adps.data.cache import load_tensor_stack
from adps.data.datasets import MVTecAD
from adps.data.procedural import make_demo_dataset
from adps.engine.checkpoint import Checkpoint
from adps.engine.device import cpu_has_bf16
from adps.engine.schedule import format_duration, lr_factor, parse_duration
from adps.engine.train import LAST, Trainer, train
from adps.errors import AdpsError

SIZE = 64
MODEL = ModelConfig(image_size=SIZE, k=4)
PRIOR_MODEL = ModelConfig(image_size=SIZE, k=4, prior="memory", memory_size=32)
GRID = np.linspace(0, 1, 1001)


# --------------------------------------------------------------------------- the schedule


def test_multistep_is_the_papers_schedule():
    config = TrainConfig()  # x0.2 at 80% and 90%
    expected = [1.0 if p < 0.8 else 0.2 if p < 0.9 else 0.04 for p in GRID]
    assert [lr_factor(p, config) for p in GRID] == pytest.approx(expected)


def test_cosine_warms_up_then_decays_monotonically_to_the_final_share():
    config = TrainConfig(lr_schedule="cosine", warmup=0.1, lr_final_share=0.05)
    values = np.array([lr_factor(p, config) for p in GRID])
    warm, decay = values[GRID < 0.1], values[GRID >= 0.1]
    assert np.all(np.diff(warm) > 0) and 0 < warm[0] < 0.02  # rising from (almost) zero
    assert np.all(np.diff(decay) <= 1e-12)  # then never rising again
    assert decay[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.05)
    # the cosine itself, by hand, half-way through the decay
    assert lr_factor(0.55, config) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(-1, config) == lr_factor(0, config) and lr_factor(2, config) == values[-1]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("20m", 1200), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("45", 45)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "20 minutes", "0m", "5x", "m20"])
def test_bad_durations_are_refused(bad):
    with pytest.raises(AdpsError, match="time budget"):
        parse_duration(bad)


def test_bf16_detection_reads_the_cpu_flags(tmp_path):
    with_flag, without = tmp_path / "a", tmp_path / "b"
    with_flag.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert cpu_has_bf16(str(with_flag)) and not cpu_has_bf16(str(without))
    assert not cpu_has_bf16(str(tmp_path / "missing"))


# --------------------------------------------------------------------------- time budgets


class FakeClock:
    """Wall-clock seconds that advance only when a training step runs."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(
        tmp_path_factory.mktemp("data"), size=SIZE, n_train=8, n_test_good=2, n_test_defect=2
    )


def budget_trainer(data, out, budget, clock, step_seconds=1.0, model=MODEL, **overrides):
    config = TrainConfig(
        **{
            "epochs": 1,
            "batch_size": 4,
            "steps_per_epoch": 3,
            "seed": 1,
            "time_budget": budget,
            "lr_schedule": "cosine",
            "warmup": 0.2,
            "checkpoint_every": 1,
            **overrides,
        }
    )
    trainer = Trainer(
        model,
        config,
        MVTecAD(data.parent, data.name, "train", size=SIZE),
        out,
        device="cpu",
        progress=False,
        clock=clock,
    )
    step, lrs = trainer.train_step, []

    def timed_step(index):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        clock.now += step_seconds
        return step(index)

    trainer.train_step = timed_step
    return trainer, lrs


def test_a_budget_ends_training_within_one_step_and_shapes_the_schedule(data, tmp_path):
    clock = FakeClock()
    trainer, lrs = budget_trainer(data, tmp_path, budget=7.5, clock=clock)
    result = trainer.fit()
    # steps start at elapsed 0, 1, ..., 7 (< 7.5); at 8 the budget is spent: 8 steps, although
    # `epochs` (1 epoch of 3 steps) would have stopped after 3
    assert result.steps == 8 and trainer.elapsed == pytest.approx(8.0)
    assert 0 <= trainer.elapsed - 7.5 < 1.0  # ends within one step of the budget
    assert result.epochs == 3 and len(result.history) == 3  # 3 + 3 + 2 steps
    expected = [1e-4 * lr_factor(t / 7.5, trainer.config) for t in range(8)]
    assert lrs == pytest.approx(expected)
    peak = int(np.argmax(lrs))
    assert np.all(np.diff(lrs[: peak + 1]) > 0) and np.all(np.diff(lrs[peak:]) < 0)
    ckpt = Checkpoint.load(result.checkpoint)
    assert ckpt.training.seconds == pytest.approx(8.0) and ckpt.training.steps == 8
    # what ran, not the `epochs` the budget overrode
    assert ckpt.training.epochs == ckpt.train_config.epochs == 3


def _slow_memory_fit(monkeypatch, clock, seconds):
    """The memory's fit takes ``seconds`` of the fake clock."""
    import adps.engine.train as train_module

    real = train_module.fit_prior

    def fit(*args, **kwargs):
        clock.now += seconds
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "fit_prior", fit)


def test_the_budget_counts_the_memory_fit(data, tmp_path, monkeypatch):
    """The budget is the wall time from the start to model.pt: a fit of 3 s leaves 4.5 s of a
    7.5 s budget to training, which then ends within one step of the budget, and the schedule
    spans the 4.5 s (its warm-up is not spent on the fit)."""
    clock = FakeClock()
    _slow_memory_fit(monkeypatch, clock, 3.0)
    start = clock.now
    trainer, lrs = budget_trainer(data, tmp_path, 7.5, clock, model=PRIOR_MODEL)
    result = trainer.fit()
    assert result.steps == 5  # training at 0, 1, ..., 4 < 4.5 s
    assert 0 <= (clock.now - start) - 7.5 < 1.0
    assert lrs == pytest.approx([1e-4 * lr_factor(t / 4.5, trainer.config) for t in range(5)])
    # the memory's fit is saved before training, so a resumed run does not redo it
    assert Checkpoint.load(tmp_path / LAST).state["memory.bank"].shape[0] > 0


def test_a_budget_spent_before_training_trains_one_step_and_says_why(
    data, tmp_path, monkeypatch, capsys
):
    clock = FakeClock()
    _slow_memory_fit(monkeypatch, clock, 10.0)
    trainer, _ = budget_trainer(data, tmp_path, 7.5, clock, model=PRIOR_MODEL)
    assert trainer.fit().steps == 1
    assert "of the 8s budget; training one step only" in capsys.readouterr().out


def test_a_budget_spent_as_an_epoch_begins_still_saves_the_end_state(data, tmp_path):
    """Steps at 0..5 s fill two epochs of 3; the budget of 6 s is spent as the third begins,
    before any of its steps: last.pt holds the end state although no epoch was due to save."""
    clock = FakeClock()
    trainer, _ = budget_trainer(data, tmp_path, 6.0, clock, checkpoint_every=10)
    result = trainer.fit()
    assert result.steps == 6 and result.epochs == 2
    last = Checkpoint.load(tmp_path / LAST)
    assert last.training.steps == 6 and last.training.epochs == 2
    assert last.training.seconds + last.resume["overhead"] + last.resume["reserve"] >= 6.0
    final = Checkpoint.load(result.checkpoint).state
    assert all(torch.equal(final[k], last.state[k]) for k in final)


def test_resume_keeps_the_budgets_accounting(data, tmp_path):
    straight, straight_lrs = budget_trainer(data, tmp_path / "a", 7.5, FakeClock())
    straight.fit()

    class Crash(Exception):
        pass

    def crash_after_two_epochs(epoch, loss):
        if epoch == 2:
            raise Crash

    first, first_lrs = budget_trainer(data, tmp_path / "b", 7.5, FakeClock())
    with pytest.raises(Crash):
        first.fit(crash_after_two_epochs)
    assert Checkpoint.load(tmp_path / "b" / LAST).training.seconds == pytest.approx(6.0)
    clock = FakeClock()
    clock.now = 5000.0  # a new session: the clock's origin means nothing, the account does
    resumed, resumed_lrs = budget_trainer(data, tmp_path / "b", 7.5, clock)
    assert resumed.resume()
    result = resumed.fit()
    assert result.steps == 2 and resumed.step == 8 and resumed.elapsed == pytest.approx(8.0)
    assert first_lrs + resumed_lrs == pytest.approx(straight_lrs)
    a = Checkpoint.load(tmp_path / "a" / "model.pt").state
    b = Checkpoint.load(tmp_path / "b" / "model.pt").state
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_duration_of_a_long_schedule_is_announced_with_a_budget_hint(data, tmp_path, capsys):
    clock = FakeClock()
    trainer, _ = budget_trainer(data, tmp_path, None, clock, step_seconds=60.0, epochs=30)
    trainer.announce_duration(3, 180.0)  # a minute a step; 90 steps are planned: 1.5 hours
    out = capsys.readouterr().out
    assert "30 epochs (90 steps) will take about 1h30m more" in out and "--time-budget" in out
    trainer.announce_duration(3, 3.0)  # 1 s a step: 90 s, no hint needed
    out = capsys.readouterr().out
    assert "about 1m30s more" in out and "--time-budget" not in out


# --------------------------------------------------------------------------- bf16


def test_bf16_maps_of_a_trained_model_stay_close_to_float32(data, tmp_path):
    """Stated tolerance of a bf16 forward (what training steps on a bf16 CPU compute): on a
    trained model whose PSM head is sharpened so the maps span (0, 1) (near-constant maps
    would hide any error), map values move by 0.03 on average and 0.12 at the 99th
    percentile, image scores by at most 0.02 (measured 0.021 / 0.093 / 0.010). Evaluation,
    prediction and export run in float32."""
    result = train(
        MODEL,
        TrainConfig(epochs=6, batch_size=4, steps_per_epoch=3, amp=False),
        MVTecAD(data.parent, data.name, "train", size=SIZE),
        tmp_path,
        device="cpu",
        progress=False,
    )
    model = Checkpoint.load(result.checkpoint).model()
    stack, _, _ = load_tensor_stack(
        MVTecAD(data.parent, data.name, "test", size=SIZE), progress=False
    )
    images = stack.float() / 255
    with torch.no_grad():
        logits = []
        hook = model.psm.head.register_forward_hook(lambda m, i, o: logits.append(o))
        model(images)
        hook.remove()
        diff = logits[0][:, 1] - logits[0][:, 0]
        scale = 3.0 / diff.std().item()
        model.psm.head.weight.mul_(scale)
        model.psm.head.bias.mul_(scale)
        model.psm.head.bias[1] -= scale * diff.mean().item()
        maps32, scores32 = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps16, scores16 = model(images)
    assert maps16.dtype == scores16.dtype == torch.float32  # map and score leave in float32
    assert maps32.std() > 0.2  # the maps spread over (0, 1)
    error = (maps16 - maps32).abs()
    assert error.mean() < 0.03 and error.quantile(0.99) < 0.12
    assert (scores16 - scores32).abs().max() < 0.02
