"""The standardized decision: the memory's and the PSM's image scores, each standardised on
normal images, summed and squashed (adps.models.memory.standardized_score), its statistics
fitted after training (adps.engine.prior.fit_decision), checked against numpy/scipy, through
checkpoints and exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist
from scipy.special import expit

from adps.config import ModelConfig
from adps.engine.checkpoint import Checkpoint
from adps.engine.prior import fit_decision, fit_prior
from adps.engine.runtime import OnnxRunner, load_torchscript
from adps.errors import AdpsError
from adps.export import export_onnx, export_torchscript
from adps.models.adps import ADPS
from adps.models.memory import embed, standardized_score

SMALL = {"image_size": 64, "k": 4}
SIGMA = 4.0

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Noise at brightness levels from 0.2 to 1: normal images whose scores differ."""
    g = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, (12, 3, 64, 64), generator=g).float()
    return (
        noise * torch.linspace(0.2, 1, 12)[torch.randperm(12, generator=g)].view(-1, 1, 1, 1)
    ).to(torch.uint8)


def _model(**changes) -> ADPS:
    torch.manual_seed(0)
    config = ModelConfig(**{**SMALL, "prior": "memory", "memory_size": 100, **changes})
    model = ADPS(config, pretrained=False)
    with torch.no_grad():  # an untrained PSM's score is 0.52 on any image: give it contrast
        for module in model.psm.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.weight.mul_(2.5)
    return model


def _smoothed_max(maps: np.ndarray) -> np.ndarray:
    """The paper's image score by scipy: max of the sigma-4 Gaussian of each (H, W) map."""
    return np.array([gaussian_filter(m, SIGMA, mode="mirror", truncate=4.0).max() for m in maps])


def _reference_scores(model: ADPS, images: torch.Tensor, leave_own_out: bool):
    """(memory scores, PSM scores) by brute force: nearest distances by cdist (leaving each
    image's own bank rows out), bilinear to the image size, scipy's blur and max."""
    x = images.float() / 255
    with torch.no_grad():
        psm, teacher = model.eval().psm_map(x)
        e = embed(teacher)
    n, c, h, w = e.shape
    rows = e.permute(0, 2, 3, 1).reshape(n, h * w, c).numpy()
    bank, sources = model.memory.bank.numpy(), model.memory.sources.numpy()
    nearest = []
    for i in range(n):
        d = cdist(rows[i], bank)
        if leave_own_out:
            d[:, sources == i] = np.inf
        nearest.append(d.min(axis=1).reshape(h, w))
    prior = F.interpolate(
        torch.from_numpy(np.stack(nearest))[:, None].float(),
        size=(64, 64),
        mode="bilinear",
        align_corners=False,
    )
    return _smoothed_max(prior[:, 0].numpy()), _smoothed_max(psm[:, 0].numpy())


def _reference_stats(memory_scores, psm_scores) -> np.ndarray:
    return np.array(
        [memory_scores.mean(), memory_scores.std(ddof=1), psm_scores.mean(), psm_scores.std(ddof=1)]
    )


@pytest.fixture(scope="module")
def decided(images) -> ADPS:
    """Bank from 6 images, the decision's statistics from 3 held-out ones."""
    model = _model()
    fit_prior(model, images[:6])
    fit_decision(model, images[:6], holdout=images[6:9])
    return model.eval()


def test_standardized_score_is_the_squashed_standardized_sum():
    rng = np.random.default_rng(0)
    m, p = rng.normal(3, 2, 20), rng.normal(0.2, 0.1, 20)
    stats = np.array([2.5, 1.5, 0.1, 0.05])
    for weight in (0.0, 0.5, 1.0, 2.0):
        z = (m - stats[0]) / stats[1] + weight * (p - stats[2]) / stats[3]
        want = expit(z / np.sqrt(1 + weight**2) - 3)
        got = standardized_score(*map(torch.from_numpy, (m, p, stats)), weight)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # 0.5 is a standardized sum three standard deviations above normal images' mean: the
    # memory's 3 alone at weight 0, 3 / sqrt(2) at weight 1 with the PSM at its mean
    three = torch.tensor([stats[0] + 3 * stats[1]]), torch.tensor([stats[2]]), torch.tensor(stats)
    assert standardized_score(*three, 0.0).item() == pytest.approx(0.5)
    assert standardized_score(*three, 1.0).item() == pytest.approx(expit(3 / np.sqrt(2) - 3))


