"""The HTML report: sections, gallery order, embedded images, rendering in headless Chromium,
and the ``adps report`` command end to end."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from adps.engine.calibrate import Thresholds
from adps.engine.evaluate import EvalResult
from adps.errors import AdpsError
from adps.metrics import compute_metrics
from adps.report.html import SECTIONS, build_report, gallery_order
from adps.report.plots import colorize, decimate, overlay

# --------------------------------------------------------------------------- fixtures


def svg_ids(svg: str) -> list[str]:
    """The ``id`` attributes of an SVG string (they must be unique across a page)."""
    return re.findall(r'\bid="([^"]+)"', svg)


def make_result(images, masks, labels, maps, has_mask=None, scores=None, paths=None):
    """An EvalResult as ``evaluate`` builds it, from numpy arrays."""
    n = len(labels)
    labels = np.asarray(labels)
    has_mask = np.ones(n, bool) if has_mask is None else np.asarray(has_mask)
    if scores is None:
        scores = maps.reshape(n, -1).max(1)
    metrics = compute_metrics(labels, scores, masks, maps, mask_available=has_mask)
    paths = paths or [
        f"/data/cat/test/{'defect' if y else 'good'}/{i:03d}.png" for i, y in enumerate(labels)
    ]
    return EvalResult(
        metrics,
        np.asarray(scores, np.float32),
        labels,
        torch.from_numpy(images),
        torch.from_numpy(maps),
        torch.from_numpy(masks),
        has_mask,
        paths,
        0.5,
        16.0,
        300.0,
        "cpu-rss",
    )


@pytest.fixture
def blobs():
    """8 images of 64 x 64: 4 normal, 4 with a dark blob; maps light up the blobs.

    Scores are set so that, at threshold 0.5, image 6 (defective, 0.05) is the worst miss,
    image 1 (normal, 0.8) the worst false alarm, image 7 (defective, 0.4) a smaller miss.
    """
    rng = np.random.default_rng(0)
    n, size = 8, 64
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, 3, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    maps = np.zeros((n, size, size), np.float32)
    for i in range(n):
        texture = 128 + 40 * np.sin(xx / 5.0 + i) + rng.normal(0, 6, (size, size))
        maps[i] = 0.15 * rng.random((size, size))
        if labels[i]:
            cy, cx = rng.integers(16, 48, 2)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
            masks[i] = blob
            texture[blob] *= 0.4
            maps[i] += 0.8 * ndimage.gaussian_filter(blob.astype(np.float32), 2)
        images[i] = np.clip(texture, 0, 255).astype(np.uint8)[None]
    scores = np.array([0.1, 0.8, 0.2, 0.3, 0.95, 0.75, 0.05, 0.4])
    return make_result(images, masks, labels, np.clip(maps, 0, 1), scores=scores)


@pytest.fixture(scope="module")
def surface(tmp_path_factory):
    """A real-looking test set: procedural brushed metal with scratches, dents and stains."""
    from adps.data.cache import load_tensor_stack
    from adps.data.datasets import MVTecAD
    from adps.data.procedural import make_demo_dataset

    root = tmp_path_factory.mktemp("surface")
    category = make_demo_dataset(root, size=64, n_train=1, n_test_good=4, n_test_defect=6)
    dataset = MVTecAD(category.parent, category.name, "test", size=64)
    images, masks, labels = load_tensor_stack(dataset, progress=False)
    rng = np.random.default_rng(1)
    gt = masks[:, 0].numpy().astype(np.float32)
    maps = np.stack([ndimage.gaussian_filter(g, 2) for g in gt]) * 0.9
    maps = np.clip(maps + 0.2 * rng.random(gt.shape), 0, 1).astype(np.float32)
    return (
        category,
        dataset,
        make_result(
            images.numpy(),
            masks[:, 0].numpy(),
            labels.numpy(),
            maps,
            paths=[str(r.image) for r in dataset.records],
        ),
    )


# --------------------------------------------------------------------------- parsing


class Page(HTMLParser):
    """Collects sections, images, gallery cards and external references of a report."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.cards, self.external = [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "figure" and "card" in (a.get("class") or "").split():
            self.cards.append((int(a["data-index"]), a["class"].split()[1]))
        if tag in ("script", "link", "iframe", "object"):
            self.external.append(tag)
        for key in ("href", "src"):
            value = a.get(key) or ""
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)


def decode_data_uri(uri: str) -> Image.Image:
    match = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", uri)
    assert match, uri[:60]
    img = Image.open(io.BytesIO(base64.b64decode(match.group(2), validate=True)))
    img.load()
    assert img.format.lower() == match.group(1)
    return img


# --------------------------------------------------------------------------- the report


