"""The ADPS network as a plain ``nn.Module``: teacher, patch-fed student, WMB, PSM.

No training logic lives here (losses and optimisation are in ``adps.engine``), so the same module
exports to ONNX/TorchScript unchanged. Inputs are images in [0, 1]; the module normalises them
with the statistics of its backbone's weights, so a caller cannot pre-process differently from
training.
"""

from __future__ import annotations

import functools
import operator

import torch
import torch.nn.functional as F
from torch import nn

from adps.config import ModelConfig
from adps.models.backbones import Encoder, create_encoder, get_backbone
from adps.models.memory import MEMORY_LEVELS, MemoryPrior


def split_patches(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C, H, W) -> (B*k*k, C, H/k, W/k), patches in row-major order, one batched view."""
    if k == 1:
        return x
    b, c, h, w = x.shape
    x = x.reshape(b, c, k, h // k, k, w // k).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * k * k, c, h // k, w // k)


def merge_patches(x: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`split_patches`: puts every patch's map back at its position."""
    if k == 1:
        return x
    bkk, c, h, w = x.shape
    b = bkk // (k * k)
    x = x.reshape(b, k, k, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, k * h, k * w)


def cosine_map(t: torch.Tensor, s: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-position cosine similarity over channels, (B, 1, h, w); Eq. (1)."""
    return F.cosine_similarity(t.float(), s.float(), dim=1, eps=eps).unsqueeze(1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) maps.

    Same kernel as ``scipy.ndimage.gaussian_filter(..., truncate=4)`` with ``mode="mirror"``
    (torch's "reflect" padding). Each pass is a weighted sum of shifted views, so it exports as
    plain slices and needs memory for a few maps only: a 1-channel convolution on CPU unfolds
    its input ``2 * radius + 1`` times (gigabytes for the multi-megapixel map of a tiled image).
    Exported, the sums also keep OpenVINO's bf16 mode from rounding the image score to bf16
    (it runs these additions in float32; a convolution it would run in bf16, and scores tie).
    """
    if sigma <= 0:
        return x
    radius = int(4.0 * sigma + 0.5)
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    weights: list[float] = (kernel / kernel.sum()).tolist()
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    height, width = x.shape[-2] - 2 * radius, x.shape[-1] - 2 * radius
    rows = x[..., radius : radius + height, 0:width] * weights[0]
    for i in range(1, len(weights)):
        rows = rows.add_(x[..., radius : radius + height, i : i + width], alpha=weights[i])
    x = F.pad(rows, (0, 0, radius, radius), mode="reflect")
    out = x[..., 0:height, :] * weights[0]
    for i in range(1, len(weights)):
        out = out.add_(x[..., i : i + height, :], alpha=weights[i])
    return out


class UpBlock(nn.Module):
    """Eq. (3)-(5): 2x transposed conv, concat the skip feature, two conv3x3-BN-ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = nn.Sequential(
            nn.Conv2d(out_ch + skip_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip.to(x.dtype)], dim=1)
        return self.conv(x)


class PostSegmentation(nn.Module):
    """U-Net decoder from the stride-16 level towards full resolution; 2-channel logits (Eq. 6).

    ``output_stride`` 1 is the paper's decoder (four up-blocks, logits at the image size); 2 and 4
    stop one or two up-blocks earlier and return logits at 1/2 or 1/4 of it, which the model
    upsamples. The skipped blocks are the widest in pixels, so they cost most of the time.
    """

    def __init__(
        self, channels: list[int], widths: tuple[int, int, int, int], output_stride: int = 1
    ):
        super().__init__()
        c1, c2, c3 = channels
        w1, w2, w3, w4 = widths
        self.up1 = UpBlock(c3, c2, w1)
        self.up2 = UpBlock(w1, c1, w2)
        # the paper's names are kept, so checkpoints of the full decoder load as before
        self.up3 = UpBlock(w2, 0, w3) if output_stride <= 2 else None
        self.up4 = UpBlock(w3, 0, w4) if output_stride == 1 else None
        self.head = nn.Conv2d({1: w4, 2: w3, 4: w2}[output_stride], 2, 3, padding=1)

    def forward(self, c: list[torch.Tensor]) -> torch.Tensor:
        x = self.up2(self.up1(c[2], c[1]), c[0])
        for block in (self.up3, self.up4):
            if block is not None:
                x = block(x)
        return self.head(x)


def draem_init(module: nn.Module) -> None:
    """DRAEM's ``weights_init``: conv N(0, 0.02), BN weight N(1, 0.02), BN bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ADPS(nn.Module):
    """Asymmetric Distillation Post-Segmentation.

    ``forward(images)`` takes (B, 3, H, W) images in [0, 1]. In training mode it returns a dict
    with the PSM ``logits`` (B, 2, H, W) and the per-level ``teacher``/``student`` features (for
    the distillation loss); in eval mode it returns ``(anomaly_map, score)``: the anomalous-class
    probability (B, 1, H, W) and the image score (B,): :meth:`score` of the map, or with the
    memory prior's standardized decision (``config.standardized_decision``, fitted by
    adps.engine.prior.fit_decision) :meth:`MemoryPrior.decide` of the prior's and the PSM's
    own scores. With the memory prior
    (``config.prior == "memory"``) and late fusion, the eval map is the PSM's probability mixed
    with the prior map (:meth:`MemoryPrior.fuse`) and training is the paper's; with early fusion
    the PSM takes the prior as an input, in training and in eval.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        config: ModelConfig | None = None,
        *,
        teacher: Encoder | None = None,
        pretrained: bool = True,
        weights_file: str | None = None,
        allow_download: bool = False,
    ):
        super().__init__()
        self._config = config = config or ModelConfig()
        spec = get_backbone(config.backbone)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

        self.teacher = teacher or create_encoder(
            config.backbone, pretrained, weights_file, allow_download
        )
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.student = create_encoder(config.backbone, pretrained=False)
        # Under a bf16 autocast, whether the student takes part. A run-time switch, not
        # configuration: on CPU (oneDNN, torch 2.14) the backward of its depthwise convolutions
        # on the many small patches is slower in bf16 than in float32 (benchmarks/bench_train.py
        # measures both), so the trainer keeps the student in float32 there and lets the teacher
        # and the PSM use bf16.
        self.autocast_student = True
        if config.student_init == "teacher":
            self.student.load_state_dict(self.teacher.state_dict())
        channels = self.teacher.channels
        self.early_prior = config.prior == "memory" and config.prior_fusion == "early"
        self.fuse = None
        if config.fusion == "conv":
            self.fuse = nn.ModuleList(nn.Conv2d(2 * c, c, 3, padding=1) for c in channels)
        self.psm = None
        if config.variant != "no_psm_wmb":
            # early fusion: the prior is one more channel at strides 8 and 16
            psm_channels = [c + (self.early_prior and i > 0) for i, c in enumerate(channels)]
            self.psm = PostSegmentation(
                psm_channels, config.psm_widths or spec.psm_widths, config.psm_output_stride
            )
            if config.psm_init == "draem":
                draem_init(self.psm)
        self.memory = None
        if config.prior == "memory":
            self.memory = MemoryPrior(sum(channels[i] for i in MEMORY_LEVELS))

    @property
    def config(self) -> ModelConfig:
        """What the module was built from and what it reads at every call: read-only, since
        its structure follows it (build a new model for other settings)."""
        return self._config

    def train(self, mode: bool = True) -> ADPS:
        super().train(mode)
        self.teacher.eval()  # frozen: BatchNorm statistics must never move
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def student_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Runs the student on k x k patches in one batch and stitches every level back.

        With ``split_after_stages`` the features are re-cut after those stages; cutting every
        patch into k x k pieces equals cutting the whole map on a k-times finer grid.
        """
        k = self.config.k
        cut = k
        x = self.student.stem(split_patches(x, cut))
        features = []
        for index, stage in enumerate(self.student.stages, start=1):
            x = stage(x)
            features.append(merge_patches(x, cut))
            if index in self.config.split_after_stages:
                x = split_patches(features[-1], cut * k)
                cut *= k
        return features

    def forward(self, images: torch.Tensor, groups: torch.Tensor | None = None):
        """``groups`` (B,), training with early fusion only: each image's index in the memory's
        source images, so that its prior leaves its own features out."""
        if self.training:
            return self._forward(images, groups)
        psm_map, teacher = self.psm_map(images)
        if self.memory is None or self.early_prior:
            return psm_map, self.score(psm_map)
        with torch.autocast(images.device.type, enabled=False):  # distances in float32
            c = self.config
            prior = self.memory(teacher, images.shape[-2:], c.memory_neighbors)
            fused = self.memory.fuse(psm_map, prior, c.psm_boost, c.prior_exponent)
            if c.standardized_decision and self.memory.decision_fitted:
                score = self.memory.decide(
                    self.score(prior), self.score(psm_map), c.decision_psm_weight
                )
                return fused, score
        return fused, self.score(fused)

    def psm_map(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Eval: the PSM's anomaly map (B, 1, H, W) in float32, before any late fusion, and the
        teacher's features."""
        return self._forward(images)

    def _forward(self, images: torch.Tensor, groups: torch.Tensor | None = None):
        c = self.config
        x = self.normalize(images)
        need_teacher = c.variant != "no_teacher"
        need_student = c.variant != "no_student"
        teacher = student = None
        if need_teacher:
            with torch.no_grad():
                teacher = self.teacher(x)
        if need_student:
            if self.autocast_student or not torch.is_autocast_enabled(x.device.type):
                student = self.student_features(x)
            else:
                with torch.autocast(x.device.type, enabled=False):
                    student = self.student_features(x)

        if c.variant == "no_psm_wmb":
            assert teacher is not None and student is not None  # this variant needs both
            anomaly = functools.reduce(
                operator.add,
                (
                    F.interpolate(
                        self._disagreement(t, s),
                        size=images.shape[-2:],
                        mode="bilinear",
                        align_corners=False,
                    )
                    for t, s in zip(teacher, student, strict=True)
                ),
            )
            if self.training:  # distillation loss only: there is no PSM to train
                return {"logits": None, "teacher": teacher, "student": student}
            return anomaly, teacher

        if c.variant == "no_student":
            assert teacher is not None
            fused = list(teacher)
        elif c.variant == "no_teacher":
            assert student is not None
            fused = student
        else:
            assert teacher is not None and student is not None
            fused = [
                self._fuse(i, t, s) for i, (t, s) in enumerate(zip(teacher, student, strict=True))
            ]
        if self.early_prior:
            assert self.memory is not None and teacher is not None  # early fusion: memory prior
            with torch.autocast(images.device.type, enabled=False):  # distances in float32
                prior = self.memory.standardized(teacher, c.memory_neighbors, groups)
            fused[1] = torch.cat([fused[1], prior.to(fused[1].dtype)], dim=1)
            fused[2] = torch.cat([fused[2], F.avg_pool2d(prior, 2).to(fused[2].dtype)], dim=1)
        assert self.psm is not None  # only the no_psm_wmb variant, handled above, has none
        logits = self.psm(fused)
        if c.psm_output_stride > 1:
            logits = F.interpolate(
                logits, size=images.shape[-2:], mode="bilinear", align_corners=False
            )
        if self.training:
            return {"logits": logits, "teacher": teacher, "student": student}
        with torch.autocast(images.device.type, enabled=False):  # the map in float32
            return torch.softmax(logits.float(), dim=1)[:, 1:2], teacher

    def _disagreement(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The coarse anomaly mask: 1 - W_i (cosine) or mean_c (T - S)^2 (MSE variant)."""
        if self.config.mask_type == "mse":
            return (t.float() - s.float()).pow(2).mean(dim=1, keepdim=True)
        return 1.0 - cosine_map(t, s, self.config.cos_eps)

    def _fuse(self, level: int, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        fusion = self.config.fusion
        if fusion == "wmb":
            return self._disagreement(t, s).to(t.dtype) * t  # Eq. (2): C_i = (1 - W_i) * T_i
        if fusion == "diff":
            return t - s
        assert self.fuse is not None  # built for fusion == "conv"
        return self.fuse[level](torch.cat([t, s.to(t.dtype)], dim=1))

    def score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """The image score of the configured kind (part of the module, so every export decides
        the same way)."""
        c = self.config
        return image_score(anomaly_map, c.image_score, c.sigma, c.score_top_share)


def image_score(
    anomaly_map: torch.Tensor, kind: str = "max", sigma: float = 4.0, top_share: float = 0.01
) -> torch.Tensor:
    """(B,) scores of (B, 1, H, W) maps from the Gaussian-smoothed map: its max (the paper), or
    with ``kind="top_mean"`` the mean of its highest ``top_share`` of pixels, which a few hot
    pixels on a good part cannot dominate."""
    with torch.autocast(anomaly_map.device.type, enabled=False):  # a bf16 blur ties scores
        smooth = gaussian_blur(anomaly_map.float(), sigma).flatten(1)
    if kind == "max":
        return smooth.amax(dim=1)
    k = max(1, round(top_share * smooth.shape[1]))
    return smooth.topk(k, dim=1).values.mean(dim=1)


__all__ = ["ADPS", "cosine_map", "gaussian_blur", "image_score", "merge_patches", "split_patches"]