def test_holdout_statistics_and_the_model_s_score(decided, images):
    """The statistics are the mean and (n - 1) standard deviation of both scores on the hold-out,
    and the eval forward's score is the standardized sum of the test images' two scores; the
    map stays the fused map."""
    want_stats = _reference_stats(*_reference_scores(decided, images[6:9], leave_own_out=False))
    np.testing.assert_allclose(decided.memory.score_stats.numpy(), want_stats, rtol=2e-4)
    assert decided.memory.decision_fitted and decided.config.standardized_decision
    m, p = _reference_scores(decided, images[9:], leave_own_out=False)
    s = decided.memory.score_stats.double().numpy()
    want = expit(((m - s[0]) / s[1] + (p - s[2]) / s[3]) / np.sqrt(2) - 3)
    x = images[9:].float() / 255
    with torch.no_grad():
        fused, score = decided(x)
        psm, teacher = decided.psm_map(x)
        prior = decided.memory(teacher, (64, 64))
    np.testing.assert_allclose(score.numpy(), want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused, decided.memory.fuse(psm, prior, 2.0))


def test_without_a_holdout_the_memory_scores_leave_each_image_out(images):
    """Training images are the memory's sources: each one's memory score ignores its own rows
    (else it is a self-match, near 0), and the PSM's are its scores on them."""
    model = _model(memory_size=10_000)  # every feature in the bank
    fit_prior(model, images[:6])
    stats = fit_decision(model, images[:6])
    want = _reference_stats(*_reference_scores(model, images[:6], leave_own_out=True))
    np.testing.assert_allclose(stats.numpy(), want, rtol=2e-4)
    assert want[0] > 10 * _reference_scores(model, images[:6], leave_own_out=False)[0].mean()


def test_the_decision_round_trips_and_exports(decided, images, tmp_path):
    again = Checkpoint.of(decided).model()
    assert again.memory.decision_fitted
    torch.testing.assert_close(again.memory.score_stats, decided.memory.score_stats, rtol=0, atol=0)
    x = images[9:]
    with torch.no_grad():
        want = [t.numpy() for t in decided(x.float() / 255)]
        for got, ref in zip(again(x.float() / 255), want, strict=True):
            np.testing.assert_array_equal(got.numpy(), ref)
    onnx = OnnxRunner(export_onnx(decided, tmp_path / "m.onnx"))
    scripted, _ = load_torchscript(export_torchscript(decided, tmp_path / "m.ts"))
    with torch.no_grad():
        ts = [t.numpy() for t in scripted(x)]
    for outputs in (onnx(x.numpy()), ts):
        for got, ref in zip(outputs, want, strict=True):
            assert np.abs(got - ref).max() < 1e-3
    # the score is not the fused map's: the export decides as the model does
    assert np.abs(want[1] - decided.score(torch.from_numpy(want[0])).numpy()).max() > 1e-3


def test_a_model_without_fitted_statistics_decides_on_the_fused_map(decided, images):
    """An older checkpoint (no score_stats) and a model never fitted decide as before."""
    state = {k: v for k, v in decided.state_dict().items() if k != "memory.score_stats"}
    old = _model()
    old.load_state_dict(state, strict=True)
    assert not old.memory.decision_fitted
    fused, score = old.eval()(images[9:].float() / 255)
    torch.testing.assert_close(score, old.score(fused), rtol=0, atol=0)
    assert not Checkpoint.of(old).model().memory.decision_fitted


def test_fused_decision_ignores_the_statistics(decided, images):
    fused_model = _model(image_decision="fused")
    fused_model.load_state_dict(decided.state_dict(), strict=True)
    fused, score = fused_model.eval()(images[9:].float() / 255)
    torch.testing.assert_close(score, fused_model.score(fused), rtol=0, atol=0)