def test_report_has_every_section_and_valid_images(tmp_path, blobs):
    result = blobs
    out = build_report(
        result,
        tmp_path / "sub" / "report.html",
        thresholds=Thresholds(image=0.5),
        title="Blobs <test>",
        info={"model": "m.pt", "data": "blobs"},
    )
    assert out == tmp_path / "sub" / "report.html" and out.is_file()
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == list(SECTIONS)
    assert page.external == [], "the report must be self-contained"
    assert "Blobs &lt;test&gt;" in text and "<th>model</th><td>m.pt</td>" in text
    for name in (
        "AUROC",
        "AP",
        "F1-max",
        "AUPRO",
        "ROC",
        "Precision-recall",
        "Per-region overlap",
        "Image scores",
        "calibrated threshold",
        "missed defect",
        "false alarm",
    ):
        assert name in text, name
    assert f"{100 * result.metrics['pixel_auroc']:.1f}" in text
    assert text.count("<svg") == 4  # ROC, PR, PRO, histogram
    ids = [i for svg in re.findall(r"<svg.*?</svg>", text, re.S) for i in svg_ids(svg)]
    assert len(ids) == len(set(ids)), "element ids must be unique across the inline SVGs"
    assert len(page.images) == 8 * 4  # input, ground truth, heatmap, predicted mask
    for uri in page.images:
        img = decode_data_uri(uri)
        assert img.size == (64, 64)
    assert out.stat().st_size < 500_000


def test_gallery_puts_the_worst_mistakes_first(tmp_path, blobs):
    result = blobs
    text = build_report(result, tmp_path / "r.html", thresholds=Thresholds(image=0.5)).read_text()
    order = [i for i, _ in Page(text).cards]
    # margins at t = 0.5: miss 6 -> 0.45, false alarm 1 -> 0.30, miss 7 -> 0.10, then the
    # correct ones from the least to the most confident.
    assert order == [6, 1, 7, 3, 5, 2, 0, 4]
    assert order == list(gallery_order(result.scores, result.labels, 0.5))
    kinds = dict(Page(text).cards)
    assert kinds[6] == "miss" and kinds[1] == "alarm" and kinds[4] == "ok"
    limited = build_report(
        result, tmp_path / "r3.html", thresholds=Thresholds(image=0.5), max_gallery=3
    ).read_text()
    assert [i for i, _ in Page(limited).cards] == [6, 1, 7]
    assert "the first 3 of 8 images" in limited


def test_without_threshold_the_f1_optimal_one_is_used_and_said(tmp_path, blobs):
    result = blobs
    text = build_report(result, tmp_path / "r.html", thresholds=Thresholds()).read_text()
    assert "F1-optimal threshold" in text and "no calibrated threshold was given" in text


def test_report_without_masks_skips_pixel_plots(tmp_path, blobs):
    result = blobs
    result.has_mask = np.zeros(8, bool)
    result.metrics = compute_metrics(
        result.labels, result.scores, result.masks, result.maps, mask_available=result.has_mask
    )
    assert result.metrics["aupro"] is None
    text = build_report(result, tmp_path / "r.html", thresholds=Thresholds(image=0.5)).read_text()
    page = Page(text)
    assert page.sections == list(SECTIONS)
    assert "Pixel-level curves are not shown: no test image has a ground-truth mask" in text
    assert "Per-region overlap" not in text and text.count("<svg") == 3
    assert text.count(">no mask</div>") == 8 and len(page.images) == 8 * 3
    assert text.count('class="na"') == 4  # the four pixel metrics read n/a


def test_report_with_one_class_and_no_threshold(tmp_path, blobs):
    result = blobs
    keep = result.labels == 0
    one = make_result(
        result.images.numpy()[keep],
        result.masks.numpy()[keep],
        result.labels[keep],
        result.maps.numpy()[keep],
    )
    text = build_report(one, tmp_path / "r.html", thresholds=Thresholds()).read_text()
    assert "the test set has only normal images" in text
    assert "No decisions" in text and "no threshold" in text
    assert Page(text).sections == list(SECTIONS)


def test_real_looking_report(tmp_path, surface):
    _, _, result = surface
    out = build_report(result, tmp_path / "surface.html", thresholds=Thresholds())
    page = Page(out.read_text())
    assert len(page.cards) == 10 and len(page.images) == 40
    names = out.read_text()
    for kind in ("scratch/", "dent/", "stain/", "good/"):
        assert kind in names
    for uri in page.images:
        decode_data_uri(uri)


def test_report_rejects_mismatched_inputs(tmp_path, blobs):
    result = blobs
    with pytest.raises(AdpsError, match="number of images"):
        build_report(
            dataclasses.replace(result, images=result.images[:5]),
            tmp_path / "r.html",
            thresholds=Thresholds(image=0.5),
        )
    with pytest.raises(AdpsError, match="uint8"):
        build_report(
            dataclasses.replace(result, images=result.images.float()),
            tmp_path / "r.html",
            thresholds=Thresholds(image=0.5),
        )
    assert not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- plot helpers


