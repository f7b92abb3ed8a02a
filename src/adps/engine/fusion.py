"""Fitting the late fusion of the PSM and the memory prior to one surface, from labelled defects.

Which map should decide the ranking depends on the surface (docs/benchmarks/memory-prior.md):
where the synthetic defects resemble the real ones, the PSM's sharp map (a low prior exponent,
a high boost); where they do not, the prior's (exponent 1, the default). Normal images
cannot tell the two cases apart, and one fixed fusion measured below the PSM alone on one surface
or below PatchCore on another. A few defective images with masks can: each (exponent, boost) of
a small grid is scored by the mean of pixel AP and AUPRO on them, from PSM and prior maps that
are computed once. A tiled model fuses each tile's maps before blending them, so it is fitted
on its tiles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from adps.data.cache import load_tensor_stack
from adps.data.datasets import AnomalyDataset
from adps.engine.prior import image_batches
from adps.engine.tiling import Tiling, grid_tiles
from adps.errors import AdpsError
from adps.metrics import pixel_metrics
from adps.models.adps import ADPS
from adps.models.memory import late_fusion

# (prior exponent, PSM boost); the first is the shipped default, kept on ties
FUSION_GRID = (
    (1.0, 2.0),
    *((g, a) for g in (1.0, 0.75, 0.5, 0.25) for a in (1.0, 2.0, 4.0, 8.0) if (g, a) != (1.0, 2.0)),
)


@dataclass(frozen=True)
class FusionScore:
    exponent: float
    boost: float
    pixel_ap: float
    aupro: float

    @property
    def value(self) -> float:
        """What the fit maximises: the two map metrics the PSM alone is judged by."""
        return (self.pixel_ap + self.aupro) / 2


@dataclass(frozen=True)
class FusionFit:
    exponent: float
    boost: float
    n_images: int
    scores: tuple[FusionScore, ...]  # every grid point, in grid order

    def to_dict(self) -> dict:
        return {
            "exponent": self.exponent,
            "boost": self.boost,
            "n_images": self.n_images,
            "scores": [asdict(s) for s in self.scores],
        }

    @classmethod
    def from_dict(cls, data: dict) -> FusionFit:
        return cls(
            data["exponent"],
            data["boost"],
            data["n_images"],
            tuple(FusionScore(**s) for s in data["scores"]),
        )


def check_late_fusion(model: ADPS) -> None:
    """Raises, naming the config field, unless ``model`` has a fitted, late-fused memory
    prior."""
    c = model.config
    if model.memory is None:
        raise AdpsError(
            "the model has no memory prior to fuse (model.prior is 'none'; train "
            "with --prior memory)"
        )
    if c.prior_fusion != "late":
        raise AdpsError(
            f"model.prior_fusion is '{c.prior_fusion}': only late fusion has an "
            "exponent and a boost to fit"
        )
    if not model.memory.fitted:
        raise AdpsError("the model's memory bank is empty")


@torch.no_grad()
def component_maps(
    model: ADPS,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PSM's probability and the prior in units of its normal 99.9th percentile, each
    (N, H, W) float32 on the CPU, for (N, 3, H, W) uint8 images."""
    model = model.to(device).eval()
    memory = model.memory
    assert memory is not None, "component maps need a model with a memory prior"
    size = images.shape[-2:]
    psm, prior = [], []
    for x in image_batches(images, device, batch_size, "fusion maps", progress):
        p, teacher = model.psm_map(x)
        psm.append(p[:, 0].float())
        prior_map = memory(teacher, size, model.config.memory_neighbors)
        prior.append((prior_map / memory.stats[2])[:, 0])
    return torch.cat(psm).cpu(), torch.cat(prior).cpu()


def choose_fusion(
    masks: torch.Tensor,
    psm: torch.Tensor,
    scaled_prior: torch.Tensor,
    grid: tuple[tuple[float, float], ...] = FUSION_GRID,
) -> FusionFit:
    """The (exponent, boost) of ``grid`` whose fused maps score the highest mean of pixel AP
    and AUPRO against ``masks`` (N, H, W); the earlier grid point wins a tie."""
    if not bool(masks.any()):
        raise AdpsError("fitting the fusion needs masks with defect pixels; every mask is empty")
    scores = []
    for exponent, boost in grid:
        fused = late_fusion(psm, scaled_prior, boost, exponent)
        m = pixel_metrics(masks.numpy(), fused.numpy())
        scores.append(FusionScore(exponent, boost, m["pixel_ap"], m["aupro"]))
    best = max(scores, key=lambda s: s.value)  # max keeps the first of equal values
    return FusionFit(best.exponent, best.boost, len(masks), tuple(scores))


def fit_fusion(
    model: ADPS,
    defects: AnomalyDataset,
    device: torch.device,
    batch_size: int | None = None,
    progress: bool = False,
) -> FusionFit:
    """The fusion :func:`choose_fusion` picks for ``defects`` (defective images with masks,
    decoded at the model's working size: ``engine.tiling.working_size``). A tiled model's
    images are cut into its tile grid, since its fusion acts on tile maps."""
    check_late_fusion(model)  # before decoding the images
    images, masks, _ = load_tensor_stack(defects, progress=progress)
    n_images = len(images)
    tiling = Tiling.of(model.config)
    if tiling is not None:
        images, masks = grid_tiles(images, tiling), grid_tiles(masks, tiling)
    psm, prior = component_maps(model, images, device, batch_size, progress)
    return replace(choose_fusion(masks[:, 0] > 0, psm, prior), n_images=n_images)


__all__ = [
    "FUSION_GRID",
    "FusionFit",
    "FusionScore",
    "check_late_fusion",
    "choose_fusion",
    "component_maps",
    "fit_fusion",
]
