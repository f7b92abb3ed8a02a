"""Fitting the late fusion to labelled defects: the fused map by hand, the grid search against a
brute-force one (scikit-learn's AP), the choice on maps whose answer is known, the export of a
fitted fusion, and `adps calibrate --fit-fusion` end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from sklearn.metrics import average_precision_score

from adps.config import ModelConfig, from_dict
from adps.data.cache import load_tensor_stack
from adps.data.datasets import MVTecAD
from adps.data.procedural import make_demo_dataset
from adps.engine.checkpoint import Checkpoint
from adps.engine.fusion import FUSION_GRID, check_late_fusion, choose_fusion, component_maps
from adps.engine.prior import fit_prior
from adps.engine.runtime import OnnxRunner, load_torchscript
from adps.engine.tiling import Tiling, grid_tiles
from adps.errors import AdpsError
from adps.export import export_onnx, export_torchscript
from adps.metrics import aupro
from adps.models.adps import ADPS
from adps.models.memory import late_fusion

SIZE = 64
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


def fused_by_hand(psm: np.ndarray, scaled_prior: np.ndarray, boost: float, exponent: float):
    return 1 - 2.0 ** (-(scaled_prior**exponent) * (1 + boost * psm))


def test_late_fusion_by_hand():
    g = torch.Generator().manual_seed(0)
    psm, prior = torch.rand(2, 1, 8, 8, generator=g), 3 * torch.rand(2, 1, 8, 8, generator=g)
    for boost, exponent in ((2.0, 1.0), (4.0, 0.25), (0.0, 0.5)):
        np.testing.assert_allclose(
            late_fusion(psm, prior, boost, exponent).numpy(),
            fused_by_hand(psm.numpy(), prior.numpy(), boost, exponent),
            rtol=1e-5,
            atol=1e-6,
        )
    # where the PSM is silent, 0.5 still means "beyond the normal 99.9th percentile"
    silent = late_fusion(torch.zeros_like(prior), prior, 4.0, 0.25)
    assert torch.equal(silent > 0.5, prior > 1)


def blobs(n: int, seed: int) -> np.ndarray:
    """(n, 32, 32) masks, each with one square defect at a random place."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 32, 32), bool)
    for m in masks:
        y, x = rng.integers(2, 24, size=2)
        m[y : y + 6, x : x + 6] = True
    return masks


def brute_force_choice(masks, psm, prior):
    """Every grid point's mean of pixel AP (scikit-learn) and AUPRO, the first best one."""
    best, best_value = None, -1.0
    for exponent, boost in FUSION_GRID:
        fused = fused_by_hand(psm, prior, boost, exponent)
        value = (average_precision_score(masks.ravel(), fused.ravel()) + aupro(masks, fused)) / 2
        if value > best_value + 1e-9:
            best, best_value = (exponent, boost), value
    return best, best_value


def assert_stored_pair_is_best(
    path, model: ADPS, images: torch.Tensor, truth: np.ndarray, n_images: int
) -> tuple[float, float]:
    """The pair stored at ``path`` is the best of a brute force over the model's own fused maps
    of ``images`` (one model per grid pair) against ``truth``; returns it."""
    values = {}
    for exponent, boost in FUSION_GRID:
        config = from_dict(
            ModelConfig, {**vars(model.config), "prior_exponent": exponent, "psm_boost": boost}
        )
        pair = ADPS(config, pretrained=False)
        pair.load_state_dict(model.state_dict())
        with torch.no_grad():
            fused, _ = pair.eval()(images.float() / 255)
        values[exponent, boost] = (
            average_precision_score(truth.ravel(), fused.numpy().ravel())
            + aupro(truth, fused[:, 0].numpy())
        ) / 2
    ckpt = Checkpoint.load(path)
    chosen = ckpt.model_config.prior_exponent, ckpt.model_config.psm_boost
    assert values[chosen] == pytest.approx(max(values.values()), abs=1e-5)
    assert ckpt.fusion_fit.n_images == n_images
    return chosen


