"""The training images' look at the teacher's BatchNorm layers, and moving a new look onto it
(adps.engine.teacher_look): the recorded moments against numpy over the layers' inputs, the
alignment against its definition (a new look leaves every layer with the recorded moments),
what it does to the features of a darker copy of the same images, and the checkpoint field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adps.config import ModelConfig
from adps.engine.checkpoint import Checkpoint
from adps.engine.teacher_look import align_teacher_norms, teacher_norm_targets, teacher_norms
from adps.models.adps import ADPS
from adps.models.memory import embed

pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> ADPS:
    torch.manual_seed(0)
    return ADPS(ModelConfig(image_size=64, k=4), pretrained=False).eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images (a random field blurred), so the teacher sees structure, not noise."""
    generator = torch.Generator().manual_seed(seed)
    field = torch.rand((n, 3, 16, 16), generator=generator)
    up = torch.nn.functional.interpolate(field, size=(64, 64), mode="bilinear")
    return (up * 255).round().to(torch.uint8)


def _dark(images: torch.Tensor) -> torch.Tensor:
    """A dimmer, harder lamp: gamma 1.6 and 80 % brightness."""
    return ((images.float() / 255) ** 1.6 * 0.8 * 255).round().to(torch.uint8)


def _record_inputs(layers: dict) -> tuple[dict[str, np.ndarray], list]:
    """Pre-hooks that keep each layer's latest input, by name, in float64 (remove the hooks)."""
    seen: dict[str, np.ndarray] = {}

    def record(name):
        def hook(_module, inputs):
            seen[name] = inputs[0].detach().double().numpy()

        return hook

    return seen, [layer.register_forward_pre_hook(record(n)) for n, layer in layers.items()]


