"""Training (adps.engine.train) and evaluation (adps.engine.evaluate) end to end: checkpoints and
exact resume, the loss and metrics files, DDP on two processes, and the CLI commands (`train`,
`info`, `demo`, help and user errors)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from adps.config import ModelConfig, TrainConfig
from adps.data.cache import load_tensor_stack
from adps.data.datasets import MVTecAD
from adps.data.procedural import make_demo_dataset
from adps.engine.calibrate import threshold_for_false_alarm_rate
from adps.engine.checkpoint import Checkpoint
from adps.engine.device import cpu_has_bf16
from adps.engine.evaluate import evaluate
from adps.engine.inference import TorchForward, infer
from adps.engine.teacher_look import teacher_norm_targets
from adps.engine.train import LAST, Trainer, holdout_indices, micro_batches, train
from adps.errors import AdpsError
from adps.metrics import METRIC_KEYS

SIZE = 64
MODEL = ModelConfig(image_size=SIZE, k=4)
CPU = torch.device("cpu")


def maps_and_scores(model, images):
    maps, scores, _ = infer(TorchForward(model, CPU), images, CPU)
    return maps, scores


def tiny_train(**overrides) -> TrainConfig:
    values = {"epochs": 3, "batch_size": 4, "steps_per_epoch": 2, "checkpoint_every": 1, "seed": 3}
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    category = make_demo_dataset(root, size=SIZE, n_train=8, n_test_good=3, n_test_defect=3)
    return category


def datasets(category, split="train"):
    return MVTecAD(category.parent, category.name, split, size=SIZE)


def test_checkpoint_round_trip_gives_identical_maps(data, tmp_path):
    result = train(
        MODEL, tiny_train(epochs=1), datasets(data), tmp_path, device="cpu", progress=False
    )
    ckpt = Checkpoint.load(result.checkpoint)
    assert ckpt.model_config.image_size == SIZE
    assert ckpt.preprocess["mean"] == [0.5, 0.5, 0.5]
    assert ckpt.train_config.lr == 1e-4
    first = ckpt.model()
    second = Checkpoint.load(result.checkpoint).model()
    images = torch.rand(3, 3, SIZE, SIZE)
    maps1, scores1 = maps_and_scores(first, images)
    maps2, scores2 = maps_and_scores(second, images)
    assert torch.equal(maps1, maps2) and torch.equal(scores1, scores2)
    # and equal to the trained model itself, i.e. nothing is lost in the file
    trained = Trainer(
        MODEL, tiny_train(epochs=1), datasets(data), tmp_path / "x", device="cpu", progress=False
    )
    trained.model.load_state_dict(ckpt.state)
    trained.model.to(memory_format=torch.contiguous_format)  # training used channels-last
    maps3, _ = maps_and_scores(trained.model, images)
    assert torch.equal(maps1, maps3)


@pytest.mark.parametrize(
    "model",
    [
        MODEL,
        ModelConfig(image_size=SIZE, k=4, prior="memory", memory_size=100, prior_fusion="early"),
    ],
    ids=["paper", "early-prior"],
)
def test_resume_continues_exactly(data, tmp_path, model):
    """Also with the early-fusion prior, whose bank (fitted before training) comes back from
    last.pt rather than being fitted again."""
    straight = train(
        model, tiny_train(), datasets(data), tmp_path / "a", device="cpu", progress=False
    )

    class Crash(Exception):
        pass

    def crash_after_first_epoch(epoch, loss):
        if epoch == 1:
            raise Crash

    interrupted = Trainer(
        model, tiny_train(), datasets(data), tmp_path / "b", device="cpu", progress=False
    )
    with pytest.raises(Crash):
        interrupted.fit(crash_after_first_epoch)
    assert (tmp_path / "b" / LAST).is_file()
    resumed = train(
        model,
        tiny_train(),
        datasets(data),
        tmp_path / "b",
        resume=True,
        device="cpu",
        progress=False,
    )
    assert resumed.history[0] == straight.history[0]
    assert resumed.history[1] == straight.history[1]  # the next step's loss, bit for bit
    assert resumed.history == straight.history
    a = Checkpoint.load(straight.checkpoint).state
    b = Checkpoint.load(resumed.checkpoint).state
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("batch", "pixels", "limit", "parts"),
    [(16, 256 * 256, 2**20, 1), (16, 640 * 256, 2**20, 4), (16, 300 * 300, 2**20, 2),
     (6, 100, 250, 3), (3, 10**6, 1, 3), (16, 10**6, None, 1)],
)  # fmt: skip
def test_micro_batches_are_the_fewest_equal_parts_under_the_limit(batch, pixels, limit, parts):
    assert micro_batches(batch, pixels, limit) == parts


def test_a_step_in_micro_batches_gives_the_whole_batch_gradient(data, tmp_path):
    """The parts' gradients add up to the one-pass gradient (BatchNorm frozen, where the two
    would legitimately differ: it normalises over what it sees), and so does the loss."""
    steps = {}
    for limit in (None, 2 * SIZE * SIZE):  # one pass; two parts of two images
        trainer = Trainer(
            MODEL,
            tiny_train(micro_batch_pixels=limit, amp=False),
            datasets(data),
            tmp_path / str(limit),
            device="cpu",
            progress=False,
        )
        assert trainer.parts == (1 if limit is None else 2)
        for module in trainer.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        loss = trainer.train_step(torch.arange(4))
        grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
        steps[limit] = loss, grads
    (whole, whole_grads), (parts, part_grads) = steps.values()
    assert len(whole_grads) == len(part_grads) > 0
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6)
    for a, b in zip(part_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_resume_without_checkpoint_is_an_error(data, tmp_path):
    with pytest.raises(AdpsError, match="resume"):
        train(
            MODEL, tiny_train(), datasets(data), tmp_path, resume=True, device="cpu", progress=False
        )


def test_training_refuses_bad_inputs(data, tmp_path):
    with pytest.raises(AdpsError, match="normal images only"):
        Trainer(MODEL, tiny_train(), datasets(data, "test"), tmp_path, device="cpu", progress=False)
    wrong_size = MVTecAD(data.parent, data.name, "train", size=32)
    with pytest.raises(AdpsError, match="resized"):
        Trainer(MODEL, tiny_train(), wrong_size, tmp_path, device="cpu", progress=False)


@pytest.mark.integration
def test_loss_decreases_and_metrics_file(data, tmp_path):
    from adps.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--image-size",
                str(SIZE),
                "-k",
                "4",
                "--epochs",
                "6",
                "--batch-size",
                "4",
                "--steps-per-epoch",
                "3",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    history = Checkpoint.load(out / "model.pt").training.history
    assert history[-1] < history[0]
    assert (
        main(
            [
                "test",
                "--model",
                str(out / "model.pt"),
                "--data",
                str(data),
                "--device",
                "cpu",
                "--no-progress",
                "--report",
            ]
        )
        == 0
    )
    assert (out / "report.html").stat().st_size > 10_000
    payload = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(payload["metrics"])
    assert all(0 <= payload["metrics"][k] <= 1 for k in METRIC_KEYS)
    assert payload["images_per_second"] > 0
    assert (out / "metrics.md").read_text().count("|") > 8


def test_original_resolution_evaluation(tmp_path):
    """Images of 96 px evaluated by a 64-px model: "original" scores the maps upsampled
    bilinearly to each mask's own size, which an independent computation reproduces."""
    from sklearn.metrics import roc_auc_score

    from adps.data.datasets import read_mask

    category = make_demo_dataset(
        tmp_path / "d96", size=96, n_train=4, n_test_good=2, n_test_defect=3
    )
    result = train(
        MODEL,
        tiny_train(epochs=1),
        MVTecAD(category.parent, category.name, "train", size=SIZE),
        tmp_path / "run",
        device="cpu",
        progress=False,
    )
    model = Checkpoint.load(result.checkpoint).model()
    test_set = MVTecAD(category.parent, category.name, "test", size=SIZE)
    working = evaluate(model, test_set, "cpu", progress=False)
    original = evaluate(model, test_set, "cpu", eval_resolution="original", progress=False)
    assert working.maps.shape[1:] == (SIZE, SIZE)
    assert working.metrics["image_auroc"] == original.metrics["image_auroc"]  # same scores
    up = torch.nn.functional.interpolate(
        original.maps[:, None], size=(96, 96), mode="bilinear", align_corners=False
    )[:, 0]
    truth = np.stack(
        [read_mask(r.mask) if r.mask else np.zeros((96, 96), np.uint8) for r in test_set.records]
    )
    want = roc_auc_score(truth.ravel() > 0, up.numpy().ravel())
    assert original.metrics["pixel_auroc"] == pytest.approx(want, abs=1e-6)
    assert original.metrics["pixel_auroc"] != working.metrics["pixel_auroc"]


