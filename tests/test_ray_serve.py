"""The service on Ray Serve (adps.ray.serving): two models, one with two replicas, deployed on
the session's local Ray by the ``serve run`` builder, over HTTP through Serve's proxy: each
answer equals `adps.load` on the same image and names its model, `GET /v1/models` lists both,
an unknown name is refused, a burst of concurrent requests all succeed (Serve's batching), and
a reload says Serve swaps models. The builder's bad arguments are refused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import torch

from adps import load
from adps.errors import AdpsError
from adps.fileio import file_sha256
from servekit import noise_images, png_bytes, tiny_model, unused_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
IMAGES = noise_images(2, 11)
PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ray-serve")
    return {
        "a": tiny_model(folder / "a.pt", seed=0, calibrate=20),
        "b": tiny_model(folder / "b.pt", seed=1, calibrate=20),
    }


@pytest.fixture(scope="module")
def service(ray_local, models):
    from ray import serve

    from adps.ray.serving import app_builder

    port = unused_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = app_builder(
        {
            "models": {name: str(path) for name, path in models.items()},
            "replicas": {"a": 2},
            "backend": "torch",
            "num_cpus": 0.5,  # three model replicas and the ingress on the fixture's 2 CPUs
            "max_batch": 4,
            "max_wait_ms": 20,
        }
    )
    serve.run(app, name="adps-test", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/v1/health", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the Ray Serve app never became ready")
        yield base
    finally:
        serve.shutdown()


def _reference(path: Path, image) -> dict:
    predictor = load(path, "cpu", backend="torch")
    return predictor.predict_tensors([torch.from_numpy(image).permute(2, 0, 1)])[0].summary()


def test_two_models_on_ray_serve_answer_as_adps_load_and_name_their_model(service, models):
    listed = httpx.get(f"{service}/v1/models", timeout=30).json()
    idents = {n: f"{p.name}@{file_sha256(p)[:12]}" for n, p in models.items()}
    assert [(m["name"], m["model_id"]) for m in listed["models"]] == sorted(idents.items())
    for name, path in models.items():
        for image in IMAGES:
            r = httpx.post(
                f"{service}/v1/models/{name}/predict?outputs=mask",
                content=png_bytes(image),
                headers=PNG,
                timeout=60,
            )
            assert r.status_code == 200, r.text
            answer, reference = r.json(), _reference(path, image)
            assert {k: answer[k] for k in reference} == reference
            assert answer["model"] == name and answer["model_id"] == idents[name]
            assert answer["mask_png"]
    r = httpx.post(f"{service}/v1/models/zz/predict", content=b"x", headers=PNG, timeout=30)
    assert r.status_code == 404 and "a, b" in r.json()["error"]
    r = httpx.post(f"{service}/v1/predict", content=b"x", headers=PNG, timeout=30)
    assert r.status_code == 400 and "(a, b)" in r.json()["error"]
    reload = httpx.post(f"{service}/v1/models/a/reload", timeout=30)
    assert reload.status_code == 501 and "Serve" in reload.json()["error"]
    drift = httpx.get(f"{service}/v1/models/a/drift", timeout=30).json()
    assert drift["model_id"] == idents["a"] and drift["window"]["images"] == len(IMAGES)


def test_a_burst_of_concurrent_requests_to_both_models_all_succeed(service, models):
    expected = {
        name: [_reference(path, image)["score"] for image in IMAGES]
        for name, path in models.items()
    }

    async def burst() -> list[tuple[str, int, httpx.Response]]:
        async with httpx.AsyncClient(timeout=120) as client:

            async def one(i: int) -> tuple[str, int, httpx.Response]:
                name, k = "ab"[i % 2], (i // 2) % len(IMAGES)
                r = await client.post(
                    f"{service}/v1/models/{name}/predict",
                    content=png_bytes(IMAGES[k]),
                    headers=PNG,
                )
                return name, k, r

            return await asyncio.gather(*(one(i) for i in range(24)))

    results = asyncio.run(burst())
    assert [r.status_code for _, _, r in results] == [200] * 24
    for name, k, r in results:
        assert r.json()["model"] == name
        assert abs(r.json()["score"] - expected[name][k]) <= 1e-6  # batched as in one batch


def test_the_builder_refuses_bad_arguments(models):
    from adps.ray.serving import app_builder

    a = str(models["a"])
    for args, message in (
        ({}, "models"),
        ({"models": {"a": a}, "replicas": {"zz": 2}}, "not served"),
        ({"models": {"a": a}, "replicas": {"a": 0}}, "replicas"),
        ({"models": {"a": a}, "colour": "red"}, "unknown settings"),
        ({"models": {"a": a}, "default_model": "zz"}, "no such model"),
        ({"models": {"a": a, "b": a + ".missing"}}, "no model file"),
    ):
        with pytest.raises(AdpsError, match=message):
            app_builder(args)


def test_adps_serve_ray_runs_the_cli_path_and_stops_on_sigterm(models, tmp_path):
    """The command a user types: `adps serve --ray` starts its own Ray (not the session's),
    deploys both models with --replicas, answers as adps.load, and SIGTERM shuts it down."""
    from servekit import adps_serve

    port = unused_port()
    options = ("--ray", "--model", f"b={models['b']}", "--replicas", "b=1")
    with adps_serve(models["a"], port, *options, log=tmp_path / "serve.log") as server:
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()
        assert [m["name"] for m in listed["models"]] == ["a", "b"]
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/models/b/predict",
            content=png_bytes(IMAGES[0]),
            headers=PNG,
            timeout=120,
        )
        assert r.status_code == 200, r.text
        reference = _reference(models["b"], IMAGES[0])
        assert {k: r.json()[k] for k in reference} == reference
        server.terminate()
        assert server.wait(120) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5)