@pytest.mark.parametrize("case", ["sharp psm, halo prior", "useless psm, right prior"])
def test_choose_fusion_against_brute_force_and_known_answers(case):
    """A PSM that marks the defect sharply beside a prior that blurs it wants the prior
    flattened (the lowest exponent); a PSM of pure noise beside a prior that is right wants
    the prior as it is (exponent 1, the lowest boost)."""
    rng = np.random.default_rng(1)
    masks = blobs(6, seed=2)
    if case == "sharp psm, halo prior":
        psm = 0.1 + 0.4 * masks + 0.5 * rng.random(masks.shape)
        prior = 0.5 + 3 * gaussian_filter(masks.astype(float), (0, 4, 4)) + rng.random(masks.shape)
        want = 0.25
    else:
        psm = rng.random(masks.shape)
        prior = 0.5 + 0.8 * masks + 0.5 * rng.random(masks.shape)
        want = 1.0, 1.0
    fit = choose_fusion(
        torch.from_numpy(masks), torch.from_numpy(psm).float(), torch.from_numpy(prior).float()
    )
    brute, value = brute_force_choice(masks, psm, prior)
    assert (fit.exponent, fit.boost) == brute
    assert (fit.exponent if case.startswith("sharp") else brute) == want
    assert fit.n_images == 6 and len(fit.scores) == len(FUSION_GRID)
    assert max(s.value for s in fit.scores) == pytest.approx(value, abs=1e-5)


def test_choose_fusion_keeps_the_default_on_ties_and_refuses_empty_masks():
    masks = torch.from_numpy(blobs(3, seed=0))
    perfect = masks.float()  # every fusion ranks a perfect PSM and prior perfectly
    fit = choose_fusion(masks, perfect, 1 + perfect)
    assert (fit.exponent, fit.boost) == FUSION_GRID[0] == (1.0, 2.0)
    with pytest.raises(AdpsError, match="every mask is empty"):
        choose_fusion(torch.zeros_like(masks), perfect, perfect)


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return make_demo_dataset(
        tmp_path_factory.mktemp("data"), size=SIZE, n_train=8, n_test_good=4, n_test_defect=9
    )


@pytest.fixture(scope="module")
def prior_model(category) -> ADPS:
    torch.manual_seed(0)
    model = ADPS(
        ModelConfig(image_size=SIZE, k=4, prior="memory", memory_size=200), pretrained=False
    )
    images, _, _ = load_tensor_stack(
        MVTecAD(category.parent, category.name, "train", SIZE), progress=False
    )
    fit_prior(model, images)
    return model.eval()


def test_the_model_fuses_with_its_configured_exponent_and_exports_it(
    prior_model, category, tmp_path
):
    config = from_dict(
        ModelConfig, {**vars(prior_model.config), "prior_exponent": 0.5, "psm_boost": 4.0}
    )
    model = ADPS(config, pretrained=False)
    model.load_state_dict(prior_model.state_dict())
    model.eval()
    images, _, _ = load_tensor_stack(
        MVTecAD(category.parent, category.name, "test", SIZE), progress=False
    )
    x = images[:3].float() / 255
    with torch.no_grad():
        psm, teacher = model.psm_map(x)
        prior = model.memory(teacher, (SIZE, SIZE)) / model.memory.stats[2]
        fused, score = model(x)
    np.testing.assert_allclose(
        fused.numpy(), fused_by_hand(psm.numpy(), prior.numpy(), 4, 0.5), rtol=1e-5, atol=1e-6
    )
    # component_maps gives the same two maps
    got_psm, got_prior = component_maps(model, images[:3], CPU)
    torch.testing.assert_close(got_psm, psm[:, 0])
    torch.testing.assert_close(got_prior, prior[:, 0])
    # the exports carry the exponent: parity within 1e-3
    runner = OnnxRunner(export_onnx(model, tmp_path / "m.onnx"))
    for got, want in zip(runner(images[:3].numpy()), (fused.numpy(), score.numpy()), strict=True):
        assert np.abs(got - want).max() < 1e-3
    scripted, _ = load_torchscript(export_torchscript(model, tmp_path / "m.ts"))
    with torch.no_grad():
        for got, want in zip(scripted(images[:3]), (fused, score), strict=True):
            assert (got - want).abs().max() < 1e-3


def test_check_late_fusion_names_the_field(prior_model):
    """No prior, early fusion, an empty bank: each refused, naming what is wrong."""
    with pytest.raises(AdpsError, match=r"model\.prior is 'none'"):
        check_late_fusion(ADPS(ModelConfig(image_size=SIZE, k=4), pretrained=False))
    early = ADPS(
        ModelConfig(image_size=SIZE, k=4, prior="memory", prior_fusion="early"), pretrained=False
    )
    with pytest.raises(AdpsError, match=r"model\.prior_fusion is 'early'"):
        check_late_fusion(early)
    with pytest.raises(AdpsError, match="memory bank is empty"):
        check_late_fusion(ADPS(ModelConfig(image_size=SIZE, k=4, prior="memory"), pretrained=False))
    check_late_fusion(prior_model)  # fitted and late: no error