def _normalised_moments(model: ADPS, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Reference: each teacher BatchNorm layer's input recorded by a hook in one pass, then
    normalised with its running statistics and summarised by numpy in float64."""
    layers = teacher_norms(model)
    seen, hooks = _record_inputs(layers)
    with torch.no_grad():
        model.teacher(model.normalize(images.float() / 255))
    for hook in hooks:
        hook.remove()
    out = {}
    for name, layer in layers.items():
        mean = layer.running_mean.double().numpy()[None, :, None, None]
        scale = np.sqrt(layer.running_var.double().numpy() + layer.eps)[None, :, None, None]
        normalised = (seen[name] - mean) / scale
        out[name] = np.stack([normalised.mean(axis=(0, 2, 3)), normalised.std(axis=(0, 2, 3))])
    return out


def test_the_recorded_look_is_each_layer_s_normalised_mean_and_spread():
    """Seven images in batches of three (a short last batch weighs by its images): every
    teacher BatchNorm layer, and no other, against numpy over its inputs."""
    model = _model()
    images = _images(7)
    targets = teacher_norm_targets(model, images, batch_size=3)
    assert set(targets) == set(teacher_norms(model)) and len(targets) > 10
    assert all(name.startswith("teacher.") for name in targets)
    want = _normalised_moments(model, images)
    for name, value in targets.items():
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        np.testing.assert_allclose(value.numpy(), want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_aligned_a_new_look_leaves_every_layer_with_the_recorded_moments():
    """After the alignment on darker images, those images leave each layer (measured by the
    numpy reference, with the aligned statistics) with the training images' mean and spread,
    where the unaligned teacher leaves them far from it; a channel constant in training or on
    the new images (no spread to match) keeps its statistics; no weight changes."""
    model = _model()
    bright, dark = _images(8), _dark(_images(8))
    targets = teacher_norm_targets(model, bright)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    before = _normalised_moments(model, dark)
    layers = teacher_norms(model)
    running = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in layers.items()}
    seen, hooks = _record_inputs(layers)  # each layer's input in the aligning pass (run first)
    assert align_teacher_norms(model, dark, targets) == len(targets)
    for hook in hooks:
        hook.remove()
    after = _normalised_moments(model, dark)
    first = next(iter(targets))
    assert np.abs(before[first][0] - targets[first][0].numpy()).max() > 0.1  # a real change
    constant = 0
    for name, target in targets.items():
        mean, var = running[name]
        spread = seen[name].std(axis=(0, 2, 3)) / np.sqrt(var.double().numpy() + 1e-3)
        wanted = target.numpy()
        # BatchNorm divides by sqrt(var + eps): it cannot spread a channel whose inputs vary
        # less than sqrt(eps) x the wanted spread (the running variance stops at 0)
        reachable = (seen[name].std(axis=(0, 2, 3)) / np.maximum(wanted[1], 1e-12)) ** 2 > 2e-3
        live = (wanted[1] > 1e-6) & (spread > 1e-4) & reachable
        kept = torch.from_numpy((wanted[1] <= 1e-6) | (spread < 1e-6))
        np.testing.assert_allclose(
            after[name][:, live], wanted[:, live], rtol=1e-3, atol=1e-3, err_msg=name
        )
        layer = layers[name]
        assert torch.equal(layer.running_mean[kept], mean[kept])
        assert torch.equal(layer.running_var[kept], var[kept])
        constant += int(kept.sum())
    assert constant  # the random teacher has dead channels: the rule was exercised
    assert all(torch.equal(v, weights[k]) for k, v in model.named_parameters())
    assert not model.training


def test_aligned_the_darker_copies_features_come_closer_to_the_originals():
    """The same scenes under the dimmer lamp: their embedded teacher features (what the memory
    holds) move towards the originals' features, position by position."""
    model = _model()
    bright, dark = _images(8, seed=1), _dark(_images(8, seed=1))

    def features(images):
        with torch.no_grad():
            return embed(model.teacher(model.normalize(images.float() / 255)))

    original = features(bright)
    gap_before = (features(dark) - original).norm(dim=1).mean()
    align_teacher_norms(model, dark, teacher_norm_targets(model, bright))
    gap_after = (features(dark) - original).norm(dim=1).mean()
    assert gap_after < 0.7 * gap_before


def test_at_most_align_images_are_measured_a_seeded_choice(monkeypatch):
    """More new images than ALIGN_IMAGES: a seeded subset sets the statistics, the same for
    the same seed, another for another seed."""
    import adps.engine.teacher_look as look

    monkeypatch.setattr(look, "ALIGN_IMAGES", 3)
    images = _dark(_images(9, seed=2))
    targets = teacher_norm_targets(_model(), _images(4))
    results = []
    for seed in (0, 0, 1):
        model = _model()
        align_teacher_norms(model, images, targets, seed=seed)
        results.append(next(iter(teacher_norms(model).values())).running_mean.clone())
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], results[2])
    seen = []
    model = _model()
    layer = next(iter(teacher_norms(model).values()))
    hook = layer.register_forward_pre_hook(lambda _m, inputs: seen.append(len(inputs[0])))
    align_teacher_norms(model, images, targets)
    hook.remove()
    assert seen == [3]


def test_targets_for_another_teacher_are_refused():
    model = _model()
    targets = teacher_norm_targets(model, _images(2))
    targets.pop(next(iter(targets)))
    with pytest.raises(ValueError, match="no targets for the teacher's layers"):
        align_teacher_norms(model, _images(2), targets)


def test_the_checkpoint_keeps_the_look(tmp_path):
    """Saved and loaded with the model; a checkpoint without it (older files) reads None."""
    model = _model()
    targets = teacher_norm_targets(model, _images(3))
    path = Checkpoint.of(model, teacher_norm_targets=targets).save(tmp_path / "m.pt")
    loaded = Checkpoint.load(path).teacher_norm_targets
    assert loaded is not None and set(loaded) == set(targets)
    assert all(torch.equal(loaded[k], v) for k, v in targets.items())
    assert (
        Checkpoint.load(Checkpoint.of(model).save(tmp_path / "old.pt")).teacher_norm_targets is None
    )
