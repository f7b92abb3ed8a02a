"""A small procedural dataset of textured surfaces for ``adps demo`` (no user data needed).

:func:`make_demo_dataset` writes an MVTec-AD layout (category ``surface``) of brushed-metal
images: a steel-grey base colour with a small per-image tint and brightness change, horizontal
brushing streaks (white noise smoothed strongly along x and hardly along y), broader streak bands,
fine grain and a gentle illumination gradient in a random direction. Every image is a fresh random
crop of the same process, so normal variation exists but is easy to learn.

The test set holds three kinds of production-line defects, each drawn together with its mask:

* ``scratch``: a thin (1-3 px at 128 px) bright or dark curve of random length and direction whose
  intensity varies along its length;
* ``dent``: an elliptical pressed-in region shaded like a bowl lit from one side (darker on the
  side facing the light, lighter on the other, a little darker overall);
* ``stain``: an irregular blob (smooth noise thresholded inside an ellipse) that darkens and
  browns the surface with soft edges; the mask is where the colour shift is noticeable.

Why the test defects come from a different generator than training: ADPS trains on normal images
only and learns to segment *synthetic* anomalies (DRAEM-style Perlin-noise blobs filled with DTD
textures or recoloured images, see :mod:`adps.data.synthesis`). If the demo's test defects were
made by that same synthesiser, a good score would only show that the model recognises the
synthesiser's artefacts (noise-shaped blobs of foreign texture), i.e. memorisation. Drawing the test
defects with an independent, physically motivated generator (thin scratches, shaded dents, soft
stains, none of which the training synthesis produces) makes the demo measure what matters in
practice: generalisation from generic synthetic anomalies to unseen real defect kinds.

Everything is deterministic: image ``i`` of stream ``s`` uses ``numpy.random.default_rng([seed,
s, i])``, so images do not depend on how many others are generated. The dataset is written into a
temporary folder beside the target and renamed into place; ``manifest.json`` (parameters, counts,
generator version) is written last, so a folder without a matching manifest is never taken for a
complete dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from adps.errors import AdpsError
from adps.fileio import atomic_write_text

__all__ = [
    "CATEGORY",
    "DEFECT_KINDS",
    "GENERATOR_VERSION",
    "MAX_DEFECT_AREA",
    "MIN_DEFECT_AREA",
    "draw_defect",
    "draw_spots",
    "make_demo_dataset",
    "render_large_surface",
    "render_surface",
]

CATEGORY = "surface"
DEFECT_KINDS: tuple[str, ...] = ("scratch", "dent", "stain")
GENERATOR_VERSION = 1  # bump whenever the images change, so cached datasets are regenerated
MIN_DEFECT_AREA = 0.002  # fraction of the image a defect mask covers, at least ...
MAX_DEFECT_AREA = 0.05  # ... and at most
MIN_SIZE = 32

_MANIFEST = "manifest.json"
_GENERATOR_NAME = "adps.data.procedural"
_STREAM_TRAIN, _STREAM_TEST_GOOD, _STREAM_DEFECT = 0, 1, 2  # defect kind k uses stream 2 + k
_MAX_TRIES = 50


# --------------------------------------------------------------------------- normal surfaces


def _normalised(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    return a / (a.std() + 1e-8)


def render_surface(size: int, rng: np.random.Generator) -> np.ndarray:
    """One normal brushed-metal image, float32 ``(size, size, 3)`` in ``[0, 255]``."""
    h = w = size
    pad = size // 2
    # Brushing: noise smoothed along x (streaks) on a wider canvas, cropped at a random offset so
    # no image shows the filter's border handling.
    x0 = int(rng.integers(0, 2 * pad + 1))
    streak = gaussian_filter(
        rng.standard_normal((h, w + 2 * pad)), sigma=(0.6, 0.15 * size), mode="wrap"
    )
    streak = _normalised(streak[:, x0 : x0 + w])
    band = gaussian_filter(
        rng.standard_normal((h, w + 2 * pad)), sigma=(0.03 * size, 0.4 * size), mode="wrap"
    )
    band = _normalised(band[:, x0 : x0 + w])
    grain = _normalised(gaussian_filter(rng.standard_normal((h, w)), sigma=0.5))

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(size) - np.float32(0.5)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    gradient = np.cos(angle) * xx + np.sin(angle) * yy  # in [-0.71, 0.71]
    lum = rng.uniform(0.58, 0.66) * (
        1.0 + 0.055 * streak + 0.025 * band + 0.022 * grain + rng.uniform(0.06, 0.14) * gradient
    )
    tint = np.array([0.97, 1.0, 1.05]) * (1.0 + rng.normal(0.0, 0.012, 3))  # cool steel grey
    return np.clip(255.0 * lum[:, :, None] * tint, 0.0, 255.0).astype(np.float32)


def render_large_surface(size: int, rng: np.random.Generator, base: int = 256) -> np.ndarray:
    """A high-resolution brushed surface, float32 ``(size, size, 3)``: :func:`render_surface`
    at ``base`` px upsampled bicubically (its streaks and bands become ``size / base`` times
    wider), plus grain at the native pixel. Fast at any size, unlike rendering the streaks at
    ``size`` directly, for tiling tests and benchmarks."""
    small = render_surface(base, rng)
    big = np.stack(
        [
            np.asarray(
                Image.fromarray(small[..., c]).resize((size, size), Image.Resampling.BICUBIC)
            )
            for c in range(3)
        ],
        axis=-1,
    )
    return np.clip(big + rng.normal(0.0, 3.0, (size, size, 1)), 0.0, 255.0).astype(np.float32)


def draw_spots(
    image: np.ndarray, n: int, spot: int, rng: np.random.Generator, depth: float = 70.0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` dark square pits of ``spot`` x ``spot`` pixels at random places (away from the
    border by 4 spots): the small defect that vanishes when a large image is resized."""
    out, mask = image.astype(np.float32), np.zeros(image.shape[:2], bool)
    margin = 4 * spot
    for y, x in rng.integers(margin, np.array(image.shape[:2]) - margin - spot, (n, 2)):
        mask[y : y + spot, x : x + spot] = True
        out[y : y + spot, x : x + spot] -= depth
    return np.clip(out, 0.0, 255.0), mask


