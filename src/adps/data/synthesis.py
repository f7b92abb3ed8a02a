"""DRAEM-style synthetic anomalies, generated batched on the images' device.

ADPS trains on normal images only and learns to segment *synthetic* defects that follow DRAEM's
``data_loader.py`` (docs/method.md): a thresholded, randomly rotated Perlin-noise blob is
filled with a photometrically augmented texture and blended into the image.

DRAEM builds one sample at a time in NumPy/imgaug inside the data-loader workers. Here the whole
batch is synthesised at once, with torch ops on whatever device the images live on, so the GPU does
the work and no per-sample Python loop is left in the hot path. Everything random comes from one
``torch.Generator`` that lives on the images' device, so a seed reproduces a batch bit for bit
(tested on CPU; CPU and CUDA generators give different streams, so the two devices do not match each
other).

A call is free of host synchronisations: no ``.item()``, ``.tolist()``, ``.nonzero()``,
``bool(tensor)``, boolean-mask indexing or other op whose output shape depends on the data. Every
step runs densely on the whole batch (every sample gets a mask and a texture, every texture op runs
on every texture) and per-sample choices are made with ``torch.where``. The CPU then never waits for
the GPU inside the training step, and the step can be captured in a CUDA graph (after one warm-up
call, which caches a few small constants on the device). The price is wasted work on samples that
end up untouched, cheap on a GPU; on CPU a call is somewhat slower than a subset-based one would be.

Deviations from DRAEM, each chosen on purpose:

* Perlin noise is evaluated at any image size: cell coordinates are ``pixel * res / size`` instead
  of DRAEM's ``np.repeat`` tiling, so the size need not be a multiple of ``2**perlin_scale_max``.
* The rotated noise uses reflection padding, so rotated corners can hold anomalies too (imgaug
  filled them with 0, i.e. never anomalous).
* An altered sample whose mask came out empty gets fresh noise (a few candidates, drawn up front);
  DRAEM relabelled it as normal. See :meth:`AnomalySynthesizer._masks`.
* Each texture still receives three distinct random ops, but they are applied in one fixed,
  canonical order (the order of DRAEM's list), while DRAEM's ``randAugmenter`` applies them in the
  random order it drew them. A random order per sample would need a data-dependent schedule (host
  syncs) or one pass over all ten ops per position. The imgaug ops are re-implemented in torch with
  the same ranges (imgaug does not run on NumPy 2).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from adps.config import NUM_TEXTURE_OPS, SynthesisConfig
from adps.errors import AdpsError

__all__ = [
    "AnomalySynthesizer",
    "TextureBank",
    "augment_textures",
    "blend",
    "perlin_noise",
    "rotate",
]

_MASK_CANDIDATES = 2
"""Noise fields drawn per sample: the first one with a non-empty mask is used (1 try + 1 retry).

With the default config about 5% of single fields are empty, so both are empty for about 0.3% of
samples; then the top-``_FALLBACK_AREA`` fallback applies. Two, not more: every candidate is
generated and rotated for every sample (no host sync), which dominates the cost on CPU."""

_FALLBACK_AREA = 0.01
"""Share of a sample's pixels (its highest noise values) used as mask when every retry was empty."""


# --------------------------------------------------------------------------------------------------
# Small batched helpers
# --------------------------------------------------------------------------------------------------


def _uniform(shape: Sequence[int], low: float, high: float, generator: torch.Generator) -> Tensor:
    """``U(low, high)`` float32 samples on the generator's device."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return u.mul_(high - low).add_(low)


def _bcast(values: Tensor) -> Tensor:
    """Per-sample values ``(n,)`` shaped to broadcast over ``(n, C, H, W)``."""
    return values.view(-1, 1, 1, 1)


def rotate(x: Tensor, degrees: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Rotate each sample of ``x`` (n, C, H, W) about its centre by its own angle, bilinearly.

    ``affine_grid`` works in normalised coordinates, where x and y span 2 units each whatever the
    aspect ratio; the off-diagonal terms carry ``H / W`` so non-square images rotate rigidly.
    """
    n, _, h, w = x.shape
    rad = degrees.to(torch.float32) * (math.pi / 180.0)
    cos, sin = rad.cos(), rad.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack((cos, -sin * (h / w), zero, sin * (w / h), cos, zero), dim=1).view(n, 2, 3)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


