"""The ADPS model (adps.models.adps) and its losses (adps.engine.losses): shapes, the patch
student, WMB fusion, the ablation variants, the blur and the image score, the frozen teacher."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from adps.config import ModelConfig, TrainConfig
from adps.engine.losses import adps_loss, distillation_loss, focal_loss
from adps.errors import AdpsError
from adps.models.adps import ADPS, gaussian_blur, merge_patches, split_patches

SMALL = {"image_size": 64, "k": 4}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ADPS(ModelConfig(**SMALL))


def test_output_shapes_train_and_eval(model):
    x = torch.rand(2, 3, 64, 64)
    model.train()
    out = model(x)
    assert out["logits"].shape == (2, 2, 64, 64)
    assert [t.shape[1] for t in out["teacher"]] == [24, 40, 112]
    assert [t.shape for t in out["teacher"]] == [s.shape for s in out["student"]]
    model.eval()
    with torch.no_grad():
        amap, score = model(x)
    assert amap.shape == (2, 1, 64, 64) and score.shape == (2,)
    assert torch.all((amap >= 0) & (amap <= 1))


def test_split_merge_round_trip_and_order():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    patches = split_patches(x, 4)
    assert patches.shape == (32, 3, 2, 2)
    assert torch.equal(patches[1], x[0, :, 0:2, 2:4])  # row-major: second patch is to the right
    assert torch.equal(patches[4], x[0, :, 2:4, 0:2])
    assert torch.equal(patches[16], x[1, :, 0:2, 0:2])
    assert torch.equal(merge_patches(patches, 4), x)


@pytest.mark.slow
@pytest.mark.parametrize("split_after", [(), (1,)])
def test_batched_patches_equal_separate_patch_forwards(split_after):
    k = 2 if split_after else 4
    torch.manual_seed(1)
    m = ADPS(
        ModelConfig(image_size=64 * (k if split_after else 1), k=k, split_after_stages=split_after),
        pretrained=False,
    ).eval()
    x = m.normalize(torch.rand(2, 3, m.config.image_size, m.config.image_size))
    with torch.no_grad():
        batched = m.student_features(x)
        p = m.config.image_size // k
        for b in range(2):
            for i in range(k):
                for j in range(k):
                    patch = x[b : b + 1, :, i * p : (i + 1) * p, j * p : (j + 1) * p]
                    if split_after:  # stage 1 separately, then each quarter of its output
                        feats = m.student.stages[0](m.student.stem(patch))
                        q = feats.shape[-1] // k
                        s1 = batched[0][
                            b : b + 1, :, i * k * q : (i + 1) * k * q, j * k * q : (j + 1) * k * q
                        ]
                        torch.testing.assert_close(s1, feats, atol=1e-5, rtol=1e-5)
                        sub = feats[:, :, :q, :q]
                        deeper = m.student.stages[1](sub)
                        h = deeper.shape[-1]
                        got = batched[1][
                            b : b + 1, :, i * k * h : i * k * h + h, j * k * h : j * k * h + h
                        ]
                        torch.testing.assert_close(got, deeper, atol=1e-5, rtol=1e-5)
                        continue
                    separate = m.student(patch)
                    for level, feature in enumerate(separate):
                        h = feature.shape[-1]
                        got = batched[level][b : b + 1, :, i * h : (i + 1) * h, j * h : (j + 1) * h]
                        torch.testing.assert_close(got, feature, atol=1e-5, rtol=1e-5)


def test_k_must_divide_the_input():
    with pytest.raises(AdpsError, match="divisible"):
        ModelConfig(image_size=100, k=8)
    with pytest.raises(AdpsError, match="divisible"):
        ModelConfig(image_size=256, k=32)


def test_wmb_on_hand_made_features(model):
    # rows are channels, columns positions: T = (1, 0) and (0, 2); S = (3, 0) and (0, -1)
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(1, 2, 1, 2)
    s = torch.tensor([[3.0, 0.0], [0.0, -1.0]]).view(1, 2, 1, 2)
    fused = model._fuse(0, t, s)
    # position 0: cos = 1 -> weight 0; position 1: cos = -1 -> weight 2
    torch.testing.assert_close(fused, torch.tensor([[0.0, 0.0], [0.0, 4.0]]).view(1, 2, 1, 2))


def test_fusion_variants():
    t = torch.randn(1, 24, 4, 4)
    s = torch.randn(1, 24, 4, 4)
    diff = ADPS(ModelConfig(**SMALL, fusion="diff"), pretrained=False)
    torch.testing.assert_close(diff._fuse(0, t, s), t - s)
    conv = ADPS(ModelConfig(**SMALL, fusion="conv"), pretrained=False)
    assert conv._fuse(0, t, s).shape == t.shape
    mse = ADPS(ModelConfig(**SMALL, mask_type="mse"), pretrained=False)
    torch.testing.assert_close(mse._fuse(0, t, s), (t - s).pow(2).mean(1, keepdim=True) * t)


@pytest.mark.parametrize("variant", ["no_psm_wmb", "no_student", "no_teacher"])
def test_ablation_variants_run_and_train(variant):
    m = ADPS(ModelConfig(**SMALL, variant=variant), pretrained=False)
    x = torch.rand(2, 3, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 10:30, 10:30] = 1
    loss, parts = adps_loss(m.train()(x), mask, TrainConfig())
    loss.backward()
    assert torch.isfinite(loss)
    assert ("focal" in parts) == (variant != "no_psm_wmb")
    assert ("distill" in parts) == (variant == "no_psm_wmb")
    with torch.no_grad():
        amap, score = m.eval()(x)
    assert amap.shape == (2, 1, 64, 64) and score.shape == (2,)


def test_distillation_loss_by_hand():
    t = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2).contiguous()
    s = t.clone()
    s[:, :, 0, 0] = torch.tensor([-1.0, 0.0])  # top-left opposite: cos -1; elsewhere cos 1
    mask = torch.zeros(1, 1, 4, 4)
    # no anomaly: loss = mean(1 - cos) = (2 + 0 + 0 + 0) / 4
    assert distillation_loss([t], [s], mask).item() == pytest.approx(0.5)
    # top-left 2x2 of the mask anomalous -> area-downsampled Y = 1 there: loss there = cos = -1
    mask[:, :, :2, :2] = 1
    assert distillation_loss([t], [s], mask).item() == pytest.approx(-0.25)
    # a half-covered cell gives Y = 0.5: 0.5 * (1 - cos) + 0.5 * cos = 0.5 whatever cos
    mask.zero_()
    mask[:, :, 0, :2] = 1
    assert distillation_loss([t], [s], mask).item() == pytest.approx(0.5 / 4)
    # levels are summed
    assert distillation_loss([t, t], [s, s], mask).item() == pytest.approx(2 * 0.5 / 4)


def test_focal_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]]).T.reshape(1, 2, 1, 2)
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    p1 = torch.softmax(torch.tensor([0.0, 0.0]), 0)[1]  # 0.5 for the anomalous pixel
    p0 = torch.softmax(torch.tensor([2.0, -1.0]), 0)[0]  # normal class prob, second pixel
    expected = (-((1 - p1) ** 2) * torch.log(p1) - (1 - p0) ** 2 * torch.log(p0)) / 2
    assert focal_loss(logits, target, 2.0).item() == pytest.approx(expected.item(), rel=1e-6)
    expected_ce = (-torch.log(p1) - torch.log(p0)) / 2  # gamma 0 is cross-entropy
    assert focal_loss(logits, target, 0.0).item() == pytest.approx(expected_ce.item(), rel=1e-6)


def test_gaussian_blur_matches_scipy():
    x = np.random.default_rng(0).random((2, 1, 48, 40)).astype(np.float32)
    got = gaussian_blur(torch.from_numpy(x), 4.0).numpy()
    expected = np.stack(
        [gaussian_filter(x[i, 0], 4.0, mode="mirror", truncate=4.0) for i in range(2)]
    )[:, None]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_score_is_max_of_smoothed_map(model):
    model.eval()
    with torch.no_grad():
        amap, score = model(torch.rand(2, 3, 64, 64))
    expected = [gaussian_filter(amap[i, 0].numpy(), 4.0, mode="mirror").max() for i in range(2)]
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("share", [0.01, 0.1, 1.0])
def test_top_mean_score_is_the_mean_of_the_highest_smoothed_pixels(share):
    torch.manual_seed(0)
    m = ADPS(
        ModelConfig(**SMALL, image_score="top_mean", score_top_share=share), pretrained=False
    ).eval()
    amap = torch.rand(3, 1, 64, 64) ** 4  # a few hot pixels over a dim background
    got = m.score(amap).numpy()
    k = max(1, round(share * 64 * 64))
    expected = [
        np.sort(gaussian_filter(amap[i, 0].numpy(), 4.0, mode="mirror").ravel())[-k:].mean()
        for i in range(3)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    paper = ADPS(ModelConfig(**SMALL), pretrained=False).score(amap)
    assert torch.all(m.score(amap) <= paper + 1e-6)  # a mean of the top never exceeds the max


@pytest.mark.slow
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_psm_output_stride_shapes_and_gradients(stride):
    torch.manual_seed(0)
    m = ADPS(ModelConfig(**SMALL, psm_output_stride=stride), pretrained=False).train()
    x = torch.rand(2, 3, 64, 64)
    psm_in = []
    hook = m.psm.head.register_forward_hook(lambda mod, i, o: psm_in.append(o.shape))
    out = m(x)
    hook.remove()
    assert psm_in[0][-2:] == (64 // stride, 64 // stride)  # the head runs at 1/stride ...
    assert out["logits"].shape == (2, 2, 64, 64)  # ... and its logits come back at full size
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 8:24, 8:24] = 1
    adps_loss(out, mask, TrainConfig())[0].backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.psm.head.weight.grad.abs().sum() > 0 and m.psm.up1.up.weight.grad.abs().sum() > 0
    assert (m.psm.up3 is None) == (stride == 4) and (m.psm.up4 is None) == (stride > 1)
    with torch.no_grad():
        amap, _score = m.eval()(x)
    assert amap.shape == (2, 1, 64, 64) and torch.all((amap >= 0) & (amap <= 1))


def test_full_decoder_keeps_the_papers_parameter_names():
    names = set(ADPS(ModelConfig(**SMALL), pretrained=False).psm.state_dict())
    assert {n.split(".")[0] for n in names} == {"up1", "up2", "up3", "up4", "head"}


def test_teacher_stays_frozen_through_an_optimiser_step():
    m = ADPS(ModelConfig(**SMALL))
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m.train()
    assert not m.teacher.training
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, :16] = 1
    loss, _ = adps_loss(m(torch.rand(2, 3, 64, 64)), mask, TrainConfig())
    loss.backward()
    opt.step()
    for key, value in m.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # weights and BN running statistics
    assert all(p.grad is None for p in m.teacher.parameters())
    student_before = ADPS(ModelConfig(**SMALL), pretrained=False).student  # sanity: it moved
    assert any(
        not torch.equal(a, b)
        for a, b in zip(m.student.parameters(), student_before.parameters(), strict=True)
    )


def test_student_init_from_teacher():
    m = ADPS(ModelConfig(**SMALL, student_init="teacher"))
    for a, b in zip(m.student.state_dict().values(), m.teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_normalisation_inside_the_model(model):
    x = torch.full((1, 3, 4, 4), 0.75)
    torch.testing.assert_close(model.normalize(x), torch.full((1, 3, 4, 4), 0.5))