# --------------------------------------------------------------------------- defects


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    yy, xx = _grid(size)
    length = rng.uniform(0.25, 0.6) * size
    angle = rng.uniform(0.0, np.pi)
    d = np.array([np.cos(angle), np.sin(angle)])
    lo, hi = 0.08 * size, 0.92 * size
    start = rng.uniform(lo, hi, 2)
    end = np.clip(start + length * d, lo, hi)
    bend = rng.uniform(-0.25, 0.25) * length * np.array([-d[1], d[0]])
    ctrl = np.clip((start + end) / 2 + bend, lo, hi)
    t = np.linspace(0.0, 1.0, 9)[:, None]
    pts = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t**2 * end  # quadratic Bezier, (x, y)

    dist = np.full((size, size), np.inf, dtype=np.float32)
    along = np.zeros((size, size), dtype=np.float32)  # position along the curve in [0, 1]
    for k in range(len(pts) - 1):
        a, b = pts[k], pts[k + 1]
        ab = b - a
        s = np.clip(
            ((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1]) / max(float(ab @ ab), 1e-6), 0.0, 1.0
        )
        dk = np.hypot(xx - a[0] - s * ab[0], yy - a[1] - s * ab[1])
        closer = dk < dist
        dist = np.where(closer, dk, dist)
        along = np.where(closer, (k + s) / (len(pts) - 1), along)

    # Width 1-3 px up to 128 px images, proportionally wider beyond (so the area stays in bounds).
    half = rng.integers(1, 4) * max(1.0, size / 128) / 2.0
    coverage = np.clip(half + 0.5 - dist, 0.0, 1.0)  # anti-aliased line
    mask = dist <= half
    # Intensity varies along the scratch (deeper in places), never fading out completely.
    phase = rng.uniform(0.0, 2.0 * np.pi)
    strength = 0.8 + 0.2 * np.sin(2.0 * np.pi * rng.uniform(1.0, 3.0) * along + phase)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    amp = rng.uniform(55.0, 85.0)
    out = img + (sign * amp * coverage * strength)[:, :, None]
    return out, mask