@functools.cache
def _yiq(device: torch.device) -> tuple[Tensor, Tensor]:
    """RGB -> YIQ matrix and its inverse on ``device``, cached so no copy happens per batch."""
    rgb_to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        dtype=torch.float64,
    )
    return rgb_to_yiq.float().to(device), torch.linalg.inv(rgb_to_yiq).float().to(device)


def _hue_matrix(radians: Tensor, saturation: Tensor) -> Tensor:
    """Per-sample 3x3 RGB matrices rotating hue and scaling chroma (in YIQ space).

    A hue rotation is linear in YIQ (rotate the I/Q chroma plane, keep luma Y), so a whole batch of
    different shifts is one batched matrix product instead of an RGB -> HSV -> RGB round trip.
    """
    to_yiq, from_yiq = _yiq(radians.device)
    cos, sin = radians.cos() * saturation, radians.sin() * saturation
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack((one, zero, zero, zero, cos, -sin, zero, sin, cos), dim=1).view(-1, 3, 3)
    return from_yiq @ rot @ to_yiq


def _apply_colour_matrix(x: Tensor, matrix: Tensor) -> Tensor:
    """``x`` (n, 3, H, W) with each sample's pixels multiplied by its own (3, 3) ``matrix``."""
    n, c, h, w = x.shape
    return torch.bmm(matrix, x.reshape(n, c, h * w)).view(n, c, h, w)


# --------------------------------------------------------------------------------------------------
# Perlin noise and blending
# --------------------------------------------------------------------------------------------------


def perlin_noise(
    height: int, width: int, res_y: Tensor, res_x: Tensor, generator: torch.Generator, max_res: int
) -> Tensor:
    """Batched one-octave 2-D Perlin noise: DRAEM's ``rand_perlin_2d_np``, one lattice per sample.

    Perlin noise is bilinear in the corner gradients: with the fade weights ``t`` and the offsets
    ``f`` of a pixel inside its cell,
    ``noise = sum_corners w_y w_x (g_y (f_y - dy) + g_x (f_x - dx))``. Each factor depends on one
    axis only, so the whole batch is two batched matrix products
    ``[R_y @ G_y, W_y @ G_x] @ [W_x, R_x]^T`` with sparse (2 non-zeros per row) per-axis matrices:
    no gathers, one full-resolution pass in all, and any per-sample lattice in one call. It equals
    DRAEM's formula up to float rounding (about 1e-7; about 1e-3 if TF32 matmuls are enabled,
    harmless for thresholded masks).

    Args:
        height, width: output size in pixels (any size; the lattice need not divide it).
        res_y, res_x: (B,) integer lattice periods along rows / columns, one pair per sample, on the
            generator's device.
        generator: source of the random gradient angles.
        max_res: an upper bound of ``res_y`` and ``res_x``; it sizes the gradient table
            (B, max_res + 1, max_res + 1) so no device sync is needed to find the largest one.

    Returns:
        (B, height, width) float32 noise, about within ``[-1, 1]`` (DRAEM's ``sqrt(2)`` scaling of
        the ``[-sqrt(1/2), sqrt(1/2)]`` Perlin range).
    """
    b, device, g = res_y.shape[0], res_y.device, max_res + 1
    angles = torch.rand(b, g, g, generator=generator, device=device).mul_(2.0 * math.pi)

    def axis(size: int, res: Tensor) -> tuple[Tensor, Tensor]:
        """(B, size, G) fade weights ``w`` and offsets ``w * (f - d)`` of the 2 lattice nodes."""
        # Integer product, then one correctly rounded division: floor() lands on the exact cell.
        pos = (torch.arange(size, device=device) * res.view(-1, 1)).float() / size
        cell = pos.floor()
        f = pos - cell
        t = f * f * f * (f * (f * 6.0 - 15.0) + 10.0)  # fade 6t^5 - 15t^4 + 10t^3
        nodes = torch.stack((cell, cell + 1), dim=2).long()
        weight = torch.stack((1 - t, t), dim=2)
        zeros = torch.zeros(b, size, g, device=device)
        ramp = weight * torch.stack((f, f - 1), dim=2)
        return zeros.scatter(2, nodes, weight), zeros.scatter(2, nodes, ramp)

    weight_y, ramp_y = axis(height, res_y)
    weight_x, ramp_x = axis(width, res_x)
    rows = torch.cat((ramp_y @ angles.cos(), weight_y @ angles.sin()), dim=2)  # (B, H, 2G)
    cols = torch.cat((weight_x, ramp_x), dim=2)  # (B, W, 2G)
    return (rows @ cols.transpose(1, 2)).mul_(math.sqrt(2.0))