_KEEP_EVERY_RANK = """
import os, sys, torch
from adps.engine import train as engine_train
fit = engine_train.Trainer.fit
def fit_and_keep(self, *args, **kwargs):
    result = fit(self, *args, **kwargs)
    params = {k: v.detach().cpu() for k, v in self.model.named_parameters()}
    torch.save(params, os.path.join(sys.argv[1], f"rank{self.dist.rank}.pt"))
    return result
engine_train.Trainer.fit = fit_and_keep
from adps.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_ddp_two_processes_on_gloo(data, tmp_path, free_port):
    """`torchrun --nproc-per-node 2 adps train` runs DDP on CPU (gloo); rank 0 alone writes, and
    both ranks end with identical weights (gradients were averaged every step)."""
    out, ranks = tmp_path / "ddp", tmp_path / "ranks"
    ranks.mkdir()
    script = tmp_path / "train_keep_ranks.py"
    script.write_text(_KEEP_EVERY_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port),
        str(script),
        str(ranks),
        "train",
        "--data",
        str(data),
        "--image-size",
        str(SIZE),
        "-k",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--steps-per-epoch",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = Checkpoint.load(out / "model.pt")
    assert len(ckpt.training.history) == 2
    assert sorted(p.name for p in out.iterdir()) == ["last.pt", "model.pt"]  # no temp files
    rank0 = torch.load(ranks / "rank0.pt", weights_only=True)
    rank1 = torch.load(ranks / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and any(k.startswith("psm.") for k in rank0)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the ranks drifted apart"
    assert all(torch.equal(rank0[k], ckpt.state[k]) for k in rank0)
    fresh = Trainer(
        MODEL, tiny_train(), datasets(data), tmp_path / "fresh", device="cpu", progress=False
    ).model.state_dict()
    assert any(not torch.equal(fresh[k], rank0[k]) for k in rank0 if k.startswith("student"))


def test_resume_refuses_another_model_configuration(data, tmp_path):
    train(MODEL, tiny_train(epochs=1), datasets(data), tmp_path, device="cpu", progress=False)
    other = ModelConfig(image_size=SIZE, k=2)
    with pytest.raises(AdpsError, match="different model configuration") as error:
        train(
            other,
            tiny_train(epochs=2),
            datasets(data),
            tmp_path,
            resume=True,
            device="cpu",
            progress=False,
        )
    assert str(tmp_path / LAST) in str(error.value)


def test_every_command_has_help(capsys):
    from adps.cli import COMMANDS, main

    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: adps " + command in capsys.readouterr().out


def test_cli_reports_user_errors_cleanly(tmp_path, capsys):
    from adps.cli import main

    code = main(["train", "--data", str(tmp_path / "missing"), "--no-progress"])
    assert code == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.integration
def test_info_lists_backbones_and_datasets(capsys):
    from adps.cli import main
    from datapaths import WELD  # the battery-weld subset committed under tests/data

    assert main(["info", "--data-root", str(WELD.parent)]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0 (default teacher)" in out and "installed" in out
    n_train = len(list((WELD / "train" / "good").iterdir()))
    n_test = sum(len(list(d.iterdir())) for d in (WELD / "test").iterdir() if d.is_dir())
    assert f"{WELD}: category ({n_train} train, {n_test} test images)" in out
    assert "cpu" in out


@pytest.mark.integration
@pytest.mark.slow
def test_demo_command_end_to_end_short(tmp_path, capsys):
    """The README's main command, one epoch instead of thirty."""
    from adps.cli import main

    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--epochs",
                "1",
                "--out",
                str(out),
                "--data-dir",
                str(tmp_path / "d"),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| demo |" in printed and "image threshold" in printed
    assert {"model.pt", "metrics.json", "report.html"} <= {p.name for p in out.iterdir()}
    ckpt = Checkpoint.load(out / "model.pt")
    assert ckpt.thresholds.calibration["n_normal"] == 20


