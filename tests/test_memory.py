"""The memory prior: coreset and nearest-neighbour search against brute force, the embedding
against scipy, the fusion's normalisation, the bank's round trip through the checkpoint and the
exports, and a model without the prior exactly as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter
from scipy.spatial.distance import cdist

from adps.config import ModelConfig
from adps.engine.checkpoint import Checkpoint
from adps.engine.prior import fit_prior
from adps.engine.runtime import OnnxRunner, load_torchscript
from adps.errors import AdpsError
from adps.export import export_onnx, export_torchscript
from adps.models import memory
from adps.models.adps import ADPS
from adps.models.memory import (
    embed,
    greedy_coreset,
    leave_one_out_distances,
    nearest_distances,
)

SMALL = {"image_size": 64, "k": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force_greedy(x: np.ndarray, size: int) -> list[int]:
    """PatchCore's k-centre greedy, spelled out with the full distance matrix."""
    d = cdist(x, x, "sqeuclidean")
    chosen = [0]
    while len(chosen) < size:
        chosen.append(int(d[:, chosen].min(axis=1).argmax()))
    return chosen


@pytest.mark.parametrize(("n", "dim", "size"), [(50, 3, 10), (200, 16, 40), (64, 8, 64)])
def test_coreset_equals_brute_force_greedy(n, dim, size):
    x = np.random.default_rng(n).normal(size=(n, dim))
    got = greedy_coreset(torch.from_numpy(x), size).tolist()
    assert got == brute_force_greedy(x, size)


@pytest.mark.parametrize(
    ("n", "dim", "size", "candidates"), [(300, 4, 60, 8), (500, 16, 120, 32), (400, 2, 400, 16)]
)
def test_coreset_in_rounds_equals_brute_force_greedy(monkeypatch, n, dim, size, candidates):
    """With few candidates per round, most rounds stop early (a row outside the round could be
    the farthest), so many rounds and distance updates run: the choice must still be plain
    greedy's, row for row."""
    monkeypatch.setattr(memory, "_CANDIDATES", candidates)
    rounds = []
    x = np.random.default_rng(n).normal(size=(n, dim))
    got = greedy_coreset(torch.from_numpy(x), size, progress=rounds.append).tolist()
    assert got == brute_force_greedy(x, size)
    assert len(rounds) > size // candidates and rounds[-1] == size  # progress, round by round


def test_coreset_covers_as_the_sequential_greedy_does():
    """On float32 features the rounds may resolve near-ties differently from the one-row-at-a-
    time loop; what matters, the coverage radius (the farthest row's distance to its nearest
    chosen row), stays within 1% of brute force's."""
    x = np.random.default_rng(7).standard_t(3, size=(3000, 24)).astype(np.float32)
    ours = greedy_coreset(torch.from_numpy(x), 200).numpy()
    radius = cdist(x, x[ours]).min(axis=1).max()
    reference = cdist(x, x[brute_force_greedy(x.astype(np.float64), 200)]).min(axis=1).max()
    assert radius <= 1.01 * reference


def test_coreset_keeps_the_rare_feature():
    """An outlier among near-duplicates is the second centre chosen; random subsampling of 3
    out of 101 rows would almost never keep it."""
    x = torch.zeros(101, 4)
    x[:100] += torch.randn(100, 4, generator=torch.Generator().manual_seed(0)) * 0.01
    x[57] = 10.0
    assert 57 in greedy_coreset(x, 3).tolist()


def test_coreset_projects_wide_features_and_rejects_bad_sizes():
    x = torch.randn(300, 512, generator=torch.Generator().manual_seed(1))
    chosen = greedy_coreset(x, 30)
    assert len(set(chosen.tolist())) == 30  # distinct rows, on the random projection
    with pytest.raises(ValueError, match=r"1\.\.300"):
        greedy_coreset(x, 301)


def _as_maps(rows: np.ndarray, batch: int, h: int, w: int) -> torch.Tensor:
    """(batch * h * w, C) rows, image-major then row-major, as a (batch, C, h, w) map."""
    return torch.from_numpy(rows).reshape(batch, h, w, -1).permute(0, 3, 1, 2)