def blend(image: Tensor, texture: Tensor, mask: Tensor, beta: Tensor | float) -> Tensor:
    """DRAEM's blend, exactly: ``I*(1-M) + (1-beta)*A*M + beta*I*M``.

    Inside the mask the texture ``A`` is mixed with a share ``beta`` of the original image, so a
    defect can be faint (``beta`` near ``beta_max``) or opaque (``beta`` near 0). ``beta`` is a
    float or one value per sample, shape (B,).
    """
    if isinstance(beta, Tensor):
        beta = _bcast(beta)
    return image * (1 - mask) + (1 - beta) * texture * mask + beta * image * mask


# --------------------------------------------------------------------------------------------------
# Photometric texture ops (DRAEM's list of ten imgaug augmenters), on float (n, 3, H, W) in [0, 1]
# --------------------------------------------------------------------------------------------------

_TextureOp = Callable[[Tensor, torch.Generator], Tensor]


def _gamma_contrast(x: Tensor, g: torch.Generator) -> Tensor:
    """imgaug ``GammaContrast((0.5, 2.0), per_channel=True)``."""
    return x.pow(_uniform((x.shape[0], 3, 1, 1), 0.5, 2.0, g))


def _brightness(x: Tensor, g: torch.Generator) -> Tensor:
    """imgaug ``MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30))``.

    imgaug scales and shifts the luma Y of YCrCb; with chroma fixed, that adds ``(mul-1)*Y + add``
    to every RGB channel.
    """
    n = x.shape[0]
    luma = (x * _yiq(x.device)[0][0].view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    mul, add = _uniform((n, 1, 1, 1), 0.8, 1.2, g), _uniform((n, 1, 1, 1), -30 / 255, 30 / 255, g)
    return x + (mul - 1) * luma + add


def _sharpness(x: Tensor, g: torch.Generator) -> Tensor:
    """PIL-like ``EnhanceSharpness(factor=(0.0, 2.0))``: extrapolate from PIL's smoothed image.

    PIL's smoothing kernel ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13`` (border pixels kept) is a 3x3
    box sum plus 4x the centre; ``avg_pool2d`` computes it faster than torchvision's grouped
    ``conv2d`` (``adjust_sharpness``) on CPU, with the same result (benchmarks/bench_synthesis.py
    times the synthesis).
    """
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = (F.avg_pool2d(x, 3, stride=1) * 9 + 4 * x[..., 1:-1, 1:-1]) / 13
    return smooth.lerp_(x, _uniform((x.shape[0], 1, 1, 1), 0.0, 2.0, g))


def _hue_saturation(x: Tensor, g: torch.Generator) -> Tensor:
    """imgaug ``AddToHueAndSaturation((-50, 50), per_channel=True)``, approximated in YIQ.

    imgaug's hue unit is 1/255 of the circle's 2*pi, so +-50 is +-70.6 degrees; the saturation shift
    of +-50 (of 255) is taken as a chroma gain of ``1 +- 50/128`` (relative to a mid saturation).
    """
    n = x.shape[0]
    hue = _uniform((n,), -50 / 255 * 2 * math.pi, 50 / 255 * 2 * math.pi, g)
    return _apply_colour_matrix(x, _hue_matrix(hue, _uniform((n,), 1 - 50 / 128, 1 + 50 / 128, g)))


def _solarize(x: Tensor, g: torch.Generator) -> Tensor:
    """imgaug ``Solarize(0.5, threshold=(32, 128))``: half the samples invert values >= it."""
    n = x.shape[0]
    threshold = _uniform((n, 1, 1, 1), 32 / 255, 128 / 255, g)
    active = _bcast(torch.rand(n, generator=g, device=x.device) < 0.5)
    return torch.where(active & (x >= threshold), 1 - x, x)


def _posterize(x: Tensor, g: torch.Generator) -> Tensor:
    """imgaug ``Posterize()``: keep the top ``bits ~ U{1..8}`` bits of each 8-bit value.

    Zeroing the low ``8 - bits`` bits is flooring to a multiple of ``2**(8 - bits)``; done in float.
    """
    bits = torch.randint(1, 9, (x.shape[0], 1, 1, 1), generator=g, device=x.device)
    step = torch.exp2(8 - bits.float())
    return (x * 255).round_().div_(step).floor_().mul_(step / 255)


def _invert(x: Tensor, g: torch.Generator) -> Tensor:
    """imgaug ``Invert()``."""
    return 1 - x


def _autocontrast(x: Tensor, g: torch.Generator) -> Tensor:
    """PIL-like ``Autocontrast()`` (per-channel min/max stretch; no histogram cutoff).

    Same values as ``torchvision``'s ``autocontrast`` on float images, with flat channels handled by
    ``torch.where`` instead of its boolean-mask assignment, so no data-dependent indexing is left.
    """
    low = x.amin(dim=(-2, -1), keepdim=True)
    span = x.amax(dim=(-2, -1), keepdim=True) - low
    flat = span == 0
    stretched = (x - low).div_(torch.where(flat, torch.ones_like(span), span))
    return torch.where(flat, x, stretched).clamp_(0, 1)


def _equalize(x: Tensor, g: torch.Generator) -> Tensor:
    """PIL-like ``Equalize()`` (torchvision's batched PIL-exact histogram equalisation)."""
    return TF.equalize(x)


def _affine_rotate(x: Tensor, g: torch.Generator) -> Tensor:
    """imgaug ``Affine(rotate=(-45, 45))``: bilinear, corners filled with black as in imgaug."""
    return rotate(x, _uniform((x.shape[0],), -45.0, 45.0, g), padding_mode="zeros")


_TEXTURE_OPS: tuple[_TextureOp, ...] = (
    _gamma_contrast,
    _brightness,
    _sharpness,
    _hue_saturation,
    _solarize,
    _posterize,
    _invert,
    _autocontrast,
    _equalize,
    _affine_rotate,
)
"""DRAEM's ``augmenters`` list, in its order."""
assert len(_TEXTURE_OPS) == NUM_TEXTURE_OPS, "adps.config.NUM_TEXTURE_OPS must match DRAEM's list"


def augment_textures(textures: Tensor, num_ops: int, generator: torch.Generator) -> Tensor:
    """Apply ``num_ops`` distinct random ops from DRAEM's list to each texture, batched, sync-free.

    Each sample draws its ``num_ops`` ops (a top-k of uniform scores on the device). The loop is
    over the ten ops, never over samples: each op runs once, vectorised, on the whole batch, and
    ``torch.where`` keeps its result only for the samples that drew it. The selected ops thus apply
    in a fixed order (DRAEM's list order; DRAEM shuffles them per sample). Every op draws its random
    parameters for every sample, so the generator advances by the same amount whatever was drawn.

    Args:
        textures: (n, 3, H, W) uint8, or float in [0, 1].
        num_ops: ops per sample, 0 to 10.
        generator: on the textures' device.

    Returns:
        The augmented textures, same dtype and range as the input.
    """
    n = textures.shape[0]
    if num_ops == 0 or n == 0:
        return textures
    # A private float copy (each op returns a new tensor; x is never modified in place).
    x = textures.float() / 255 if textures.dtype == torch.uint8 else textures.float().clone()
    device = x.device
    picks = torch.rand(n, len(_TEXTURE_OPS), generator=generator, device=device).topk(
        num_ops, dim=1
    )
    chosen = torch.zeros(n, len(_TEXTURE_OPS), dtype=torch.bool, device=device)
    chosen.scatter_(1, picks.indices, True)
    for i, op in enumerate(_TEXTURE_OPS):
        x = torch.where(_bcast(chosen[:, i]), op(x, generator).clamp_(0, 1), x)
    if textures.dtype == torch.uint8:
        return (x * 255).round_().to(torch.uint8)
    return x.to(textures.dtype)


def _recolour(x: Tensor, g: torch.Generator) -> Tensor:
    """Strong extra jitter for textures cut from the training images themselves.

    A texture taken from the same kind of image would otherwise look like normal content; random
    flips, a channel permutation and a full-circle hue rotation make it clearly foreign.
    """
    n, device = x.shape[0], x.device
    flips = torch.rand(n, 2, generator=g, device=device) < 0.5
    x = torch.where(_bcast(flips[:, 0]), x.flip(-1), x)
    x = torch.where(_bcast(flips[:, 1]), x.flip(-2), x)
    channel_order = torch.rand(n, 3, generator=g, device=device).argsort(dim=1)
    # One-hot rows: row i picks input channel channel_order[i] (F.one_hot syncs to check ranges).
    permute = torch.zeros(n, 3, 3, device=device).scatter_(2, channel_order.unsqueeze(2), 1.0)
    hue = _hue_matrix(_uniform((n,), 0.0, 2 * math.pi, g), torch.ones(n, device=device))
    return _apply_colour_matrix(x, hue @ permute).clamp_(0, 1)


# --------------------------------------------------------------------------------------------------
# Texture source
# --------------------------------------------------------------------------------------------------


class TextureBank:
    """Anomaly textures kept as one uint8 tensor (T, 3, H, W) on the device, decoded once.

    Keeping them on the device at the working size makes drawing a batch of textures one indexing
    op, with no disk or host-to-device traffic during training.
    """

    def __init__(self, textures: Tensor, recolour: bool = False):
        """Args:
        textures: (T, 3, H, W) uint8, T >= 1.
        recolour: the textures are the training images themselves; flip and strongly
            colour-jitter them when drawn (see :func:`_recolour`).
        """
        if textures.dtype != torch.uint8 or textures.dim() != 4 or textures.shape[1] != 3:
            raise ValueError(
                f"textures must be uint8 (T, 3, H, W), got {textures.dtype} {tuple(textures.shape)}"
            )
        if textures.shape[0] == 0:
            raise AdpsError("no textures to build a texture bank from")
        self.textures = textures
        self.recolour = recolour

    @classmethod
    def from_folder(
        cls, folder: str | Path, size: int | tuple[int, int], device: str | torch.device = "cpu"
    ) -> TextureBank:
        """Decode every image below ``folder`` (recursively) resized to ``size``, e.g. DTD.

        DTD's layout ``dtd/images/<class>/*.jpg`` works from either ``dtd`` or ``dtd/images``. Files
        are read in sorted order so a seed draws the same textures on every machine. Like DRAEM,
        textures are resized directly (aspect ratio not kept), with the datasets' own decoding
        and bilinear resize.
        """
        from adps.data.datasets import IMAGE_EXTENSIONS, Resize, find_images, read_image

        resize = Resize(size)
        files = find_images(folder, (*IMAGE_EXTENSIONS, ".webp"), recursive=True)
        stacked = torch.stack(
            [resize.image(torch.from_numpy(read_image(p)).permute(2, 0, 1)) for p in files]
        )
        return cls(stacked.to(device))

    @classmethod
    def from_images(cls, images: Tensor) -> TextureBank:
        """Textures made from training images (N, 3, H, W), uint8 or float in [0, 1].

        The fallback when no texture folder is available: drawn textures are flipped and strongly
        colour-jittered so they do not pass for normal content.
        """
        if images.dtype != torch.uint8:
            images = (images.float() * 255).round_().clamp_(0, 255).to(torch.uint8)
        return cls(images.contiguous(), recolour=True)

    def __len__(self) -> int:
        return self.textures.shape[0]

    @property
    def device(self) -> torch.device:
        return self.textures.device

    def to(self, device: str | torch.device) -> TextureBank:
        """The same bank on ``device`` (self if already there)."""
        if self.textures.device == torch.device(device):
            return self
        return TextureBank(self.textures.to(device), self.recolour)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` textures drawn uniformly with replacement (as DRAEM), (n, 3, H, W) uint8."""
        index = torch.randint(len(self), (n,), generator=generator, device=self.device)
        return self.textures.index_select(0, index)


# --------------------------------------------------------------------------------------------------
# The synthesizer
# --------------------------------------------------------------------------------------------------


class AnomalySynthesizer:
    """Adds DRAEM-style synthetic anomalies to a batch of normal images, on the images' device.

    Example::

        synth = AnomalySynthesizer(TextureBank.from_folder("dtd/images", 256, "cuda"))
        gen = torch.Generator("cuda").manual_seed(0)
        images_aug, masks = synth(images, gen)  # images (B, 3, 256, 256) in [0, 1] on cuda
    """

    def __init__(self, textures: TextureBank | None, config: SynthesisConfig = SynthesisConfig()):
        """Args:
        textures: where anomaly content comes from; ``None`` uses the batch's own images
            (another sample of the batch, flipped and strongly colour-jittered).
        config: see :class:`SynthesisConfig`.
        """
        self.textures = textures
        self.config = config

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Synthesise anomalies into a share ``anomaly_prob`` of the batch, without host syncs.

        Every sample gets a mask, a texture and a blend; ``torch.where`` then keeps the blend for
        the altered samples and the input for the others, so no data-dependent shape or branch
        exists.

        Args:
            images: (B, 3, H, W) float in [0, 1], on any device.
            generator: ``torch.Generator`` on the same device as ``images`` (e.g.
                ``torch.Generator(images.device).manual_seed(seed)``); it is the only randomness.

        Returns:
            ``(images_aug, masks)``: images_aug (B, 3, H, W) same dtype, in [0, 1]; masks
            (B, 1, H, W) of 0/1 in the images' dtype. Untouched samples are returned bit for bit
            with a zero mask; altered samples always have a non-empty mask.
        """
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"images must be float (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if not _same_device(generator.device, images.device):
            raise ValueError(
                f"generator is on {generator.device} but images are on {images.device}"
            )
        b, _, h, w = images.shape
        if b == 0:
            return images.clone(), images.new_zeros(b, 1, h, w)
        altered = (
            torch.rand(b, generator=generator, device=images.device) < self.config.anomaly_prob
        )
        mask = self._masks(b, h, w, generator)
        texture = self._textures(images, generator)
        beta = _uniform((b,), 0.0, self.config.beta_max, generator)
        blended = blend(images.float(), texture, mask, beta).clamp_(0, 1).to(images.dtype)
        keep = _bcast(altered)
        images_aug = torch.where(keep, blended, images)
        masks = torch.where(keep, mask.to(images.dtype), images.new_zeros(()))
        return images_aug, masks

    def _noise(self, n: int, h: int, w: int, generator: torch.Generator) -> Tensor:
        """(n, 1, H, W) Perlin noise, per-sample scales ``2**a x 2**b``, rotated if configured."""
        cfg = self.config
        low, high = cfg.perlin_scale_min, cfg.perlin_scale_max + 1
        exponents = torch.randint(low, high, (2, n), generator=generator, device=generator.device)
        res = torch.ones_like(exponents) << exponents
        noise = perlin_noise(
            h, w, res[0], res[1], generator, max_res=1 << cfg.perlin_scale_max
        ).unsqueeze(1)
        if cfg.rotate_mask:
            noise = rotate(noise, _uniform((n,), -90.0, 90.0, generator), padding_mode="reflection")
        return noise

    def _masks(self, n: int, h: int, w: int, generator: torch.Generator) -> Tensor:
        """(n, 1, H, W) float 0/1 masks, each non-empty, computed without host syncs.

        Coarse lattices (e.g. 1 x 1) sometimes stay below the threshold everywhere. DRAEM then
        labels the sample normal; here a sample chosen for an anomaly keeps that promise. Each
        sample draws ``_MASK_CANDIDATES`` noise fields up front (one batched call) and uses the
        first whose mask is non-empty (an ``argmax`` over the candidates' "non-empty" flags); if all
        are empty, its mask becomes the top ``_FALLBACK_AREA`` of its first field's noise values (a
        per-sample ``kthvalue`` threshold, computed for every sample and selected with ``where``).
        """
        c = _MASK_CANDIDATES
        noise = self._noise(n * c, h, w, generator).reshape(n, c, h, w)
        found = (noise > self.config.threshold).flatten(2).any(dim=2)  # (n, c)
        first = found.to(torch.uint8).argmax(dim=1)  # first non-empty candidate; 0 if none is
        chosen = noise.gather(1, first.view(n, 1, 1, 1).expand(n, 1, h, w))  # (n, 1, H, W)
        flat = chosen.flatten(1)
        top = max(
            1, round(flat.shape[1] * _FALLBACK_AREA)
        )  # pixels in the fallback mask (ties aside)
        fallback = chosen >= _bcast(flat.kthvalue(flat.shape[1] - top + 1, dim=1).values)
        mask = torch.where(_bcast(found.any(dim=1)), chosen > self.config.threshold, fallback)
        return mask.float()

    def _textures(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """(B, 3, H, W) float32 augmented textures, one per sample of the batch."""
        b, (h, w) = images.shape[0], images.shape[-2:]
        if self.textures is None:
            # A random derangement: each sample borrows another sample's image (when B > 1).
            perm = torch.randperm(b, generator=generator, device=images.device)
            source = torch.empty_like(perm).scatter_(0, perm, perm.roll(-1))
            texture, recolour = images.index_select(0, source).float(), True
        else:
            self.textures = self.textures.to(images.device)  # a no-op after the first batch
            texture, recolour = (
                self.textures.sample(b, generator).float() / 255,
                self.textures.recolour,
            )
            if texture.shape[-2:] != (h, w):
                texture = F.interpolate(
                    texture, size=(h, w), mode="bilinear", antialias=True
                ).clamp_(0, 1)
        if recolour:
            texture = _recolour(texture, generator)
        return augment_textures(texture, self.config.texture_ops, generator)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Devices equal up to an omitted CUDA index (``cuda`` is ``cuda:<current>``)."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (
        b.index if b.index is not None else current
    )