def test_the_decision_needs_the_memory_late_and_whole_images(images):
    assert not ModelConfig(**SMALL).standardized_decision  # "auto" without the memory
    assert not ModelConfig(**SMALL, prior="memory", tiling=True).standardized_decision
    for bad in (
        {},
        {"prior": "memory", "tiling": True},
        {"prior": "memory", "prior_fusion": "early"},
    ):
        with pytest.raises(AdpsError, match=r"model\.image_decision"):
            ModelConfig(**SMALL, image_decision="standardized", **bad)
    with pytest.raises(AdpsError, match="decision_psm_weight"):
        ModelConfig(**SMALL, decision_psm_weight=-1)
    with pytest.raises(ValueError, match="2 normal images"):
        fit_decision(_model(), images[:6], holdout=images[6:7])


@pytest.mark.integration
def test_training_fits_the_decision_on_the_holdout_and_calibrate_refits_it(tmp_path, capsys):
    """End to end: after training, the statistics are those of the held-out images (brute
    force), the stored threshold is set on the standardized scores; `adps calibrate` then
    re-standardises on its --normal-dir."""
    from adps.cli import main
    from adps.config import TrainConfig
    from adps.data.cache import load_tensor_stack
    from adps.data.datasets import MVTecAD
    from adps.data.procedural import make_demo_dataset
    from adps.engine.calibrate import threshold_for_false_alarm_rate
    from adps.engine.train import Trainer, holdout_indices

    category = make_demo_dataset(
        tmp_path / "d", size=64, n_train=28, n_test_good=1, n_test_defect=1
    )
    dataset = MVTecAD(category.parent, category.name, "train", size=64)
    others = dataset.records[16:]  # kept for adps calibrate
    dataset.records = dataset.records[:16]
    config = TrainConfig(
        epochs=1, batch_size=4, steps_per_epoch=1, calibration_holdout=0.5,
        target_false_alarm_rate=0.125,
    )  # fmt: skip
    model_config = ModelConfig(**SMALL, prior="memory", memory_size=200)
    trainer = Trainer(model_config, config, dataset, tmp_path / "run", device="cpu", progress=False)
    ckpt = Checkpoint.load(trainer.fit().checkpoint)
    model = ckpt.model()
    assert model.memory.decision_fitted
    images, _, _ = load_tensor_stack(dataset, progress=False)
    held_out = images[holdout_indices(len(images), config)[1]]
    want = _reference_stats(*_reference_scores(model, held_out, leave_own_out=False))
    # a PSM trained one step scores about 0.52 everywhere: its spread is float32 round-off
    np.testing.assert_allclose(model.memory.score_stats.numpy(), want, rtol=2e-4, atol=1e-7)
    with torch.no_grad():
        _, scores = model(held_out.float() / 255)
    assert ckpt.thresholds.image == pytest.approx(
        threshold_for_false_alarm_rate(scores.numpy(), 0.125).threshold, rel=1e-5
    )

    normal = tmp_path / "normal"
    normal.mkdir()
    for record in others:
        (normal / record.image.name).write_bytes(record.image.read_bytes())
    out = tmp_path / "calibrated.pt"
    args = ["calibrate", "--model", str(tmp_path / "run" / "model.pt"), "--normal-dir"]
    assert main([*args, str(normal), "--target-far", "0.1", "--out", str(out)]) == 0
    assert "decision statistics on 12 normal images" in capsys.readouterr().out
    refitted = Checkpoint.load(out).model()
    every = MVTecAD(category.parent, category.name, "train", size=64)
    others_images = load_tensor_stack(every, progress=False)[0][16:]
    want = _reference_stats(*_reference_scores(refitted, others_images, leave_own_out=False))
    np.testing.assert_allclose(refitted.memory.score_stats.numpy(), want, rtol=2e-4, atol=1e-7)
    assert not np.allclose(want, model.memory.score_stats.numpy())
