"""Several models under one service (adps.serve.app.create_multi_app, adps.serve.lanes, the
`adps serve --model NAME=PATH` CLI): each model answers on its own routes as `adps.load` does,
`GET /v1/models` lists them, an unknown name is refused, the one-model routes stay as they were
for one model, a reload swaps only its model, each model keeps its own images, drift window and
verdicts, and bad --model specs are refused. `adps serve --help` does not import Ray."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from servekit import noise_images, png_bytes, tiny_model, wait_ready

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from adps import load
from adps.cli import main as cli_main
from adps.errors import AdpsError
from adps.fileio import file_sha256
from adps.serve.app import ServeSettings, create_app, create_multi_app
from adps.serve.lanes import parse_counts, parse_model_specs

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGE = noise_images(1, 7)[0]
BODY = png_bytes(IMAGE)
PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "a": tiny_model(folder / "a.pt", seed=0, calibrate=20),
        "b": tiny_model(folder / "b.pt", seed=1, calibrate=20),
        "c": tiny_model(folder / "c.pt", seed=2, calibrate=20),
    }


def _loader(path: Path):
    return load(path, "cpu", backend="torch")


def _client(paths: dict[str, Path], default: str | None = None, **settings) -> TestClient:
    app = create_multi_app(
        {name: (_loader(p), p) for name, p in paths.items()},
        ServeSettings(max_batch=2, watch_interval_s=0, **settings),
        _loader,
        default=default,
    )
    return TestClient(app, raise_server_exceptions=False)


def _reference(path: Path) -> dict:
    """`adps.load` on the same image, in this process: what the service must answer."""
    prediction = _loader(path).predict_tensors([torch.from_numpy(IMAGE).permute(2, 0, 1)])[0]
    return prediction.summary()


def _ident(path: Path, served_as: Path | None = None) -> str:
    """The model id of ``path``'s contents served from the file ``served_as`` (default: it)."""
    return f"{(served_as or path).name}@{file_sha256(path)[:12]}"


def _call(client: TestClient, method: str, path: str):
    if method == "get":
        return client.get(path)
    return client.post(path, content=BODY, headers=PNG)


@pytest.fixture(scope="module")
def two(models):
    with _client({"a": models["a"], "b": models["b"]}) as client:
        wait_ready(client)
        yield client


@pytest.mark.integration
def test_two_models_answer_on_their_own_routes_as_adps_load_does(two, models):
    answers = {}
    for name in ("a", "b"):
        r = two.post(f"/v1/models/{name}/predict", content=BODY, headers=PNG)
        assert r.status_code == 200, r.text
        answers[name] = r.json()
        reference = _reference(models[name])
        assert {k: answers[name][k] for k in reference} == reference
        assert answers[name]["model"] == name
        assert answers[name]["model_id"] == _ident(models[name])
        assert answers[name]["threshold"]["image"] == _loader(models[name]).thresholds.decision
    assert answers["a"]["score"] != answers["b"]["score"]  # the routes reach different models
    listed = two.get("/v1/models").json()
    assert listed["default"] is None
    assert [(m["name"], m["model_id"], m["input_size"]) for m in listed["models"]] == [
        ("a", _ident(models["a"]), [64, 64]),
        ("b", _ident(models["b"]), [64, 64]),
    ]
    assert [m["threshold"] for m in listed["models"]] == [
        _loader(models[n]).thresholds.decision for n in ("a", "b")
    ]
    health = two.get("/v1/health").json()
    assert health["models"] == {"a": _ident(models["a"]), "b": _ident(models["b"])}
    info = two.get("/v1/models/b").json()
    assert info["name"] == "b" and info["model_id"] == _ident(models["b"])
    assert info["model_config"]["image_size"] == 64 and info["batching"]["batches_run"] >= 1


@pytest.mark.integration
def test_unknown_names_and_the_one_model_routes_of_several_are_refused_with_the_names(two):
    for method, path in (
        ("post", "/v1/models/zz/predict"),
        ("get", "/v1/models/zz"),
        ("get", "/v1/models/zz/drift"),
        ("post", "/v1/models/zz/reload"),
        ("post", "/v1/models/zz/feedback"),
    ):
        r = _call(two, method, path)
        assert r.status_code == 404, (path, r.text)
        assert "'zz'" in r.json()["error"] and "a, b" in r.json()["error"]
    for method, path in (
        ("post", "/v1/predict"),
        ("get", "/v1/model"),
        ("get", "/v1/drift"),
        ("post", "/v1/model/reload"),
    ):
        r = _call(two, method, path)
        assert r.status_code == 400, (path, r.text)
        assert "(a, b)" in r.json()["error"] and "--default-model" in r.json()["error"]


@pytest.mark.integration
def test_a_default_model_takes_the_one_model_routes(models):
    with _client({"a": models["a"], "b": models["b"]}, default="b") as client:
        wait_ready(client)
        r = client.post("/v1/predict", content=BODY, headers=PNG).json()
        assert r["model"] == "b" and r["score"] == _reference(models["b"])["score"]
        assert client.get("/v1/model").json()["model_id"] == _ident(models["b"])
    with pytest.raises(AdpsError, match="no such model"):
        _client({"a": models["a"]}, default="b")


@pytest.mark.integration
def test_one_model_keeps_its_routes_and_is_also_served_by_name(models):
    path = models["a"]
    with TestClient(
        create_app(_loader(path), path, ServeSettings(watch_interval_s=0)),
        raise_server_exceptions=False,
    ) as client:
        wait_ready(client)
        assert client.get("/v1/health").json() == {"status": "ready", "model_id": _ident(path)}
        old = client.post("/v1/predict", content=BODY, headers=PNG).json()
        named = client.post("/v1/models/a/predict", content=BODY, headers=PNG).json()
        reference = _reference(path)
        assert {k: old[k] for k in reference} == reference == {k: named[k] for k in reference}
        assert client.get("/v1/model").json()["model_id"] == _ident(path)
        assert client.get("/v1/drift").json()["window"]["images"] == 2  # one window for both
        assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["a"]


