"""A model on the line, on a real ``adps serve`` process (subprocess + HTTP): the drift watch
flips on a changed camera and says so in the log, kept images take the operator's verdicts,
a client's file name is never a path, and the model is swapped under load without a failed
request (by POST, by SIGHUP), a corrupt file leaving the old one serving."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest

from servekit import adps_serve, noise_images, png_bytes, streaked_images, tiny_model

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOKEN = {"Authorization": "Bearer s3cret"}


def _post_image(base: str, image: np.ndarray, **headers) -> dict:
    r = httpx.post(
        f"{base}/v1/predict",
        content=png_bytes(image),
        headers={"Content-Type": "image/png", **headers},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_drift_verdicts_and_file_names_on_a_real_server(tmp_path, free_port):
    model = tiny_model(tmp_path / "model.pt")  # calibrated on noise at 5 %, scores kept
    keep = tmp_path / "line" / "keep"
    log = tmp_path / "serve.log"
    base = f"http://127.0.0.1:{free_port}"
    options = ("--token", "s3cret", "--keep-images", str(keep), "--drift-window", "50")
    options += ("--drift-baseline", "30")
    with adps_serve(model, free_port, *options, "--watch-model", "0", log=log):
        assert httpx.get(f"{base}/v1/drift").status_code == 401
        for image in noise_images(50, 2):  # the parts the model was calibrated on
            _post_image(base, image, **TOKEN)
        quiet = httpx.get(f"{base}/v1/drift", headers=TOKEN).json()
        assert quiet["status"] == "ok" and not quiet["drifting"], quiet
        assert quiet["window"] == {"size": 50, "images": 50, "min_images": 20}
        since = quiet["since_baseline"]  # the first 30 images against the 20 after them
        assert since["images"] == 30 and since["window_images"] == 20
        assert since["p_value"] >= 0.01  # the same parts: quiet
        # 100 calibration scores at 5 %: 4 flagged, (4 + 1) / 101 expected
        assert quiet["share_over_threshold"]["expected_false_alarm_rate"] == 5 / 101
        assert quiet["model_id"].startswith("model.pt@")
        flipped = None
        for i, image in enumerate(streaked_images(50, 3)):  # a camera fault
            _post_image(base, image, **TOKEN)
            if flipped is None and httpx.get(f"{base}/v1/drift", headers=TOKEN).json()["drifting"]:
                flipped = i + 1
        assert flipped is not None and flipped <= 20  # 13: the share over the threshold trips
        drifting = httpx.get(f"{base}/v1/drift", headers=TOKEN).json()
        assert drifting["status"] == "drifting" and drifting["drifting"], drifting
        assert drifting["flips"] == 1
        p_values = (
            drifting["scores_under_threshold"]["p_value"],
            drifting["share_over_threshold"]["p_value"],
            drifting["since_baseline"]["p_value"],
        )
        assert min(p_values) < drifting["alarm"] == 0.001

        # a client's file name: echoed as its last component, never a path on disk
        before = sorted(tmp_path.rglob("*"))
        answer = httpx.post(
            f"{base}/v1/predict",
            files=[("file", ("../../../etc/passwd", png_bytes(noise_images(1, 4)[0])))],
            headers=TOKEN,
        ).json()
        assert answer["filename"] == "passwd" and answer["kept"]
        new = [p for p in sorted(tmp_path.rglob("*")) if p not in before]
        assert new == [keep / "images" / f"{answer['id']}.png"]

        # verdicts
        ids = [_post_image(base, image, **TOKEN)["id"] for image in noise_images(2, 5)]
        assert (
            httpx.post(f"{base}/v1/feedback", json={"id": ids[0], "verdict": "normal"}).status_code
            == 401
        )
        normal = httpx.post(
            f"{base}/v1/feedback", json={"id": ids[0], "verdict": "normal"}, headers=TOKEN
        )
        assert normal.status_code == 200
        mask = np.zeros((64, 64), np.uint8)
        mask[5:9, 5:9] = 255
        defect = httpx.post(
            f"{base}/v1/feedback",
            data={"id": ids[1], "verdict": "defect"},
            files={"mask": ("../../../etc/shadow", png_bytes(mask), "image/png")},
            headers=TOKEN,
        )
        assert defect.status_code == 200 and "shadow" not in defect.text
        unknown = httpx.post(
            f"{base}/v1/feedback",
            json={"id": "20000101T000000000-000000000000", "verdict": "normal"},
            headers=TOKEN,
        )
        assert unknown.status_code == 404 and "no image kept under id" in unknown.json()["error"]
        bad = httpx.post(f"{base}/v1/feedback", json={"id": ids[0], "verdict": "ok"}, headers=TOKEN)
        assert bad.status_code == 422 and "'normal' or 'defect'" in bad.json()["error"]
        assert httpx.post(f"{base}/v1/model/reload").status_code == 401
    feedback = keep / "feedback"
    assert sorted(p.name for p in (feedback / "normal").iterdir()) == [f"{ids[0]}.png"]
    assert (feedback / f"defect/test/defect/{ids[1]}.png").is_file()
    assert (feedback / f"defect/ground_truth/defect/{ids[1]}_mask.png").is_file()
    assert len((feedback / "verdicts.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "etc").exists() and not (keep.parent / "etc").exists()
    text = log.read_text()
    assert "drift: model.pt@" in text and "is drifting" in text
    assert "Traceback" not in text


def test_a_model_swap_under_load_drops_no_request(tmp_path, free_port):
    a = tiny_model(tmp_path / "a.pt", seed=0, calibrate=0)
    b = tiny_model(tmp_path / "b.pt", seed=1, calibrate=0)
    path = tmp_path / "model.pt"
    shutil.copyfile(a, path)
    log = tmp_path / "serve.log"
    base = f"http://127.0.0.1:{free_port}"
    body = png_bytes(noise_images(1, 6)[0])
    with adps_serve(path, free_port, "--watch-model", "0", "--max-batch", "4", log=log) as server:
        id_a = httpx.get(f"{base}/v1/health").json()["model_id"]
        answers: list[tuple[float, float, int, str | None]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    start = time.perf_counter()
                    try:
                        r = http.post(
                            f"{base}/v1/predict",
                            content=body,
                            headers={"Content-Type": "image/png"},
                        )
                        status, model = r.status_code, r.json().get("model_id")
                    except httpx.HTTPError:
                        status, model = -1, None
                    answers.append((start, time.perf_counter(), status, model))

        clients = [threading.Thread(target=client) for _ in range(4)]
        for t in clients:
            t.start()
        try:
            time.sleep(1.5)
            tmp = tmp_path / ".model.pt.new"
            shutil.copyfile(b, tmp)
            os.replace(tmp, path)
            reload = httpx.post(f"{base}/v1/model/reload", timeout=120).json()
            assert reload["reloaded"], reload
            time.sleep(1.5)
        finally:
            stop.set()
            for t in clients:
                t.join(60)
        id_b = reload["model_id"]
        assert id_b != id_a
        failed = [x for x in answers if x[2] != 200]
        assert failed == [] and len(answers) > 20
        old = [x for x in answers if x[3] == id_a]
        new = [x for x in answers if x[3] == id_b]
        assert len(old) + len(new) == len(answers) and old and new
        # one point in time: every answer of the old model began before every answer of
        # the new one ended (a request runs on the model current when it arrived)
        assert max(x[0] for x in old) < min(x[1] for x in new)

        path.write_bytes(b"not a model")
        corrupt = httpx.post(f"{base}/v1/model/reload", timeout=120)
        assert corrupt.status_code == 422 and corrupt.json()["model_id"] == id_b
        assert "cannot be read as an adps checkpoint" in corrupt.json()["error"]
        assert _post_image(base, noise_images(1, 6)[0])["model_id"] == id_b

        tmp = tmp_path / ".model.pt.new"
        shutil.copyfile(a, tmp)
        os.replace(tmp, path)
        server.send_signal(signal.SIGHUP)
        for _ in range(600):
            if httpx.get(f"{base}/v1/health").json()["model_id"] == id_a:
                break
            time.sleep(0.1)
        assert _post_image(base, noise_images(1, 6)[0])["model_id"] == id_a
        info = httpx.get(f"{base}/v1/model").json()["model"]
        assert info["last_reload"]["reason"] == "SIGHUP" and info["swaps"] == 2
    text = log.read_text()
    assert text.count("model swapped") == 2 and "failed to load" in text
    assert "Traceback" not in text
    json.dumps(answers)  # plain data, for a failure report
