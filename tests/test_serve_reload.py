"""Swapping the served model (adps.serve.models) in process: a request runs on the model that
was current when it arrived, a reload warms the new model beside the old, a file that fails to
load or warm up leaves the old one serving, and a changed file is swapped in by the watcher."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from servekit import noise_images, png_bytes, tiny_model, wait_ready

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from adps import load
from adps.serve.app import ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("reload")
    return tiny_model(folder / "a.pt", seed=0, calibrate=0), tiny_model(
        folder / "b.pt", seed=1, calibrate=0
    )


def _loader(path: Path):
    return load(path, "cpu", backend="torch")


def _replace(path: Path, source: Path) -> None:
    """Atomically, as adps writes models: a whole file or none."""
    tmp = path.with_name(f".{path.name}.new")
    shutil.copyfile(source, tmp)
    os.replace(tmp, path)


BODY = png_bytes(noise_images(1, 9)[0])


def _predict(client: TestClient) -> dict:
    r = client.post("/v1/predict", content=BODY, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.integration
def test_a_request_finishes_on_the_model_it_arrived_on(models, tmp_path):
    a, b = models
    path = tmp_path / "model.pt"
    shutil.copyfile(a, path)
    predictor = _loader(path)
    gate, entered = threading.Event(), threading.Event()
    forward = predictor.forward

    def held(batch):  # the first real request waits in the model thread until released
        if armed.is_set():
            armed.clear()
            entered.set()
            gate.wait(30)
        return forward(batch)

    armed = threading.Event()
    predictor.forward = held
    app = create_app(predictor, path, ServeSettings(max_batch=2), _loader)
    with TestClient(app, raise_server_exceptions=False) as c, ThreadPoolExecutor(2) as pool:
        wait_ready(c)
        id_a = c.get("/v1/health").json()["model_id"]
        armed.set()
        first = pool.submit(_predict, c)
        assert entered.wait(30)  # on model A, inside the model thread
        _replace(path, b)
        reload = c.post("/v1/model/reload").json()  # B loads and warms beside the busy A
        assert reload["reloaded"] and reload["previous_model_id"] == id_a
        id_b = reload["model_id"]
        assert id_b != id_a and c.get("/v1/health").json()["model_id"] == id_b
        holder = app.state.holder
        assert [m.ident for m in holder.retired] == [id_a]  # A holds a request still
        second = pool.submit(_predict, c)
        time.sleep(0.2)
        assert not first.done() and not second.done()
        gate.set()
        assert first.result(30)["model_id"] == id_a
        assert second.result(30)["model_id"] == id_b
        assert holder.retired == []  # A is released after its last request
        want = load(b, "cpu", backend="torch")(noise_images(1, 9)[0]).summary()["score"]
        assert _predict(c)["score"] == want


@pytest.mark.integration
def test_a_model_that_fails_to_load_or_warm_up_leaves_the_old_one_serving(models, tmp_path):
    a, b = models
    path = tmp_path / "model.pt"
    shutil.copyfile(a, path)
    fail_warm = threading.Event()

    def loader(p: Path):
        predictor = _loader(p)
        if fail_warm.is_set():

            def broken(batch):
                raise RuntimeError("out of device memory (simulated)")

            predictor.forward = broken
        return predictor

    app = create_app(_loader(path), path, ServeSettings(token="s3cret"), loader)
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c)
        id_a = c.get("/v1/health").json()["model_id"]
        assert c.post("/v1/model/reload").status_code == 401
        same = c.post("/v1/model/reload", headers=auth)
        assert same.status_code == 200 and not same.json()["reloaded"]
        assert "unchanged" in same.json()["message"]

        path.write_bytes(b"\x00 not a checkpoint")
        bad = c.post("/v1/model/reload", headers=auth)
        assert bad.status_code == 422
        assert bad.json()["model_id"] == id_a and not bad.json()["reloaded"]
        assert "model.pt failed to load" in bad.json()["error"]
        assert "cannot be read as an adps checkpoint" in bad.json()["error"]
        assert str(tmp_path) not in bad.json()["error"]  # the server's folders stay private
        answer = c.post(
            "/v1/predict", content=BODY, headers={"Content-Type": "image/png", **auth}
        ).json()
        assert answer["model_id"] == id_a
        info = c.get("/v1/model", headers=auth).json()["model"]
        assert info["last_reload"]["error"] == bad.json()["error"] and info["swaps"] == 0

        _replace(path, b)
        fail_warm.set()
        cold = c.post("/v1/model/reload", headers=auth)
        assert cold.status_code == 422 and "failed to warm up" in cold.json()["error"]
        assert "out of device memory (simulated)" in cold.json()["error"]
        assert c.get("/v1/health").json()["model_id"] == id_a

        fail_warm.clear()
        good = c.post("/v1/model/reload", headers=auth).json()
        assert good["reloaded"] and good["model_id"].startswith("model.pt@")
        assert good["load_s"] >= 0 and good["warm_s"] >= 0
        assert c.get("/v1/health").json()["model_id"] == good["model_id"] != id_a


@pytest.mark.integration
def test_the_watcher_swaps_in_a_changed_file_and_tries_a_bad_one_once(models, tmp_path, caplog):
    a, b = models
    path = tmp_path / "model.pt"
    shutil.copyfile(a, path)
    app = create_app(_loader(path), path, ServeSettings(watch_interval_s=0.1), _loader)
    caplog.set_level(logging.INFO, logger="adps.serve")
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c)
        id_a = c.get("/v1/health").json()["model_id"]
        _replace(path, b)
        for _ in range(300):
            if c.get("/v1/health").json()["model_id"] != id_a:
                break
            time.sleep(0.05)
        id_b = c.get("/v1/health").json()["model_id"]
        assert id_b != id_a and _predict(c)["model_id"] == id_b
        assert app.state.holder.last_reload.reason == "the model file changed"

        tmp = path.with_name(".broken")
        tmp.write_bytes(b"garbage")
        os.replace(tmp, path)
        time.sleep(1.5)  # many polls
        failures = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in failures]
        assert _predict(c)["model_id"] == id_b

        _replace(path, a)
        for _ in range(300):
            if c.get("/v1/health").json()["model_id"] == id_a:
                break
            time.sleep(0.05)
        assert _predict(c)["model_id"] == id_a
