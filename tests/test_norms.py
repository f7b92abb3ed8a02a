"""Re-estimating BatchNorm statistics on new images (adps.engine.norms): each layer's running
statistics against the mean and unbiased variance of the inputs it saw, computed by numpy;
every trained weight and the teacher's statistics untouched; training's micro-batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adps.config import ModelConfig, TrainConfig
from adps.data.synthesis import AnomalySynthesizer
from adps.engine.norms import MIN_SAMPLES, refresh_norm_statistics, student_and_psm_norms
from adps.engine.train import step_micro_batch
from adps.models.adps import ADPS

pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> ADPS:
    torch.manual_seed(0)
    return ADPS(ModelConfig(image_size=64, k=4), pretrained=False).eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 64, 64), generator=generator, dtype=torch.uint8)


def test_running_statistics_are_the_average_over_the_batches_seen():
    """A cumulative average over the batches: each layer's running mean is the mean of the
    batches' channel means, its running variance the mean of their unbiased variances, with
    the inputs recorded by hooks and the statistics computed by numpy."""
    model = _model()
    layers = student_and_psm_norms(model)
    assert layers and any(n.startswith("psm.") for n, m in model.named_modules() if m in layers)
    seen: dict[int, list[np.ndarray]] = {id(layer): [] for layer in layers}

    def record(layer, inputs):
        seen[id(layer)].append(inputs[0].detach().double().numpy())

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    config = TrainConfig(batch_size=4)
    count = refresh_norm_statistics(model, _images(10), config, None, seed=3)
    for hook in hooks:
        hook.remove()
    assert count == len(layers)
    micro = step_micro_batch(config, (64, 64), torch.device("cpu"))
    student_layers = [m for m in model.student.modules() if m in layers]
    assert student_layers and len(student_layers) < len(layers)
    for layer in layers:
        batches = seen[id(layer)]
        # ten images drawn 64 times; the student sees each as k x k = 16 patches
        per_image = 16 if layer in student_layers else 1
        assert sum(len(b) for b in batches) == MIN_SAMPLES * per_image
        assert max(len(b) for b in batches) == micro * per_image
        means = np.mean([b.mean(axis=(0, 2, 3)) for b in batches], axis=0)
        variances = np.mean([b.var(axis=(0, 2, 3), ddof=1) for b in batches], axis=0)
        np.testing.assert_allclose(layer.running_mean.numpy(), means, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.running_var.numpy(), variances, rtol=1e-4, atol=1e-5)
        assert layer.momentum == 0.1  # put back: training's exponential average
    assert not model.training


def test_weights_and_the_teachers_statistics_do_not_change_and_defects_are_synthesised():
    """No parameter moves and the teacher's BatchNorm buffers stay as they were (the memory
    holds its features); the batches carry synthetic defects, as training's do."""
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    synthesise = AnomalySynthesizer.__call__

    def spy(self, images, generator):
        out, masks = synthesise(self, images, generator)
        calls.append(float(masks.amax()))
        return out, masks

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AnomalySynthesizer, "__call__", spy)
        refresh_norm_statistics(model, _images(6, seed=1), TrainConfig(batch_size=8), None)
    assert calls and max(calls) == 1.0  # some batch held a synthetic defect
    after = model.state_dict()
    names = {name for name, _ in model.named_parameters()}
    for key, value in before.items():
        if key in names or key.startswith("teacher."):
            assert torch.equal(after[key], value), key
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert changed and all(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed
    )


def test_the_statistics_follow_a_photometric_change():
    """Darker images give the student's first layer a lower running mean than the same images
    as they were: the statistics are the new images', not the parent's."""
    bright, dark = _model(), _model()
    images = _images(8, seed=2)
    refresh_norm_statistics(bright, images, TrainConfig(batch_size=8), None)
    refresh_norm_statistics(
        dark, (images.float() * 0.5).to(torch.uint8), TrainConfig(batch_size=8), None
    )
    first_bright, first_dark = student_and_psm_norms(bright)[0], student_and_psm_norms(dark)[0]
    assert not torch.allclose(first_bright.running_var, first_dark.running_var)