def test_overlay_colours_scale_and_outline():
    image = np.full((40, 60, 3), 100, np.uint8)
    amap = np.zeros((20, 30), np.float32)
    amap[5:15, 5:15] = 1.0
    out = overlay(image, torch.from_numpy(amap), alpha=1.0)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert tuple(out[20, 20]) == tuple(colorize(1.0)) and tuple(out[39, 59]) == tuple(colorize(0.0))
    half = overlay(image, amap, alpha=0.5)
    assert np.all(np.abs(half[39, 59].astype(int) - (100 + colorize(0.0).astype(int)) / 2) <= 1)
    outlined = overlay(image, amap, amap > 0.5)
    white = np.all(outlined == 255, axis=-1)
    assert white.any() and not white[20, 20] and white[10, 10]  # border only
    assert not np.all(overlay(image, amap) == 255, axis=-1).any()
    with pytest.raises(AdpsError):
        overlay(image, np.full((4, 4), np.nan))
    c = colorize(np.linspace(0, 1, 5))
    assert c.shape == (5, 3) and c[1, 2] > c[1, 0] and c[-1, 0] > c[-1, 2]  # blue -> red


def test_decimate_keeps_ends_and_shape():
    x = np.linspace(0, 1, 100_001)
    y = np.sqrt(x)
    dx, dy = decimate(x, y, 500)
    assert len(dx) <= 502 and dx[0] == 0 and dx[-1] == 1 and dy[-1] == 1
    assert np.all(np.diff(dx) > 0) and np.allclose(dy, np.sqrt(dx))
    assert np.max(np.diff(dx)) < 0.01  # spread along the curve, no big holes
    same = decimate(x[:10], y[:10], 500)
    assert np.array_equal(same[0], x[:10])


# --------------------------------------------------------------------------- rendering

_CHROMIUM = next(
    (
        shutil.which(n)
        for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
        if shutil.which(n)
    ),
    None,
)

_PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const svgs = Array.from(document.querySelectorAll("svg"));
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify({
    images: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0
                             && i.getBoundingClientRect().width > 0).length,
    svgs: svgs.filter(s => s.getBoundingClientRect().width > 100).length,
    sections: document.querySelectorAll("section").length,
    overflow: document.documentElement.scrollWidth > window.innerWidth});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.integration
@pytest.mark.skipif(
    _CHROMIUM is None,
    reason="chromium is not installed (apt-get install "
    "chromium); CI installs it to check rendering",
)
def test_report_renders_in_headless_chromium(tmp_path, surface):
    _, _, result = surface
    report = build_report(result, tmp_path / "report.html", thresholds=Thresholds(image=0.5))
    probe = tmp_path / "probe.html"  # a test-only copy with a script counting rendered images
    probe.write_text(report.read_text().replace("</body>", _PROBE + "</body>"))
    cmd = [
        _CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    match = re.search(r'<pre id="render-check">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no render result; chromium exit {done.returncode}: {done.stderr[-2000:]}"
    check = json.loads(match.group(1).replace("&quot;", '"'))
    assert check["images"] == 40 and check["loaded"] == 40, check
    assert check["svgs"] == 4 and check["sections"] == len(SECTIONS), check
    assert not check["overflow"], "the page must not scroll sideways at 1280 px"


# --------------------------------------------------------------------------- the command


@pytest.mark.integration
def test_report_command_end_to_end(tmp_path, surface, capsys):
    from adps.cli import report
    from adps.config import ModelConfig
    from adps.engine.calibrate import Thresholds
    from adps.engine.checkpoint import Checkpoint
    from adps.models.adps import ADPS

    category, _, _ = surface
    torch.manual_seed(0)
    Checkpoint.of(
        ADPS(ModelConfig(image_size=64, k=2), pretrained=False), thresholds=Thresholds(image=0.5)
    ).save(tmp_path / "model.pt")
    parser = argparse.ArgumentParser(prog="adps")
    report.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out" / "report.html"
    args = parser.parse_args(
        [
            "report",
            "--model",
            str(tmp_path / "model.pt"),
            "--data",
            str(category),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--batch-size",
            "4",
        ]
    )
    assert args.func(args) == 0
    assert f"report: {out}" in capsys.readouterr().out
    text = out.read_text()
    page = Page(text)
    assert page.sections == list(SECTIONS) and len(page.cards) == 10
    assert "<th>backbone</th><td>efficientnet_lite0</td>" in text
    # decisions use the checkpoint's threshold, not the F1-optimal one of the test set
    assert "<th>image threshold</th><td>0.5 (calibrated threshold)</td>" in text
    assert "F1-optimal" not in text
