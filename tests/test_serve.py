"""adps serve: every endpoint, bad inputs, the token, micro-batching, parity with `adps predict`,
shutdown, and the page in headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import csv
import http.client
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datapaths import WELD
from pngheader import png_header

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from adps import load
from adps.cli import main as cli_main
from adps.config import ModelConfig
from adps.engine.calibrate import Thresholds
from adps.engine.checkpoint import Checkpoint
from adps.fileio import file_sha256
from adps.models.adps import ADPS
from adps.serve.app import ServeSettings, create_app
from adps.serve.batching import Busy, MicroBatcher
from servekit import wait_ready

pytestmark = pytest.mark.usefixtures("one_thread")
FILES = (
    sorted((WELD / "test/defective").glob("*.png"))[:2]
    + sorted((WELD / "test/good").glob("*.png"))[:1]
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A 64 px, k = 4 model (random student and PSM) with a calibrated image threshold."""
    torch.manual_seed(0)
    model = ADPS(ModelConfig(image_size=64, k=4)).eval()
    with torch.no_grad():
        _, scores = model(torch.rand(4, 3, 64, 64))
    thresholds = Thresholds(image=float(scores.median()), calibration={"method": "test"})
    path = tmp_path_factory.mktemp("serve") / "model.pt"
    Checkpoint.of(model, thresholds=thresholds).save(path)
    return path


def client_for(model_path: Path, **settings) -> TestClient:
    predictor = load(model_path, "cpu")
    return TestClient(
        create_app(predictor, model_path, ServeSettings(**settings)), raise_server_exceptions=False
    )


@pytest.fixture(scope="module")
def client(model_path):
    with client_for(model_path) as c:
        wait_ready(c)
        yield c


def png(path: Path) -> bytes:
    return path.read_bytes()


# ---------------------------------------------------------------------------- the endpoints


@pytest.mark.integration
@pytest.mark.slow
def test_health_and_model(client, model_path):
    health = client.get("/v1/health").json()
    assert health["status"] == "ready" and health["model_id"].startswith("model.pt@")
    info = client.get("/v1/model").json()
    assert info["model_config"]["image_size"] == 64
    assert info["thresholds"]["image"] is not None and "score >=" in info["decision_rule"]
    assert client.get("/openapi.json").json()["paths"]["/v1/predict"]


@pytest.mark.integration
@pytest.mark.slow
def test_predict_answers_equal_adps_predict_digit_for_digit(client, model_path, tmp_path):
    code = cli_main(
        [
            "predict",
            *map(str, FILES),
            "--model",
            str(model_path),
            "--out",
            str(tmp_path),
            "--no-images",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    for path, row in zip(FILES, rows, strict=True):
        answer = client.post(
            "/v1/predict", content=png(path), headers={"Content-Type": "image/png"}
        ).json()
        assert repr(answer["score"]) == row["score"] or str(answer["score"]) == row["score"]
        assert answer["decision"] == row["decision"]
        assert answer["defect_area"] == int(row["defect_area"])
        assert answer["image_size"] == list(np.array(Image.open(path)).shape[:2])
        assert answer["threshold"]["source"] == "calibrated" and answer["milliseconds"] > 0


@pytest.mark.integration
@pytest.mark.slow
def test_multipart_files_give_a_list_in_order(client):
    singles = [
        client.post("/v1/predict", content=png(p), headers={"Content-Type": "image/png"}).json()
        for p in FILES
    ]
    files = [("files", (p.name, png(p), "image/png")) for p in FILES]
    answers = client.post("/v1/predict", files=files).json()
    assert [a["filename"] for a in answers] == [p.name for p in FILES]
    assert [a["score"] for a in answers] == [s["score"] for s in singles]
    one = client.post("/v1/predict", files=[("file", (FILES[0].name, png(FILES[0])))])
    assert isinstance(one.json(), dict) and one.json()["score"] == singles[0]["score"]


@pytest.mark.integration
@pytest.mark.slow
def test_outputs_mask_and_overlay_are_pngs_at_the_image_size(client, model_path):
    answer = client.post(
        "/v1/predict?outputs=mask,overlay",
        content=png(FILES[0]),
        headers={"Content-Type": "image/png"},
    ).json()
    mask = np.array(Image.open(io.BytesIO(base64.b64decode(answer["mask_png"]))))
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["overlay_png"])))
    h, w = answer["image_size"]
    assert mask.shape == (h, w) and overlay.size == (w, h)
    expected = load(model_path, "cpu")(FILES[0]).mask
    assert np.array_equal(mask > 0, expected)
    assert int((mask > 0).sum()) == answer["defect_area"]


# --------------------------------------------------------------------------- bad input, faults