def test_time_based_checkpoints_keep_long_epochs_safe(data, tmp_path):
    saved = []

    def record(epoch, loss):
        saved.append(Checkpoint.load(tmp_path / LAST).training.epochs)

    trainer = Trainer(
        MODEL,
        tiny_train(checkpoint_every=100, checkpoint_minutes=0.0),
        datasets(data),
        tmp_path,
        device="cpu",
        progress=False,
    )
    trainer.fit(record)
    assert saved == [1, 2, 3]  # every epoch, although checkpoint_every is 100


@pytest.mark.integration
def test_training_with_the_memory_prior_end_to_end(data, tmp_path, capsys):
    """--prior memory: the bank is fitted after training (statistics on the held-out normal
    images), calibration sees the fused score, `adps info` reports the bank, and predict and
    adps.load work unchanged on the checkpoint."""
    import adps
    from adps.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--image-size",
                str(SIZE),
                "-k",
                "4",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--steps-per-epoch",
                "1",
                "--prior",
                "memory",
                "--memory-size",
                "200",
                "--calibrate-holdout",
                "0.25",
                "--target-far",
                "0.5",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "memory prior: 200 of 384 normal features kept, scaled by holdout" in printed
    precision = "bf16" if cpu_has_bf16() else "float32 (this CPU has no native bf16"
    assert f"images/s in {precision}" in printed
    ckpt = Checkpoint.load(out / "model.pt")
    assert ckpt.state["memory.bank"].shape == (200, 152)
    assert main(["info", "--model", str(out / "model.pt")]) == 0
    info = capsys.readouterr().out
    assert "memory prior: 200 features x 152 channels" in info
    # the threshold was calibrated on the fused scores of the held-out images
    model = ckpt.model()
    images, _, _ = load_tensor_stack(datasets(data))
    kept, held = holdout_indices(
        len(images), TrainConfig(calibration_holdout=0.25, target_false_alarm_rate=0.5, seed=0)
    )
    _, scores = maps_and_scores(model, images[held])
    # the training images' look at the teacher, recorded for adps update (the teacher is
    # frozen: the trained model's measures it as the fit did)
    look = teacher_norm_targets(model, images[kept])
    assert ckpt.teacher_norm_targets is not None and set(ckpt.teacher_norm_targets) == set(look)
    assert f"training look at the teacher: recorded ({len(look)} layers" in info
    for name, value in look.items():
        torch.testing.assert_close(ckpt.teacher_norm_targets[name], value, rtol=1e-4, atol=1e-5)
    want = threshold_for_false_alarm_rate(scores.numpy(), 0.5).threshold
    assert ckpt.thresholds.image == pytest.approx(want, abs=1e-6)
    predictor = adps.load(out / "model.pt", device="cpu", backend="torch")
    image = datasets(data, "test").decode(0).image
    result = predictor(image.permute(1, 2, 0).numpy())
    with torch.no_grad():
        _, want = model(image[None].float() / 255)
    assert result.score == pytest.approx(float(want), abs=1e-5)


@pytest.mark.parametrize(
    ("amp", "native", "said"),
    [
        (True, True, "bf16"),
        (True, False, "float32 (this CPU has no native bf16: a time budget buys fewer steps)"),
        (False, True, "float32"),
    ],
)
def test_training_says_its_precision_and_why(data, tmp_path, monkeypatch, amp, native, said):
    monkeypatch.setattr("adps.engine.train.cpu_has_bf16", lambda: native)
    trainer = Trainer(MODEL, tiny_train(amp=amp), datasets(data), tmp_path, device="cpu")
    assert trainer.use_amp == (amp and native)
    assert trainer.precision == said
