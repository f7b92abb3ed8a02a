"""Tests for DRAEM-style anomaly synthesis (adps.data.synthesis)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adps.config import SynthesisConfig
from adps.data import synthesis as _synthesis
from adps.data.synthesis import (
    AnomalySynthesizer,
    TextureBank,
    augment_textures,
    blend,
    perlin_noise,
)
from adps.errors import AdpsError
from datapaths import shared


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images in [0, 1] (a gradient plus noise), so textures differ from them."""
    g = _gen(seed)
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size)
    return (0.5 * ramp + 0.5 * torch.rand(b, 3, size, size, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def dtd_bank() -> TextureBank:
    return TextureBank.from_folder(shared("dtd", "images"), 64)


@pytest.fixture(scope="module", params=["dtd", "self", "bank_of_images"])
def synth(request: pytest.FixtureRequest) -> AnomalySynthesizer:
    if request.param == "dtd":
        textures = request.getfixturevalue("dtd_bank")  # only this one skips without DTD
    elif request.param == "bank_of_images":
        textures = TextureBank.from_images(_images(8, 64, seed=7))
    else:
        textures = None
    return AnomalySynthesizer(textures)


# -------------------------------------------------------------------------------------------- core


def test_output_shapes_ranges_and_untouched_samples(synth: AnomalySynthesizer) -> None:
    images = _images(16, 64)
    out, masks = synth(images, _gen(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert masks.shape == (16, 1, 64, 64) and masks.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    altered = masks.flatten(1).amax(dim=1) > 0
    assert 0 < altered.sum() < 16  # seed 1 alters some but not all of 16 samples
    assert torch.equal(out[~altered], images[~altered])  # bit for bit
    changed = (out != images).flatten(1).any(dim=1)
    assert changed[altered].all()
    # Outside the mask an altered image is untouched too.
    outside = (masks == 0).expand_as(images)
    assert torch.equal(out[outside], images[outside])


def test_altered_masks_are_never_empty_even_with_an_unreachable_threshold() -> None:
    config = SynthesisConfig(anomaly_prob=1.0, threshold=5.0)  # noise never exceeds ~1
    _out, masks = AnomalySynthesizer(None, config)(_images(4, 64), _gen(0))
    areas = masks.flatten(1).mean(dim=1)
    assert (areas > 0).all() and (areas < 0.05).all()  # the top-1% fallback


def test_same_seed_same_batch_different_seed_differs(synth: AnomalySynthesizer) -> None:
    images = _images(8, 64)
    out1, masks1 = synth(images, _gen(3))
    out2, masks2 = synth(images, _gen(3))
    assert torch.equal(out1, out2) and torch.equal(masks1, masks2)
    _out3, masks3 = synth(images, _gen(4))
    assert not torch.equal(masks1, masks3)


def test_mask_areas_vary_and_altered_share_matches_anomaly_prob(dtd_bank: TextureBank) -> None:
    synth = AnomalySynthesizer(dtd_bank, SynthesisConfig(anomaly_prob=1.0))
    _, masks = synth(_images(64, 256), _gen(5))
    areas = masks.flatten(1).mean(dim=1)
    assert (areas > 0).all()
    assert areas.std() > 0.02 and areas.max() - areas.min() > 0.1
    assert areas.max() < 0.9 and 0.01 < areas.mean() < 0.5

    n, p = 512, 0.3
    _, masks = AnomalySynthesizer(None, SynthesisConfig(anomaly_prob=p))(_images(n, 32), _gen(6))
    altered = (masks.flatten(1).amax(dim=1) > 0).float().mean().item()
    assert abs(altered - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_non_square_size_not_a_multiple_of_the_lattice() -> None:
    images = torch.rand(4, 3, 48, 80, generator=_gen(0))
    out, masks = AnomalySynthesizer(None, SynthesisConfig(anomaly_prob=1.0))(images, _gen(1))
    assert out.shape == images.shape and masks.shape == (4, 1, 48, 80)
    assert (masks.flatten(1).amax(dim=1) == 1).all()


def test_bank_of_another_size_is_resized(dtd_bank: TextureBank) -> None:
    out, masks = AnomalySynthesizer(dtd_bank, SynthesisConfig(anomaly_prob=1.0))(
        _images(2, 96), _gen(0)
    )
    assert out.shape == (2, 3, 96, 96) and (masks.flatten(1).amax(dim=1) == 1).all()


def test_rejects_bad_inputs() -> None:
    synth = AnomalySynthesizer(None)
    with pytest.raises(ValueError, match="must be float"):
        synth(torch.rand(2, 1, 32, 32), _gen(0))
    with pytest.raises(ValueError, match="must be float"):
        synth((torch.rand(2, 3, 32, 32) * 255).to(torch.uint8), _gen(0))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("anomaly_prob", 1.5),
        ("beta_max", -0.1),
        ("perlin_scale_min", 4),
        ("texture_ops", 11),
        ("threshold", math.nan),
    ],
)
def test_config_validation(field: str, value: float) -> None:
    kwargs = {field: value}
    if field == "perlin_scale_min":
        kwargs["perlin_scale_max"] = 2
    with pytest.raises(AdpsError, match=field):
        SynthesisConfig(**kwargs)


# -------------------------------------------------------------------------------------- host syncs


class _HostSync(AssertionError):
    """Raised by the patched tensor methods below: the synthesizer asked for a host sync."""


_SYNC_METHODS = (
    "item",
    "tolist",
    "nonzero",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "unique",
    "masked_select",
)
_SYNC_FUNCTIONS = ("nonzero", "unique", "masked_select", "unique_consecutive")


@contextlib.contextmanager
def _no_host_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make every tensor -> Python value conversion and data-dependent-shape op raise
    ``_HostSync``."""

    def forbid(name: str) -> Callable[..., None]:
        def raiser(*args: object, **kwargs: object) -> None:
            raise _HostSync(f"host sync: {name} called inside AnomalySynthesizer.__call__")

        return raiser

    with monkeypatch.context() as patch:
        for name in _SYNC_METHODS:
            patch.setattr(torch.Tensor, name, forbid(f"Tensor.{name}"))
        for name in _SYNC_FUNCTIONS:
            patch.setattr(torch, name, forbid(f"torch.{name}"))
        yield


# aten ops that copy device data to the host or whose output shape depends on the data.
_SYNC_ATEN = frozenset(
    {
        "_local_scalar_dense",
        "is_nonzero",
        "nonzero",
        "masked_select",
        "unique_dim",
        "_unique",
        "_unique2",
        "unique_consecutive",
        "repeat_interleave",
    }
)


class _NoSyncOps(TorchDispatchMode):
    """Raises on aten ops that need a host sync on CUDA, including boolean-mask indexing.

    This sees what the Python patches cannot, e.g. ``x[mask]`` (``aten.index`` with a bool index,
    which runs ``nonzero`` in C++). It is a bit stricter than CUDA: ``x[mask] = scalar`` is rejected
    too, although PyTorch turns it into a sync-free ``masked_fill_``.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__.rstrip("_")
        if name in _SYNC_ATEN:
            raise _HostSync(f"host sync: aten.{name}")
        if name in ("index", "index_put", "_index_put_impl"):
            indices = args[1] if len(args) > 1 else kwargs["indices"]
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                raise _HostSync(f"host sync: aten.{name} with a boolean mask")
        return func(*args, **(kwargs or {}))


@pytest.fixture(params=["random_bank", "self", "bank_of_images", "dtd"])
def any_synth(request: pytest.FixtureRequest) -> AnomalySynthesizer:
    """Synthesizers for every texture source, plus one that hits the empty-mask fallback."""
    if request.param == "dtd":
        textures = request.getfixturevalue("dtd_bank")  # skips without DTD; 64 px, so resized below
    elif request.param == "random_bank":
        textures = TextureBank(
            torch.randint(0, 256, (5, 3, 48, 48), generator=_gen(2), dtype=torch.uint8)
        )
    elif request.param == "bank_of_images":
        textures = TextureBank.from_images(_images(4, 48, seed=7))
    else:
        textures = None
    return AnomalySynthesizer(textures)


def test_patches_catch_host_syncs(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.arange(4.0)
    with _no_host_syncs(monkeypatch):
        for sync in (
            lambda: x[0].item(),
            x.tolist,
            x.nonzero,
            lambda: torch.nonzero(x),
            lambda: bool(x[0]),
            lambda: int(x[0]),
            lambda: 1 if x[0] else 0,
        ):
            with pytest.raises(_HostSync):
                sync()
    with _NoSyncOps():
        for sync in (lambda: x[x > 1], lambda: x.masked_fill(x > 1, 0).sum().item(), x.unique):
            with pytest.raises(_HostSync):
                sync()
        x.masked_fill(x > 1, 0).sum()  # stays on the device: allowed


@pytest.mark.parametrize(
    "config", [SynthesisConfig(), SynthesisConfig(anomaly_prob=1.0, threshold=0.9)]
)
def test_call_is_free_of_host_syncs(
    any_synth: AnomalySynthesizer, config: SynthesisConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tensor -> Python conversion, ``nonzero`` or boolean-mask indexing inside a call (on CPU).

    On CUDA each of these would stall the CPU until the GPU catches up; their absence on CPU
    means the same code path is sync-free on CUDA. A 0.9 threshold makes many noise fields empty,
    so the retry candidates and the top-1% fallback are exercised too.
    """
    synth = AnomalySynthesizer(any_synth.textures, config)
    images = _images(6, 48)
    expected = synth(images, _gen(0))
    with _no_host_syncs(monkeypatch):
        out, masks = synth(images, _gen(0))
    with _NoSyncOps():
        again = synth(images, _gen(0))
    assert torch.equal(out, expected[0]) and torch.equal(masks, expected[1])
    assert torch.equal(again[0], out) and torch.equal(again[1], masks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_call_is_free_of_host_syncs_on_cuda() -> None:
    device = torch.device("cuda")
    bank = TextureBank(torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8, device=device))
    images = torch.rand(8, 3, 64, 64, device=device)
    for synth in (AnomalySynthesizer(bank), AnomalySynthesizer(None)):
        generator = torch.Generator(device).manual_seed(0)
        synth(images, generator)  # warm-up: moves the bank and caches constants on the device
        torch.cuda.synchronize()
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out, masks = synth(images, generator)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        assert out.shape == images.shape and masks.shape == (8, 1, 64, 64)


def test_masks_take_the_first_non_empty_candidate_else_the_top_percent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    synth = AnomalySynthesizer(None)
    c, h, w = _synthesis._MASK_CANDIDATES, 10, 10
    fields = torch.full((3, c, h, w), -1.0)
    fields[0, 1, 2, 3] = 0.9  # sample 0: only candidate 1 is non-empty
    fields[1] = torch.linspace(-1.0, 0.4, c * h * w).view(c, h, w)  # sample 1: all below 0.5
    fields[2, 0, :4] = 0.7  # sample 2: the first candidate is non-empty
    fields[2, 1:] = 0.9
    monkeypatch.setattr(synth, "_noise", lambda n, h_, w_, g: fields.reshape(n, 1, h, w))
    masks = synth._masks(3, h, w, _gen(0))
    assert masks.shape == (3, 1, h, w)
    assert torch.equal(masks[0, 0], (fields[0, 1] > 0.5).float())  # the retry
    top = fields[1, 0] >= fields[1, 0].flatten().sort().values[-1]  # top 1% of 100 px of field 0
    assert torch.equal(masks[1, 0], top.float()) and masks[1].sum() == 1
    assert torch.equal(masks[2, 0], (fields[2, 0] > 0.5).float())  # first, though 1 is too


# ---------------------------------------------------------------------------------------- blending


def test_blend_formula_on_hand_made_tensors() -> None:
    image = torch.full((2, 3, 4, 4), 0.2)
    texture = torch.full((2, 3, 4, 4), 1.0)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1
    beta = torch.tensor([0.0, 0.5])
    out = blend(image, texture, mask, beta)
    assert torch.allclose(out[:, :, 2:], image[:, :, 2:])  # outside the mask: the image
    assert torch.allclose(out[0, :, :2], torch.tensor(1.0))  # beta 0: the texture
    assert torch.allclose(out[1, :, :2], torch.tensor(0.5 * 1.0 + 0.5 * 0.2))  # (1-b)A + bI
    assert torch.allclose(
        blend(image, texture, mask, 0.25)[:, :, :2], torch.tensor(0.75 + 0.25 * 0.2)
    )


# ------------------------------------------------------------------------------------ Perlin noise


def _draem_perlin(shape: tuple[int, int], res: tuple[int, int], angles: np.ndarray) -> np.ndarray:
    """DRAEM's ``rand_perlin_2d_np`` (perlin.py) with given gradient angles (res[0]+1, res[1]+1)."""
    delta = (res[0] / shape[0], res[1] / shape[1])
    d = (shape[0] // res[0], shape[1] // res[1])
    grid = np.mgrid[0 : res[0] : delta[0], 0 : res[1] : delta[1]].transpose(1, 2, 0) % 1
    gradients = np.stack((np.cos(angles), np.sin(angles)), axis=-1)

    def tile(s1: tuple, s2: tuple) -> np.ndarray:
        return np.repeat(
            np.repeat(gradients[s1[0] : s1[1], s2[0] : s2[1]], d[0], axis=0), d[1], axis=1
        )

    def dot(grad: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
        g = grid[: shape[0], : shape[1]]
        return (np.stack((g[..., 0] + shift[0], g[..., 1] + shift[1]), axis=-1) * grad).sum(axis=-1)

    n00 = dot(tile((0, -1), (0, -1)), (0, 0))
    n10 = dot(tile((1, None), (0, -1)), (-1, 0))
    n01 = dot(tile((0, -1), (1, None)), (0, -1))
    n11 = dot(tile((1, None), (1, None)), (-1, -1))
    t = grid[: shape[0], : shape[1]]
    t = 6 * t**5 - 15 * t**4 + 10 * t**3
    lerp = lambda a, b, w: (b - a) * w + a  # noqa: E731
    return math.sqrt(2) * lerp(lerp(n00, n10, t[..., 0]), lerp(n01, n11, t[..., 0]), t[..., 1])


def test_perlin_matches_draem_reference() -> None:
    res_y, res_x = torch.tensor([1, 4, 32]), torch.tensor([8, 2, 32])
    noise = perlin_noise(64, 64, res_y, res_x, _gen(0), max_res=32)
    # perlin_noise draws its (B, 33, 33) gradient angles first; redraw them from the same seed.
    angles = torch.rand(3, 33, 33, generator=_gen(0)).mul_(2 * math.pi).double().numpy()
    for i, (ry, rx) in enumerate(zip(res_y.tolist(), res_x.tolist(), strict=True)):
        reference = _draem_perlin((64, 64), (ry, rx), angles[i, : ry + 1, : rx + 1])
        np.testing.assert_allclose(noise[i].numpy(), reference, atol=1e-5)


def test_perlin_range_and_frequency() -> None:
    b = 16
    ones, full = torch.ones(b, dtype=torch.long), torch.full((b,), 32)
    coarse = perlin_noise(128, 128, ones, ones, _gen(0), max_res=32)
    fine = perlin_noise(128, 128, full, full, _gen(0), max_res=32)
    for noise in (coarse, fine):
        assert noise.abs().max() <= 1.0 + 1e-5  # sqrt(2) * sqrt(1/2)
    assert fine.abs().max() > 0.7 and fine.std() > 0.15

    def total_variation(x: torch.Tensor) -> float:
        return (x.diff(dim=1).abs().mean() + x.diff(dim=2).abs().mean()).item()

    assert total_variation(fine) > 10 * total_variation(coarse)


# ---------------------------------------------------------------------------------------- textures


def test_texture_bank_from_dtd_folder() -> None:
    bank = TextureBank.from_folder(shared("dtd", "images"), (32, 48))
    assert len(bank) == 120
    assert bank.textures.shape == (120, 3, 32, 48) and bank.textures.dtype == torch.uint8
    assert not bank.recolour
    assert bank.sample(5, _gen(0)).shape == (5, 3, 32, 48)


def test_texture_bank_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(AdpsError, match="empty"):
        TextureBank.from_folder(tmp_path / "empty", 32)
    with pytest.raises(AdpsError, match="does not exist"):
        TextureBank.from_folder(tmp_path / "missing", 32)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(AdpsError, match=r"a\.jpg"):
        TextureBank.from_folder(tmp_path / "broken", 32)


def test_texture_bank_from_images_accepts_float_and_uint8() -> None:
    images = _images(3, 16)
    bank = TextureBank.from_images(images)
    assert bank.textures.dtype == torch.uint8 and bank.recolour
    assert torch.equal(bank.textures, TextureBank.from_images(bank.textures).textures)


def test_augment_textures_keeps_ranges_and_changes_textures(dtd_bank: TextureBank) -> None:
    textures = dtd_bank.textures[:32]
    out = augment_textures(textures, 3, _gen(0))
    assert out.dtype == torch.uint8 and out.shape == textures.shape
    assert (out != textures).flatten(1).any(dim=1).float().mean() > 0.9

    as_float = textures.float() / 255
    out = augment_textures(as_float, 3, _gen(0))
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    assert (out - as_float).abs().flatten(1).mean(dim=1).min() > 0

    every_op = augment_textures(as_float, 10, _gen(1))  # all ten ops at once stay in range too
    assert every_op.min() >= 0 and every_op.max() <= 1 and torch.isfinite(every_op).all()
    assert torch.equal(augment_textures(textures, 0, _gen(0)), textures)