def _truncated() -> bytes:
    data = FILES[0].read_bytes()
    return data[: len(data) // 2]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"this is not an image", "image/png", 400, "not an image file"),
        (_truncated(), "image/png", 400, "corrupt or truncated"),
        (b"", "image/png", 400, "empty body"),
        (b"{}", "application/json", 415, "unsupported content type 'application/json'"),
        (b"abc", "", 415, "unsupported content type"),
    ],
)
def test_bad_bodies_get_a_4xx_that_names_the_problem(client, body, content_type, status, message):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/v1/predict", content=body, headers=headers)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert "Traceback" not in response.text and "BytesIO" not in response.text
    ok = client.post("/v1/predict", content=png(FILES[0]), headers={"Content-Type": "image/png"})
    assert ok.status_code == 200  # the server goes on


@pytest.mark.integration
@pytest.mark.slow
def test_limits_on_pixels_size_files_and_outputs(model_path):
    with client_for(model_path, max_pixels=50_000, max_body_bytes=400_000, max_files=2) as c:
        wait_ready(c)
        big = c.post("/v1/predict", content=png(FILES[0]), headers={"Content-Type": "image/png"})
        assert big.status_code == 413 and "over the limit of 50000" in big.json()["error"]
        huge = c.post("/v1/predict", content=b"\0" * 500_000, headers={"Content-Type": "image/png"})
        assert huge.status_code == 413 and "over the limit of 400000" in huge.json()["error"]
        many = c.post("/v1/predict", files=[("f", (f"{i}.png", b"x")) for i in range(3)])
        assert many.status_code == 400 and "files" in many.json()["error"].lower()
        none = c.post("/v1/predict", files=[("field", (None, "value"))])  # a field, no file
        assert none.status_code == 400 and "no file" in none.json()["error"]
        unknown = c.post(
            "/v1/predict?outputs=heatmap", content=b"x", headers={"Content-Type": "image/png"}
        )
        assert unknown.status_code == 400 and "heatmap" in unknown.json()["error"]


@pytest.mark.integration
@pytest.mark.slow
def test_a_huge_image_is_refused_by_our_limit_not_by_pils_guard(client):
    """900 MP is over PIL's decompression-bomb guard too; the answer must name --max-pixels."""
    for files, content in (
        (None, png_header(30000, 30000)),
        ([("file", ("wide.png", png_header(30000, 30000), "image/png"))], None),
    ):
        response = client.post(
            "/v1/predict",
            content=content,
            files=files,
            headers={"Content-Type": "image/png"} if content else {},
        )
        assert response.status_code == 413
        error = response.json()["error"]
        assert (
            "30000 x 30000 = 900000000 pixels is over the limit of 40000000 (--max-pixels)"
        ) in error and "bomb" not in error
    assert "wide.png" in error  # a multipart file is named


@pytest.mark.integration
@pytest.mark.slow
def test_a_model_failure_is_a_500_and_the_next_request_succeeds(model_path):
    predictor = load(model_path, "cpu")
    armed = threading.Event()  # set once the warm-up is over
    forward = predictor.forward

    def failing_once(batch):
        if armed.is_set():
            armed.clear()
            raise RuntimeError("simulated device error")
        return forward(batch)

    predictor.forward = failing_once
    with TestClient(create_app(predictor, model_path), raise_server_exceptions=False) as c:
        wait_ready(c)
        armed.set()
        bad = c.post("/v1/predict", content=png(FILES[0]), headers={"Content-Type": "image/png"})
        assert bad.status_code == 500
        assert bad.json() == {"error": "model failure: simulated device error"}
        good = c.post("/v1/predict", content=png(FILES[0]), headers={"Content-Type": "image/png"})
        assert good.status_code == 200


@pytest.mark.integration
@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after(model_path, monkeypatch):
    async def busy(self, items):
        raise Busy()

    with client_for(model_path, retry_after_s=3) as c:
        wait_ready(c)
        monkeypatch.setattr(MicroBatcher, "submit", busy)
        response = c.post(
            "/v1/predict", content=png(FILES[0]), headers={"Content-Type": "image/png"}
        )
    assert response.status_code == 503 and response.headers["Retry-After"] == "3"
    assert "busy" in response.json()["error"]


# -------------------------------------------------------------------------------- the token


@pytest.mark.integration
@pytest.mark.slow
def test_the_token_guards_every_endpoint_but_health(model_path):
    with client_for(model_path, token="s3cret") as c:
        wait_ready(c)
        assert c.get("/v1/health").status_code == 200
        for method, url in (
            ("get", "/v1/model"),
            ("post", "/v1/predict"),
            ("get", "/openapi.json"),
        ):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = getattr(c, method)(url, headers=headers)
                assert response.status_code == 401, (url, headers)
                assert "token" in response.json()["error"]
        ok = c.post(
            "/v1/predict",
            content=png(FILES[0]),
            headers={"Content-Type": "image/png", "Authorization": "Bearer s3cret"},
        )
        assert ok.status_code == 200


# --------------------------------------------------------------------------- micro-batching


def test_concurrent_requests_share_one_batch_and_get_their_own_results():
    seen = []

    def run(items):
        seen.append(list(items))
        return [x * 10 for x in items]

    async def scenario():
        batcher = MicroBatcher(run, max_batch=8, max_wait_ms=200, queue_size=16)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(3)))
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert results == [[0, 1000], [10, 1010], [20, 1020]]
    assert len(seen) == 1 and sorted(seen[0]) == [0, 1, 2, 100, 101, 102]