def _as_rows(maps: torch.Tensor) -> np.ndarray:
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]).numpy()


@pytest.mark.parametrize(("neighbors", "chunk"), [(1, 4096), (1, 7), (3, 7), (5, 64)])
def test_nearest_distances_equal_brute_force(neighbors, chunk):
    rng = np.random.default_rng(neighbors * chunk)
    queries, bank = rng.normal(size=(2 * 4 * 5, 6)), rng.normal(size=(50, 6))
    want = np.sort(cdist(queries, bank), axis=1)[:, :neighbors]
    got = nearest_distances(_as_maps(queries, 2, 4, 5), torch.from_numpy(bank), neighbors, chunk)
    assert got.shape == (2, neighbors, 4, 5)
    np.testing.assert_allclose(_as_rows(got), want, rtol=1e-9, atol=1e-9)


def test_nearest_distances_leave_own_group_out():
    rng = np.random.default_rng(3)
    queries, bank = rng.normal(size=(3 * 2 * 5, 5)), rng.normal(size=(45, 5))
    image_groups, b_groups = np.array([2, 0, 3]), rng.integers(0, 4, 45)
    q_groups = np.repeat(image_groups, 2 * 5)  # every position of an image is in its group
    d = cdist(queries, bank)
    d[q_groups[:, None] == b_groups[None, :]] = np.inf
    want = np.sort(d, axis=1)[:, :2]
    got = nearest_distances(
        _as_maps(queries, 3, 2, 5),
        torch.from_numpy(bank),
        2,
        chunk=10,
        query_groups=torch.from_numpy(image_groups),
        bank_groups=torch.from_numpy(b_groups),
    )
    np.testing.assert_allclose(_as_rows(got), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("neighbors", "chunk"), [(1, 512), (1, 7), (3, 16)])
