"""Non-square working sizes and tiled inference/training (high-resolution parts).

Stand-in forwards whose map is a known function of each pixel's position or value check the
tile-and-stitch arithmetic exactly; the real model checks shapes, training on tiles, the
predictor around torch and ONNX, and that tiles find defects that resizing erases.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from adps.config import ModelConfig, TrainConfig
from adps.data.datasets import Folder, MVTecAD, Resize, read_image
from adps.data.procedural import draw_spots, make_demo_dataset, render_large_surface
from adps.engine.checkpoint import Checkpoint
from adps.engine.evaluate import evaluate
from adps.engine.prior import fit_prior
from adps.engine.tiling import TiledForward, Tiling, grid_tiles, open_split, working_size
from adps.engine.train import random_crops, train
from adps.errors import AdpsError
from adps.export import export_onnx, load_predictor
from adps.metrics import aupro
from adps.models.adps import ADPS
from datapaths import WELD

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-3


def position_forward(tiles: torch.Tensor):
    """A stand-in model whose map is a smooth function of each pixel's global position, which
    channels 0 and 1 of the frame hold (so a stitched map must equal the function exactly)."""
    amap = torch.sin(tiles[:, 0:1] / 17.0) + torch.cos(tiles[:, 1:2] / 11.0) * tiles[:, 0:1] / 300
    return amap, amap.flatten(1).amax(1)


def position_frame(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.stack([yy, xx, torch.zeros_like(yy)])


def max_score(maps: torch.Tensor) -> torch.Tensor:
    return maps.flatten(1).amax(1)


# ------------------------------------------------------------------------------ the tile grid


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [
        (64, 64, 0.25),
        (65, 64, 0.25),
        (300, 64, 0.25),
        (300, 64, 0.0),
        (1000, 128, 0.5),
        (129, 64, 0.9),
        (30, 64, 0.25),
    ],
)
def test_tile_starts_cover_the_side_with_at_least_the_overlap(length, tile, overlap):
    starts = Tiling((tile, tile), overlap).starts(length, tile)
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] == length - tile  # flush with the end, never past it
    step = tile * (1 - overlap)
    assert all(b - a <= max(1.0, step) + 0.5 for a, b in itertools.pairwise(starts))
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "batch"),
    [
        (200, 333, (64, 64), 0.25, 5),
        (64, 64, (64, 64), 0.25, 1),
        (130, 70, (32, 64), 0.5, 100),
        (40, 50, (64, 64), 0.25, 3),  # smaller than a tile: padded, then cut back
        (97, 301, (48, 80), 0.0, 2),
    ],
)
def test_stitching_a_position_map_gives_it_back_unchanged(height, width, tile, overlap, batch):
    frame = position_frame(height, width)
    tiled = TiledForward(position_forward, Tiling(tile, overlap), max_score, batch)
    maps, scores = tiled(frame[None])
    truth, _ = position_forward(frame[None])
    if height < tile[0] or width < tile[1]:  # the padded rows/columns replicate the edge
        assert maps.shape == truth.shape
    torch.testing.assert_close(maps, truth, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores, max_score(truth), atol=1e-5, rtol=0)


def test_a_constant_image_gives_a_constant_map_without_seams():
    def mean_forward(tiles):
        amap = tiles.float().mean(1, keepdim=True) / 255
        return amap, max_score(amap)

    frame = torch.full((2, 3, 173, 259), 77, dtype=torch.uint8)
    maps, _ = TiledForward(mean_forward, Tiling((64, 64), 0.25), max_score, 4)(frame)
    assert maps.shape == (2, 1, 173, 259)
    torch.testing.assert_close(maps, torch.full_like(maps, 77 / 255), atol=1e-6, rtol=0)


def test_window_is_positive_and_highest_in_the_middle():
    window = Tiling((16, 24)).window()
    assert window.shape == (16, 24) and window.min() > 0
    assert window[7:9, 11:13].min() == window.max()
    assert torch.allclose(window, window.flip(0).flip(1))


def test_grid_tiles_are_the_frames_pieces():
    frames = torch.arange(2 * 3 * 100 * 70).reshape(2, 3, 100, 70)
    tiling = Tiling((32, 32), 0.5)
    tiles = grid_tiles(frames, tiling)
    starts_y, starts_x = [0, 23, 45, 68], [0, 19, 38]  # overlap 0: evenly spread
    assert tiles.shape == (2 * 4 * 3, 3, 32, 32)
    i = 0
    for f in frames:
        for y in starts_y:
            for x in starts_x:
                assert torch.equal(tiles[i], f[:, y : y + 32, x : x + 32])
                i += 1


def test_random_crops_equal_slices_at_the_drawn_offsets():
    images = torch.randint(0, 256, (5, 3, 40, 90), dtype=torch.uint8)
    index = torch.tensor([4, 0, 0, 2])
    generator = torch.Generator().manual_seed(7)
    replay = torch.Generator().manual_seed(7)
    crops = random_crops(images, index, (16, 32), generator)
    ys = torch.randint(0, 40 - 16 + 1, (4,), generator=replay)
    xs = torch.randint(0, 90 - 32 + 1, (4,), generator=replay)
    assert crops.shape == (4, 3, 16, 32) and crops.dtype == torch.uint8
    for crop, i, y, x in zip(crops, index, ys, xs, strict=True):
        assert torch.equal(crop, images[i, :, y : y + 16, x : x + 32])


# ------------------------------------------------------------------------- non-square models


def weld_images(size: tuple[int, int]) -> torch.Tensor:
    ds = Folder(
        WELD,
        normal_test_dir="test/good",
        abnormal_test_dir="test/defective",
        mask_required=False,
        split="test",
        size=size,
    )
    return torch.stack([ds.decode(i).image for i in (0, 1, len(ds) - 1)])


def test_non_square_forward_shapes_and_gradients():
    model = ADPS(ModelConfig(image_size=(64, 128), k=4, psm_output_stride=2))
    images = weld_images((64, 128)).float() / 255
    out = model.train()(images)
    assert out["logits"].shape == (3, 2, 64, 128)
    assert [tuple(t.shape[-2:]) for t in out["student"]] == [(16, 32), (8, 16), (4, 8)]
    out["logits"].square().mean().backward()
    assert model.student.stem[0].weight.grad.abs().sum() > 0
    maps, scores = model.eval()(images)
    assert maps.shape == (3, 1, 64, 128) and scores.shape == (3,)


def test_non_square_export_matches_torch_on_real_images(tmp_path):
    pytest.importorskip("onnxruntime")
    from adps.engine.runtime import OnnxRunner

    torch.manual_seed(0)
    model = ADPS(ModelConfig(image_size=(64, 128), k=4)).eval()
    images = weld_images((64, 128))
    path = export_onnx(model, tmp_path / "m.onnx")
    runner = OnnxRunner(path, providers=["CPUExecutionProvider"])
    assert runner.size == (64, 128) and runner.metadata["input_shape"][2:] == [64, 128]
    got_maps, got_scores = runner(images.numpy())
    with torch.no_grad():
        maps, scores = model(images.float() / 255)
    np.testing.assert_allclose(got_maps, maps.numpy(), atol=TOL)
    np.testing.assert_allclose(got_scores, scores.numpy(), atol=TOL)
    with pytest.raises(AdpsError, match=r"\(B, 3, 64, 128\)"):
        runner(images.numpy().transpose(0, 1, 3, 2))


# ------------------------------------------------------------------------ tiled real models


def tiled_checkpoint(images: list[torch.Tensor], **config) -> dict:
    """A tiled model (64 px tiles, k = 4) whose map is its memory prior alone (psm_boost 0):
    meaningful without training, fitted on the non-overlapping tiles of ``images`` (uint8
    (3, H, W) each, at the tiling's scale)."""
    values = {
        "image_size": 64,
        "k": 4,
        "tiling": True,
        "prior": "memory",
        "memory_size": 512,
        "psm_boost": 0.0,
    }
    values.update(config)
    model = ADPS(ModelConfig(**values)).eval()
    tiling = Tiling.of(model.config)
    fit_prior(model, torch.cat([grid_tiles(image[None], tiling) for image in images]))
    return Checkpoint.of(model)


def test_tiled_predictor_matches_its_onnx_export_at_the_original_size(tmp_path):
    pytest.importorskip("onnxruntime")
    train_images = [
        torch.from_numpy(read_image(p)).permute(2, 0, 1)
        for p in sorted((WELD / "train/good").iterdir())[:4]
    ]  # 400 wide, any height
    frames = [
        Resize(Tiling((64, 64), 0.3, 0.5).frame(*image.shape[-2:])).image(image)
        for image in train_images
    ]
    ckpt = tiled_checkpoint(frames, tile_scale=0.5, tile_overlap=0.3)
    ckpt.save(tmp_path / "model.pt")
    export_onnx(tmp_path / "model.pt", tmp_path / "model.onnx", verify=False)  # checked here
    files = [
        sorted((WELD / "test/defective").iterdir())[0],
        sorted((WELD / "test/good").iterdir())[0],
    ]
    torch_predictions = load_predictor(tmp_path / "model.pt", "cpu", backend="torch")(files)
    onnx_predictions = load_predictor(tmp_path / "model.onnx", "cpu")(files)
    for t, o, path in zip(torch_predictions, onnx_predictions, files, strict=True):
        h, w = np.array(Image.open(path)).shape[:2]
        assert t.anomaly_map.shape == o.anomaly_map.shape == (h, w)  # 256 x 400, not a square
        np.testing.assert_allclose(o.anomaly_map, t.anomaly_map, atol=TOL)
        assert abs(o.score - t.score) <= TOL
    # the predictor tiles exactly as a hand-built TiledForward over the model: the image
    # resized by tile_scale (256 x 400 -> 128 x 200), tiled, blended, upsampled back
    model = ckpt.model()
    image = torch.from_numpy(np.array(Image.open(files[0]).convert("RGB"))).permute(2, 0, 1)
    by_hand = TiledForward(
        lambda t: model(t.float() / 255), Tiling((64, 64), 0.3, 0.5), model.score, 3
    )
    with torch.no_grad():
        maps, score = by_hand(Resize((128, 200)).image(image)[None])
    maps = torch.nn.functional.interpolate(
        maps, size=(256, 400), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(torch_predictions[0].anomaly_map, maps[0, 0].numpy(), atol=1e-5)
    assert abs(float(score) - torch_predictions[0].score) <= 1e-5


@pytest.mark.slow
def test_tiling_finds_small_defects_that_resizing_erases(tmp_path):
    """A 2048 x 2048 procedural surface with 8-pixel spots: the same model (tiles of 64 px at
    native resolution, vs the whole image resized to 64 px) localises them only when tiled."""
    rng = np.random.default_rng(0)
    surface = functools.partial(render_large_surface, 2048, rng)

    def uint8(image):
        return torch.from_numpy(np.clip(np.rint(image), 0, 255).astype(np.uint8)).permute(2, 0, 1)

    tests = [draw_spots(surface(), 24, 8, rng)]
    ckpt = tiled_checkpoint([uint8(surface())], tile_overlap=0.0)
    ckpt.save(tmp_path / "tiled.pt")
    ckpt.replace(model_config=dataclasses.replace(ckpt.model_config, tiling=False)).save(
        tmp_path / "resized.pt"
    )
    masks = np.stack([m for _, m in tests])
    figures = {}
    for name in ("tiled", "resized"):
        predictions = load_predictor(
            tmp_path / f"{name}.pt", "cpu", batch_size=16, backend="torch"
        )([uint8(image) for image, _ in tests])
        figures[name] = aupro(masks, np.stack([p.anomaly_map for p in predictions]))
    print(
        f"AUPRO of 8-px spots on 2048 px: tiled {figures['tiled']:.3f}, "
        f"resized to 64 px {figures['resized']:.3f}"
    )
    assert figures["tiled"] > 0.8 and figures["tiled"] > figures["resized"] + 0.3


# --------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def big_demo(tmp_path_factory):
    return make_demo_dataset(
        tmp_path_factory.mktemp("tiles"), size=128, n_train=6, n_test_good=2, n_test_defect=2
    )


def test_training_on_tiles_then_evaluating_and_predicting_whole_images(big_demo, tmp_path):
    from adps.data.spec import DataSpec

    config = ModelConfig(
        image_size=64,
        k=4,
        tiling=True,
        tile_overlap=0.25,
        tile_scale=0.75,
        psm_output_stride=2,
        prior="memory",
        memory_size=256,
    )
    spec = DataSpec(str(big_demo))
    dataset = open_split(spec, "train", config)
    assert dataset.size == (96, 96) == working_size(config, str(dataset.records[0].image))
    result = train(
        config,
        TrainConfig(epochs=1, batch_size=4, steps_per_epoch=2, seed=1),
        dataset,
        tmp_path,
        device="cpu",
        progress=False,
    )
    ckpt = Checkpoint.load(result.checkpoint)
    assert ckpt.model_config.tiling and ckpt.model_config.tile_scale == 0.75
    model = ckpt.model()
    evaluation = evaluate(model, open_split(spec, "test", config), "cpu", progress=False)
    assert evaluation.maps.shape == (4, 96, 96)
    assert all(0 <= v <= 1 for v in evaluation.metrics.values() if v is not None)
    # the predictor reads the tiling from the checkpoint; maps come back at the image's size
    prediction = load_predictor(result.checkpoint, "cpu", backend="torch")(evaluation.paths[0])
    assert prediction.anomaly_map.shape == (128, 128)
    # its score is the score of the blended map, as in evaluation (frames decoded the same way)
    assert abs(prediction.score - float(evaluation.scores[0])) <= TOL


def test_tiles_larger_than_the_scaled_images_are_refused(big_demo, tmp_path):
    from adps.data.spec import DataSpec

    config = ModelConfig(image_size=128, k=4, tiling=True, tile_scale=0.5)
    dataset = open_split(DataSpec(str(big_demo)), "train", config)
    with pytest.raises(AdpsError, match="smaller than the 128 x 128 tile"):
        train(
            config,
            TrainConfig(epochs=1, batch_size=2),
            dataset,
            tmp_path,
            device="cpu",
            progress=False,
        )


def test_early_fusion_with_tiling_is_refused_by_name():
    with pytest.raises(AdpsError, match=r"model\.prior_fusion: must be 'late' with tiling"):
        ModelConfig(image_size=64, k=4, tiling=True, prior="memory", prior_fusion="early")


def test_non_square_training_end_to_end(big_demo, tmp_path):
    config = ModelConfig(image_size=(64, 128), k=4, psm_output_stride=2)
    dataset = MVTecAD(big_demo.parent, big_demo.name, "train", size=(64, 128))
    result = train(
        config,
        TrainConfig(epochs=1, batch_size=4, steps_per_epoch=2),
        dataset,
        tmp_path,
        device="cpu",
        progress=False,
    )
    model = Checkpoint.load(result.checkpoint).model()
    assert model.config.size == (64, 128)
    prediction = load_predictor(result.checkpoint, "cpu", backend="torch")(
        np.zeros((100, 150, 3), np.uint8)
    )
    assert prediction.anomaly_map.shape == (100, 150)


def test_kolektor_sdd2_trains_and_tests_at_its_natural_aspect(tmp_path):
    """KolektorSDD2 parts are tall (about 230 x 630 px): a (height, width) working size keeps
    their aspect through the auto-detected layout, training, evaluation and prediction."""
    from adps.data.spec import DataSpec

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        for i in range(n):
            image = rng.integers(90, 160, (160, 58, 3), dtype=np.uint8)  # 58 x 160 px, tall
            mask = np.zeros((160, 58), np.uint8)
            if split == "test" and i >= 2:
                mask[60:80, 20:35] = 255
                image[60:80, 20:35] = 20
            (tmp_path / split).mkdir(exist_ok=True)
            Image.fromarray(image).save(tmp_path / split / f"{i}.png")
            Image.fromarray(mask).save(tmp_path / split / f"{i}_GT.png")
    config = ModelConfig(image_size=(128, 64), k=4, psm_output_stride=2)
    spec = DataSpec(str(tmp_path))
    result = train(
        config,
        TrainConfig(epochs=1, batch_size=3, steps_per_epoch=2),
        open_split(spec, "train", config),
        tmp_path / "run",
        device="cpu",
        progress=False,
    )
    model = Checkpoint.load(result.checkpoint).model()
    evaluation = evaluate(model, open_split(spec, "test", config), "cpu", progress=False)
    assert evaluation.maps.shape == (4, 128, 64) and list(evaluation.labels) == [0, 0, 1, 1]
    prediction = load_predictor(result.checkpoint, "cpu", backend="torch")(
        tmp_path / "test" / "3.png"
    )
    assert prediction.anomaly_map.shape == (160, 58)