def test_batches_never_exceed_max_batch_and_a_full_queue_refuses():
    release = threading.Event()
    sizes = []

    def run(items):
        release.wait(5)
        sizes.append(len(items))
        return items

    async def scenario():
        batcher = MicroBatcher(run, max_batch=2, max_wait_ms=0, queue_size=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.05)  # taken by the collector, blocked in the model thread
        queued = [asyncio.ensure_future(batcher.submit([i])) for i in (2, 3)]
        await asyncio.sleep(0.05)
        with pytest.raises(Busy):
            await batcher.submit([4])
        release.set()
        done = [await first] + [await q for q in queued]
        await batcher.stop()
        return done

    assert asyncio.run(scenario()) == [[1], [2], [3]]
    assert sizes == [1, 2]


def test_stop_finishes_what_is_queued():
    async def scenario():
        batcher = MicroBatcher(lambda items: [x + 1 for x in items], max_batch=1)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit([i])) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.stop()
        return [p.result() for p in pending]

    assert asyncio.run(scenario()) == [[1], [2], [3], [4], [5]]


# ------------------------------------------------------------------ the real server, the page


@pytest.mark.integration
@pytest.mark.slow
def test_adps_serve_answers_and_sigterm_finishes_the_request_in_flight(model_path, free_port):
    import httpx

    port = free_port
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adps",
            "serve",
            "--model",
            str(model_path),
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError(f"no server: {server.stderr.read() if server.poll() else ''}")
        # the request is sent whole before the signal, so it is in flight when SIGTERM lands
        # (a thread that encoded and connected after a fixed sleep sometimes came too late)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request(
            "POST",
            "/v1/predict?outputs=overlay",
            body=png(FILES[0]),
            headers={"Content-Type": "image/png"},
        )
        time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        response = connection.getresponse()
        assert response.status == 200 and "overlay_png" in json.loads(response.read())
        # uvicorn exits by re-raising the signal once the requests in flight are done
        assert server.wait(60) in (0, -signal.SIGTERM)
        assert "Traceback" not in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()


_CHROMIUM = next(
    (
        shutil.which(n)
        for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
        if shutil.which(n)
    ),
    None,
)

_HARNESS = """<script>
// test only: put a real image into the page's file input, as a user picking it would
window.addEventListener("load", async () => {
  const blob = await (await fetch("/harness/image.png")).blob();
  const transfer = new DataTransfer();
  transfer.items.add(new File([blob], "part.png", {type: "image/png"}));
  const input = document.getElementById("files");
  input.files = transfer.files;
  input.dispatchEvent(new Event("change"));
  for (let i = 0; i < 600 && !document.getElementById("decision").textContent; i++)
    await new Promise(r => setTimeout(r, 50));
  for (let i = 0; i < 600 && !document.getElementById("drift").textContent.includes("1 of"); i++)
    await new Promise(r => setTimeout(r, 50));
  const out = document.createElement("pre");
  out.id = "harness-result";
  out.textContent = JSON.stringify({
    decision: document.getElementById("decision").textContent,
    score: document.getElementById("score").textContent,
    overlay: document.getElementById("overlay").naturalWidth,
    rows: document.getElementById("history").rows.length,
    model: document.getElementById("model").textContent,
    drift: document.getElementById("drift").textContent,
    error: document.getElementById("error").textContent});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(
    _CHROMIUM is None,
    reason="chromium is not installed (apt-get install chromium); CI installs it to check the page",
)
def test_the_page_uploads_an_image_and_shows_the_decision(model_path, tmp_path, free_port):
    import uvicorn
    from fastapi.responses import HTMLResponse, Response

    predictor = load(model_path, "cpu")
    app = create_app(predictor, model_path)
    page = (Path(__file__).parents[1] / "src/adps/serve/page.html").read_text()
    app.add_api_route(
        "/harness", lambda: HTMLResponse(page.replace("</body>", _HARNESS + "</body>"))
    )
    app.add_api_route("/harness/image.png", lambda: Response(png(FILES[0]), media_type="image/png"))
    port = free_port
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        cmd = [
            _CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=30000",
            "--dump-dom",
            f"http://127.0.0.1:{port}/harness",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        server.should_exit = True
        thread.join(30)
    match = re.search(r'<pre id="harness-result">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no page result; chromium exit {done.returncode}: {done.stderr[-2000:]}"
    shown = json.loads(match.group(1).replace("&quot;", '"'))
    expected = predictor(FILES[0])
    assert shown["error"] == ""
    assert shown["decision"] == ("anomalous" if expected.is_anomalous else "normal")
    assert shown["score"] == f"{expected.score:.4f}"
    assert shown["overlay"] == Image.open(FILES[0]).width and shown["rows"] == 1
    # the header names the model that answered and the drift watch's state
    assert shown["model"] == f"model.pt@{file_sha256(model_path)[:12]}"
    assert shown["drift"] == "drift: watching (1 of 20 images)"