def test_leave_one_out_distances_equal_brute_force(neighbors, chunk):
    rng = np.random.default_rng(chunk)
    rows, bank = rng.normal(size=(60, 5)), rng.normal(size=(45, 5))
    groups, bank_groups = rng.integers(0, 4, 60), rng.integers(0, 4, 45)
    d = cdist(rows, bank)
    d[groups[:, None] == bank_groups[None, :]] = np.inf
    want = np.sort(d, axis=1)[:, :neighbors].mean(axis=1)
    done = []
    got = leave_one_out_distances(
        *map(torch.from_numpy, (rows, groups, bank, bank_groups)),
        neighbors,
        chunk,
        progress=done.append,
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)
    assert done[-1] == len(rows) and len(done) == -(-len(rows) // chunk)


def test_embedding_is_3x3_mean_and_upsampled_concatenation():
    g = torch.Generator().manual_seed(0)
    features = [
        torch.randn(2, 3, 16, 16, generator=g),
        torch.randn(2, 4, 8, 8, generator=g),
        torch.randn(2, 5, 4, 4, generator=g),
    ]
    got = embed(features)
    assert got.shape == (2, 9, 8, 8)
    # zero padding counted, as avg_pool2d's default: scipy's uniform filter with cval 0
    level1 = uniform_filter(features[1].numpy(), size=(1, 1, 3, 3), mode="constant", cval=0.0)
    np.testing.assert_allclose(got[:, :4].numpy(), level1, atol=1e-6)
    level2 = uniform_filter(features[2].numpy(), size=(1, 1, 3, 3), mode="constant", cval=0.0)
    up = torch.nn.functional.interpolate(
        torch.from_numpy(level2), size=(8, 8), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(got[:, 4:].numpy(), up.numpy(), atol=1e-6)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (10, 3, 64, 64), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def fitted(images) -> ADPS:
    torch.manual_seed(0)
    model = ADPS(ModelConfig(**SMALL, prior="memory", memory_size=100), pretrained=False)
    fit_prior(model, images[:6], holdout=images[6:])
    return model.eval()


def _loo_prior(features: np.ndarray) -> np.ndarray:
    """Brute force: each image's nearest distances to every other image's features."""
    return np.stack(
        [
            cdist(features[i], np.concatenate([f for j, f in enumerate(features) if j != i])).min(
                axis=1
            )
            for i in range(len(features))
        ]
    )


def _statistics(values: np.ndarray) -> list[float]:
    values = np.sort(values.ravel())
    return [values.mean(), values.std(ddof=1), values[int(np.ceil(0.999 * len(values))) - 1]]


def _features(model: ADPS, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        teacher = model.teacher(model.normalize(images.float() / 255))
    e = embed(teacher)
    return e.permute(0, 2, 3, 1).reshape(len(images), -1, e.shape[1]).numpy()


def test_fit_bounds_the_bank_and_takes_holdout_statistics(fitted, images):
    """The bank holds memory_size rows; the statistics are those of the held-out images'
    nearest distances to the bank (mean, std, 99.9th percentile); the fused map is
    1 - 2^-(prior / p99.9 x (1 + 2 p)), with the score of that map."""
    memory = fitted.memory
    assert memory.bank.shape == (100, 40 + 112)
    held_out = cdist(_features(fitted, images[6:]).reshape(-1, 152), memory.bank.numpy())
    np.testing.assert_allclose(memory.stats.numpy(), _statistics(held_out.min(axis=1)), rtol=1e-4)
    x = images[6:].float() / 255
    with torch.no_grad():
        psm, teacher = fitted.psm_map(x)
        prior = memory(teacher, (64, 64))
        fused, score = fitted(x)
    want = 1 - 2.0 ** (-(prior / memory.stats[2]) * (1 + 2 * psm))
    torch.testing.assert_close(fused, want)
    torch.testing.assert_close(score, fitted.score(fused))
    # the pixel threshold 0.5 means "farther than the normal 99.9th percentile" where the PSM
    # is silent
    assert torch.equal(fused[psm < 1e-6] > 0.5, prior[psm < 1e-6] > memory.stats[2])


def test_leave_one_out_statistics_do_not_see_an_image_s_own_features(images):
    """Without a held-out split each training image is scored against the bank without its
    own features: the statistics are those of a new image, not the near-zero self-match."""
    torch.manual_seed(0)
    model = ADPS(ModelConfig(**SMALL, prior="memory", memory_size=10_000), pretrained=False)
    fit = fit_prior(model, images[:6])
    assert fit.statistics == "leave-one-out" and fit.bank_size == 6 * 8 * 8
    with torch.no_grad():
        _, teacher = model.eval().psm_map(images[:6].float() / 255)
        self_match = model.memory(teacher, (64, 64))
    # every feature is in the bank (a self-match is 0 up to float32 round-off) ...
    assert self_match.max() < 0.01 * model.memory.stats[0]
    # ... but the statistics are those of each image against the other images' features
    want = _statistics(_loo_prior(_features(model, images[:6])))
    np.testing.assert_allclose(model.memory.stats.numpy(), want, rtol=1e-4)


def test_bank_round_trips_through_the_checkpoint(fitted, images):
    ckpt = Checkpoint.of(fitted)
    again = ckpt.model()
    torch.testing.assert_close(again.memory.bank, fitted.memory.bank, rtol=0, atol=0)
    torch.testing.assert_close(again.memory.stats, fitted.memory.stats, rtol=0, atol=0)
    x = images[6:].float() / 255
    with torch.no_grad():
        for got, want in zip(again(x), fitted(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bank_travels_inside_the_exports(fitted, images, tmp_path):
    """Export parity within 1e-3 with the bank as a constant of the graph (a batch size that was
    not traced, too), on images the bank does not hold: an exact self-match is a distance of 0
    whose round-off, through the square root, differs between backends."""
    with torch.no_grad():
        want = [t.numpy() for t in fitted(images[6:9].float() / 255)]
    runner = OnnxRunner(export_onnx(fitted, tmp_path / "m.onnx"))
    assert runner.metadata["model_config"]["prior"] == "memory"
    for got, ref in zip(runner(images[6:9].numpy()), want, strict=True):
        assert np.abs(got - ref).max() < 1e-3
    scripted, _ = load_torchscript(export_torchscript(fitted, tmp_path / "m.ts"))
    with torch.no_grad():
        for got, ref in zip(scripted(images[6:9]), want, strict=True):
            assert np.abs(got.numpy() - ref).max() < 1e-3


def test_unfitted_bank_is_a_clear_error(images):
    model = ADPS(ModelConfig(**SMALL, prior="memory"), pretrained=False).eval()
    with pytest.raises(RuntimeError, match="memory bank is empty"):
        model(images[:1].float() / 255)


def test_without_the_prior_the_model_is_exactly_as_before(fitted, images):
    """Same weights: the paper's model has no memory entries, and its maps and scores are the
    PSM's, bit for bit, as the prior model's before fusion."""
    plain = ADPS(ModelConfig(**SMALL), pretrained=False)
    state = {k: v for k, v in fitted.state_dict().items() if not k.startswith("memory.")}
    plain.load_state_dict(state, strict=True)
    assert plain.memory is None and not any(k.startswith("memory.") for k in plain.state_dict())
    x = images[:4].float() / 255
    with torch.no_grad():
        psm, _ = fitted.psm_map(x)
        got_map, got_score = plain.eval()(x)
    torch.testing.assert_close(got_map, psm, rtol=0, atol=0)
    torch.testing.assert_close(got_score, plain.score(psm), rtol=0, atol=0)


def test_the_memory_needs_the_teacher():
    with pytest.raises(AdpsError, match=r"model\.prior"):
        ModelConfig(**SMALL, prior="memory", variant="no_teacher")


@pytest.fixture(scope="module")
def early(images) -> ADPS:
    torch.manual_seed(0)
    model = ADPS(
        ModelConfig(**SMALL, prior="memory", memory_size=10_000, prior_fusion="early"),
        pretrained=False,
    )
    fit = fit_prior(model, images[:6])
    assert fit.bank_size == 6 * 8 * 8  # every feature kept: leave-one-out is exact here
    return model


def test_early_fusion_feeds_the_leave_one_out_prior_to_the_psm(early, images):
    """In training, image i's prior input is (its distance to the other images' features -
    mean) / std, at stride 8 and pooled to 16; the PSM's first up-block takes the extra channel,
    and the prior's own computation carries no gradient."""
    captured = {}
    hook = early.psm.register_forward_pre_hook(lambda m, args: captured.setdefault("c", args[0]))
    x = images[:6].float() / 255
    early.train()
    try:
        out = early(x, groups=torch.arange(6))
    finally:
        hook.remove()
    c = captured["c"]
    assert [f.shape[1] for f in c] == [24, 41, 113]
    loo = _loo_prior(_features(early, images[:6])).reshape(6, 1, 8, 8)
    mean, std = early.memory.stats[0].item(), early.memory.stats[1].item()
    want = (loo - mean) / std
    np.testing.assert_allclose(c[1][:, 40:].detach().numpy(), want, rtol=1e-4, atol=1e-4)
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(want), 2).numpy()
    np.testing.assert_allclose(c[2][:, 112:].detach().numpy(), pooled, rtol=1e-4, atol=1e-4)
    out["logits"].sum().backward()
    assert early.psm.up1.up.weight.grad.abs().sum() > 0
    early.zero_grad(set_to_none=True)


def test_early_fusion_map_is_the_psm_probability_and_exports(early, images, tmp_path):
    early.eval()
    x = images[6:9].float() / 255
    with torch.no_grad():
        fused, score = early(x)
        psm, _ = early.psm_map(x)
    torch.testing.assert_close(fused, psm, rtol=0, atol=0)  # no late mixing
    assert fused.min() >= 0 and fused.max() <= 1
    runner = OnnxRunner(export_onnx(early, tmp_path / "early.onnx"))
    for got, ref in zip(runner(images[6:9].numpy()), (fused.numpy(), score.numpy()), strict=True):
        assert np.abs(got - ref).max() < 1e-3