def _ellipse_coords(
    size: int, rng: np.random.Generator, a_range: tuple[float, float], margin: float
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Rotated coordinates (u, v) of a random ellipse with semi-axes (a, b), fully inside."""
    a = rng.uniform(*a_range) * size
    b = a * rng.uniform(0.5, 1.0)
    theta = rng.uniform(0.0, np.pi)
    reach = margin * a + 2.0
    cx, cy = rng.uniform(reach, size - 1 - reach, 2)
    yy, xx = _grid(size)
    dx, dy = xx - cx, yy - cy
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    return u, v, a, b


def _dent(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    u, v, a, b = _ellipse_coords(size, rng, (0.06, 0.12), 1.0)
    r2 = (u / a) ** 2 + (v / b) ** 2
    inside = r2 < 1.0
    depth = np.where(inside, (1.0 - r2) ** 2, 0.0)  # smooth bowl, 0 at the rim
    # Surface slope of the bowl (d depth / d(u, v)), scaled so the steepest point is ~1.
    slope_u = np.where(inside, -4.0 * (1.0 - r2) * u / a**2, 0.0) * a / 1.54
    slope_v = np.where(inside, -4.0 * (1.0 - r2) * v / b**2, 0.0) * b / 1.54
    light = rng.uniform(0.0, 2.0 * np.pi)
    shade = np.cos(light) * slope_u + np.sin(light) * slope_v  # one side lit, the other in shadow
    amp = rng.uniform(45.0, 70.0)
    delta = amp * shade - 0.45 * amp * depth
    out = img + delta[:, :, None]
    # Pressing also smooths the brushing a little inside the dent.
    smooth = gaussian_filter(img, sigma=(1.0, 1.0, 0.0))
    out = out + (depth * 0.8)[:, :, None] * (smooth - img)
    return out, inside


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    u, v, a, b = _ellipse_coords(size, rng, (0.06, 0.13), 1.25)
    r2 = (u / a) ** 2 + (v / b) ** 2
    noise = _normalised(
        gaussian_filter(rng.standard_normal((size, size)), sigma=max(1.0, 0.35 * b))
    )
    field = (1.0 - r2) + 0.35 * noise  # thresholded at 0: an irregular blob around the ellipse
    alpha = np.clip(field / 0.3, 0.0, 1.0)
    alpha = alpha * alpha * (3.0 - 2.0 * alpha)  # smoothstep: soft edges
    alpha *= np.clip((1.25**2 - r2) / 0.3, 0.0, 1.0)  # never beyond 1.25 semi-axes
    strength = rng.uniform(0.55, 0.85)
    darkness = rng.uniform(0.5, 0.7)
    brown = np.array([1.0, 0.8, 0.55]) * rng.uniform(0.95, 1.05, 3)
    stained = img.mean(axis=2, keepdims=True) * darkness * brown
    w = (alpha * strength)[:, :, None]
    out = img + w * (stained - img)
    mask = alpha >= 0.35  # where the colour shift is at least about a third of its full value
    return out, mask


_DRAWERS = {"scratch": _scratch, "dent": _dent, "stain": _stain}


def draw_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind`` on a float ``(H, W, 3)`` image.

    Returns the new image (float32, clipped to ``[0, 255]``) and its bool mask, whose area is
    between :data:`MIN_DEFECT_AREA` and :data:`MAX_DEFECT_AREA` of the image (defects are redrawn
    from the same generator until it is).
    """
    if kind not in _DRAWERS:
        raise ValueError(f"unknown defect kind {kind!r}; expected one of {DEFECT_KINDS}")
    if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[0] < MIN_SIZE:
        raise ValueError(
            f"expected a square (S, S, 3) image with S >= {MIN_SIZE}, got {image.shape}"
        )
    img = image.astype(np.float32)
    for _ in range(_MAX_TRIES):
        out, mask = _DRAWERS[kind](img, rng)
        if MIN_DEFECT_AREA <= mask.mean() <= MAX_DEFECT_AREA:
            return np.clip(out, 0.0, 255.0).astype(np.float32), mask
    raise RuntimeError(f"could not draw a {kind} of acceptable size on a {image.shape[0]} px image")


# --------------------------------------------------------------------------- dataset on disk


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _defect_counts(n_test_defect: int) -> dict[str, int]:
    q, r = divmod(n_test_defect, len(DEFECT_KINDS))
    return {kind: q + (i < r) for i, kind in enumerate(DEFECT_KINDS)}


def _expected_counts(n_train: int, n_test_good: int, n_test_defect: int) -> dict[str, int]:
    counts = {"train/good": n_train, "test/good": n_test_good}
    for kind, n in _defect_counts(n_test_defect).items():
        counts[f"test/{kind}"] = n
        counts[f"ground_truth/{kind}"] = n
    return counts


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == _GENERATOR_NAME else None


def _is_complete(folder: Path, manifest: dict[str, Any]) -> bool:
    """The manifest matches and every folder holds the number of PNGs it lists."""
    if manifest.get("version") != GENERATOR_VERSION:
        return False
    for sub, n in manifest.get("counts", {}).items():
        d = folder / sub
        found = sum(1 for p in d.glob("*.png")) if d.is_dir() else 0
        if found != n:
            return False
    return True


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / _MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _generate(
    folder: Path, size: int, n_train: int, n_test_good: int, n_test_defect: int, seed: int
) -> None:
    def rng(stream: int, index: int) -> np.random.Generator:
        return np.random.default_rng([seed, stream, index])

    streams = [
        ("train/good", _STREAM_TRAIN, n_train),
        ("test/good", _STREAM_TEST_GOOD, n_test_good),
    ]
    for sub, stream, n in streams:
        if n == 0:
            continue
        (folder / sub).mkdir(parents=True)
        for i in range(n):
            _save_png(
                _to_uint8(render_surface(size, rng(stream, i))), folder / sub / f"{i:03d}.png"
            )

    for k, (kind, n) in enumerate(_defect_counts(n_test_defect).items()):
        if n == 0:
            continue
        img_dir, gt_dir = folder / "test" / kind, folder / "ground_truth" / kind
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for i in range(n):
            g = rng(_STREAM_DEFECT + k, i)
            image, mask = draw_defect(render_surface(size, g), kind, g)
            _save_png(_to_uint8(image), img_dir / f"{i:03d}.png")
            _save_png(mask.astype(np.uint8) * 255, gt_dir / f"{i:03d}_mask.png")


def make_demo_dataset(
    root: str | Path,
    size: int = 128,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect: int = 40,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write (or reuse) the procedural ``surface`` dataset under ``root`` and return its folder.

    Layout (MVTec AD): ``train/good/NNN.png``, ``test/good/NNN.png``,
    ``test/{scratch,dent,stain}/NNN.png`` and ``ground_truth/<kind>/NNN_mask.png`` (0/255). The
    ``n_test_defect`` defective images are split as evenly as possible over the three kinds
    (the first kinds get the remainder); a kind with no image gets no folder.

    If ``root/surface`` already holds a complete dataset made with the same parameters, nothing
    is written. Otherwise the dataset is generated into a temporary folder inside ``root`` and
    renamed into place, replacing an older generated dataset. ``force=True`` regenerates in any
    case. A folder ``root/surface`` that was not made by this function is never replaced unless
    ``force=True`` (an :class:`~adps.errors.AdpsError` says so).
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise AdpsError(f"demo image size must be an integer >= {MIN_SIZE}, got {size!r}")
    for name, value, least in (
        ("n_train", n_train, 1),
        ("n_test_good", n_test_good, 0),
        ("n_test_defect", n_test_defect, 0),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise AdpsError(f"demo dataset: {name} must be an integer >= {least}, got {value!r}")
    if n_test_good + n_test_defect == 0:
        raise AdpsError("demo dataset: the test split needs at least one image")

    root = Path(root)
    target = root / CATEGORY
    params = {
        "size": int(size),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_defect": int(n_test_defect),
        "seed": int(seed),
    }
    manifest = {
        "generator": _GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "category": CATEGORY,
        "params": params,
        "counts": _expected_counts(n_train, n_test_good, n_test_defect),
    }

    def reusable() -> bool:
        old = _read_manifest(target)
        return old is not None and old.get("params") == params and _is_complete(target, old)

    if target.exists():
        if not force:
            if reusable():
                return target
            if _read_manifest(target) is None:
                raise AdpsError(
                    "exists but was not made by the demo generator (no valid manifest.json); "
                    "remove it, choose another root or pass force=True",
                    target,
                )
        if not target.is_dir():
            raise AdpsError("exists and is not a folder", target)

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CATEGORY}-tmp-", dir=root))
    try:
        _generate(tmp, **params)
        _write_manifest(tmp, manifest)  # last: marks the folder complete
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{CATEGORY}-old-", dir=root))
            os.replace(target, old / CATEGORY)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process put a dataset in place meanwhile; keep it if it is what we want.
            if reusable():
                return target
            if old is not None and not target.exists():
                os.replace(old / CATEGORY, target)  # put the previous dataset back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