@pytest.mark.integration
def test_a_reload_swaps_only_its_model(models, tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    shutil.copyfile(models["a"], a)
    shutil.copyfile(models["b"], b)
    with _client({"a": a, "b": b}) as client:
        wait_ready(client)
        tmp = tmp_path / ".a.pt.new"
        shutil.copyfile(models["c"], tmp)
        os.replace(tmp, a)
        r = client.post("/v1/models/a/reload")
        assert r.status_code == 200 and r.json()["reloaded"], r.text
        assert r.json()["model_id"] == _ident(models["c"], a)
        assert r.json()["previous_model_id"] == _ident(models["a"])
        again = client.post("/v1/models/b/reload").json()
        assert not again["reloaded"] and again["model_id"] == _ident(models["b"])
        answer_a = client.post("/v1/models/a/predict", content=BODY, headers=PNG).json()
        answer_b = client.post("/v1/models/b/predict", content=BODY, headers=PNG).json()
        assert answer_a["score"] == _reference(models["c"])["score"]
        assert answer_b["score"] == _reference(models["b"])["score"]
        assert client.get("/v1/health").json()["models"] == {
            "a": _ident(models["c"], a),
            "b": _ident(models["b"]),
        }


@pytest.mark.integration
def test_each_model_keeps_its_images_drift_window_and_verdicts(models, tmp_path):
    keep = tmp_path / "keep"
    with _client({"a": models["a"], "b": models["b"]}, keep_dir=keep) as client:
        wait_ready(client)
        ids = [
            client.post("/v1/models/a/predict", content=BODY, headers=PNG).json()["id"]
            for _ in range(3)
        ]
        assert sorted(p.stem for p in (keep / "a" / "images").iterdir()) == sorted(ids)
        assert not (keep / "b" / "images").exists() or not any((keep / "b" / "images").iterdir())
        assert client.get("/v1/models/a/drift").json()["window"]["images"] == 3
        assert client.get("/v1/models/b/drift").json()["window"]["images"] == 0
        verdict = {"id": ids[0], "verdict": "normal"}
        assert client.post("/v1/models/b/feedback", json=verdict).status_code == 404
        r = client.post("/v1/models/a/feedback", json=verdict)
        assert r.status_code == 200, r.text
        assert (keep / "a" / "feedback" / "normal" / f"{ids[0]}.png").is_file()


def test_model_specs_name_models_and_bad_ones_are_refused(models, tmp_path):
    a, b = models["a"], models["b"]
    assert parse_model_specs([f"x={a}", str(b)]) == {"x": a, "b": b}
    odd = tmp_path / "runs" / "lr=1" / "m.pt"  # '=' inside a path: a path, named by its stem
    odd.parent.mkdir(parents=True)
    shutil.copyfile(a, odd)
    assert parse_model_specs([str(odd)]) == {"m": odd}
    spaced = tmp_path / "model v2.pt"  # served before names existed: still served, by a word
    shutil.copyfile(a, spaced)
    assert parse_model_specs([str(spaced)]) == {"model-v2": spaced}
    bad = {
        "taken": [f"x={a}", f"x={b}"],
        "taken by": [str(a), f"a={b}"],
        "no model file": [f"x={tmp_path / 'missing.pt'}"],
        "both non-empty": ["x="],
        "NAME=PATH": [f"={a}"],
        "must be letters": [f"bad name!={a}"],
        "at least one": [],
    }
    for message, specs in bad.items():
        with pytest.raises(AdpsError, match=message):
            parse_model_specs(specs)
    assert parse_counts(["a=3"], ["a", "b"], "--replicas") == {"a": 3}
    for spec in ("a=0", "a", "zz=2", "a=two"):
        with pytest.raises(AdpsError, match="--replicas"):
            parse_counts([spec], ["a", "b"], "--replicas")


@pytest.mark.integration
def test_the_cli_refuses_bad_specs_before_serving(models, tmp_path, capsys):
    a = str(models["a"])
    for argv, message in (
        (["--model", f"x={a}", "--model", f"x={a}"], "taken"),
        (["--model", f"x={tmp_path / 'none.pt'}"], "no model file"),
        (["--model", a, "--replicas", "a=2"], "needs --ray"),
        (["--model", a, "--default-model", "zz"], "no such model"),
    ):
        assert cli_main(["serve", *argv, "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.integration
def test_serve_help_and_import_adps_do_not_import_ray():
    code = (
        "import sys, contextlib, io\n"
        "import adps, adps.serve.app, adps.serve.lanes\n"
        "from adps.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['serve', '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert '--replicas' in out.getvalue()\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.integration
def test_concurrent_requests_to_two_models_share_batches_per_model(two, models):
    """Both lanes answer interleaved requests from threads; every answer is its model's."""
    from concurrent.futures import ThreadPoolExecutor

    def post(i: int) -> tuple[str, float]:
        name = "ab"[i % 2]
        r = two.post(f"/v1/models/{name}/predict", content=BODY, headers=PNG)
        assert r.status_code == 200, r.text
        return name, r.json()["score"]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, range(12)))
    expected = {n: _reference(models[n])["score"] for n in ("a", "b")}
    assert all(np.isclose(score, expected[name], atol=1e-6) for name, score in results)