@pytest.mark.integration
def test_calibrate_fits_the_fusion_then_the_threshold(prior_model, category, tmp_path, capsys):
    """The stored pair is the best of the grid by a brute force over the model's own fused maps
    (one model per pair); the threshold is set on the refitted model's scores; `adps info`
    reports the fit; a failed calibration leaves the checkpoint untouched."""
    from adps.cli import main
    from adps.engine.calibrate import threshold_for_false_alarm_rate

    model_path = Checkpoint.of(prior_model).save(tmp_path / "model.pt")
    defects = tmp_path / "defects"
    for kind in ("dent", "scratch", "stain"):
        shutil.copytree(category / "test" / kind, defects / kind)
    masks_dir, normal = category / "ground_truth", category / "test" / "good"
    out = tmp_path / "fitted.pt"
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(model_path),
                "--normal-dir",
                str(normal),
                "--defect-dir",
                str(defects),
                "--mask-dir",
                str(masks_dir),
                "--fit-fusion",
                "--target-far",
                "0.5",
                "--out",
                str(out),
                "--backend",
                "torch",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "fusion fitted on 9 defective images" in printed and "<- chosen" in printed

    test = MVTecAD(category.parent, category.name, "test", SIZE)
    images, masks, labels = load_tensor_stack(test, progress=False)
    defective = labels == 1
    chosen = assert_stored_pair_is_best(
        out, prior_model, images[defective], masks[defective, 0].numpy() > 0, n_images=9
    )
    ckpt = Checkpoint.load(out)

    refitted = ckpt.model()
    assert (refitted.config.prior_exponent, refitted.config.psm_boost) == chosen
    with torch.no_grad():
        _, scores = refitted(images[~defective].float() / 255)
    want = threshold_for_false_alarm_rate(scores.numpy(), 0.5).threshold
    assert ckpt.thresholds.image == pytest.approx(want, abs=1e-6)
    assert main(["info", "--model", str(out)]) == 0
    assert (
        f"late fusion: prior exponent {chosen[0]:g}, PSM boost {chosen[1]:g}, fitted on 9 "
        "defective images"
    ) in capsys.readouterr().out

    # too few normal images for the rate: refused after the fit, the model file untouched
    before = model_path.read_bytes()
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(model_path),
                "--normal-dir",
                str(normal),
                "--defect-dir",
                str(defects),
                "--mask-dir",
                str(masks_dir),
                "--fit-fusion",
                "--backend",
                "torch",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "cannot support" in capsys.readouterr().err
    assert model_path.read_bytes() == before
    # the fit needs masks
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(model_path),
                "--normal-dir",
                str(normal),
                "--defect-dir",
                str(defects),
                "--fit-fusion",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "--mask-dir" in capsys.readouterr().err
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(model_path),
                "--normal-dir",
                str(normal),
                "--mask-dir",
                str(masks_dir),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "only read by --fit-fusion" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.slow
def test_a_tiled_model_is_fitted_on_its_tiles(tmp_path, tmp_path_factory, capsys):
    """A tiled model fuses each tile's maps before blending them, so its fit is on the tile
    grid of its frames (128 px frames, 64 px tiles: 4 per image); the stored pair is the best
    of a brute force over the model's own fused tile maps."""
    from adps.cli import main

    big = make_demo_dataset(
        tmp_path_factory.mktemp("big"), size=2 * SIZE, n_train=4, n_test_good=2, n_test_defect=6
    )
    torch.manual_seed(0)
    config = ModelConfig(image_size=SIZE, k=4, prior="memory", memory_size=200, tiling=True)
    model = ADPS(config, pretrained=False)
    tiling = Tiling.of(config)
    train, _, _ = load_tensor_stack(
        MVTecAD(big.parent, big.name, "train", 2 * SIZE), progress=False
    )
    fit_prior(model, grid_tiles(train, tiling))
    model_path = Checkpoint.of(model.eval()).save(tmp_path / "tiled.pt")
    defects = tmp_path / "defects"
    for kind in ("dent", "scratch", "stain"):
        shutil.copytree(big / "test" / kind, defects / kind)
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(model_path),
                "--normal-dir",
                str(big / "test" / "good"),
                "--defect-dir",
                str(defects),
                "--mask-dir",
                str(big / "ground_truth"),
                "--fit-fusion",
                "--target-far",
                "0.5",
                "--backend",
                "torch",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "fusion fitted on 6 defective images (cut into tiles)" in capsys.readouterr().out

    test = MVTecAD(big.parent, big.name, "test", 2 * SIZE)
    images, masks, labels = load_tensor_stack(test, progress=False)
    tiles = grid_tiles(images[labels == 1], tiling)
    truth = grid_tiles(masks[labels == 1], tiling)[:, 0].numpy() > 0
    assert tiles.shape[0] == 6 * 4
    assert_stored_pair_is_best(model_path, model, tiles, truth, n_images=6)
