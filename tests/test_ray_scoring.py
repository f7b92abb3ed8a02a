"""Scoring as a stream on Ray Data (adps.ray.scoring, `adps predict --engine ray`) against the
single-process engine, and the table writer both share (adps.report.predictions)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adps.cli import main
from adps.errors import AdpsError
from adps.report.predictions import PredictionTables, RunInfo
from servekit import noise_images, streaked_images, tiny_model


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A tiny calibrated model and 20 images of several sizes (half of them score over the
    threshold), plus one file that is not an image."""
    root = tmp_path_factory.mktemp("ray-scoring")
    model = tiny_model(root / "model.pt", calibrate=20)
    folder = root / "images"
    folder.mkdir()
    for i, image in enumerate(noise_images(10, 1) + streaked_images(10, 2)):
        Image.fromarray(image).resize((70 - i, 40 + 3 * i)).save(folder / f"{i:03d}.png")
    (folder / "005_broken.png").write_bytes(b"not a png")
    return model, folder


def _predict(model: Path, inputs: list[str], out: Path, *extra: str) -> int:
    flags = ["--model", str(model), "--backend", "torch", "--device", "cpu", "--out", str(out)]
    return main(["predict", *inputs, *flags, "--no-progress", *extra])


@pytest.mark.slow
@pytest.mark.integration
def test_ray_engine_writes_what_the_local_engine_writes(ray_local, scene, tmp_path, capsys):
    model, folder = scene
    assert _predict(model, [str(folder)], tmp_path / "local") == 1  # one input failed
    local_err = capsys.readouterr().err
    assert _predict(model, [str(folder)], tmp_path / "ray", "--engine", "ray") == 1
    ray_err = capsys.readouterr().err
    assert "failed " + str(folder / "005_broken.png") in ray_err
    assert [line for line in ray_err.splitlines() if line.startswith("failed")] == [
        line for line in local_err.splitlines() if line.startswith("failed")
    ]
    local, ray = tmp_path / "local", tmp_path / "ray"
    assert (ray / "predictions.csv").read_bytes() == (local / "predictions.csv").read_bytes()
    rows = list(csv.DictReader(io.StringIO((ray / "predictions.csv").read_text())))
    assert len(rows) == 20 and {r["decision"] for r in rows} == {"normal", "anomalous"}
    # the JSON names files under each run's own --out; otherwise the same text
    assert (ray / "predictions.json").read_text().replace(str(ray), str(local)) == (
        local / "predictions.json"
    ).read_text()
    document = json.loads((ray / "predictions.json").read_text())
    assert document["failures"] == [
        {"path": str(folder / "005_broken.png"), "reason": document["failures"][0]["reason"]}
    ]
    for kind in ("masks", "overlays"):
        names = sorted(p.name for p in (local / kind).iterdir())
        assert names == sorted(p.name for p in (ray / kind).iterdir()) and len(names) == 20
        for name in names:
            assert (ray / kind / name).read_bytes() == (local / kind / name).read_bytes(), name
    assert sum(np.array(Image.open(ray / "masks" / n)).any() for n in names) > 0  # not all empty


@pytest.mark.slow
@pytest.mark.integration
def test_a_file_list_keeps_its_order_across_chunks_and_actors(ray_local, scene, tmp_path):
    """Chunks of 3 images over 2 actors finish out of order; the table still follows the
    list, and each row equals the local engine's for that file."""
    from adps.ray.scoring import PredictOptions, RayOptions, predict_stream

    model, folder = scene
    files = sorted(folder.glob("0??.png"))
    order = [files[i] for i in np.random.default_rng(3).permutation(len(files))][:14]
    listed = [str(p) for p in order] + [str(folder / "005_broken.png"), str(folder / "nope*")]
    result = predict_stream(
        model,
        listed,
        tmp_path / "ray",
        PredictOptions(device="cpu", backend="torch", images=False),
        RayOptions(actors=2, chunk=3),
        progress=False,
    )
    assert result.images == 14
    assert [p for p, _ in result.failures] == [str(folder / "nope*"), listed[14]]
    assert _predict(model, listed[:14], tmp_path / "local", "--no-images") == 0
    assert (tmp_path / "ray" / "predictions.csv").read_bytes() == (
        tmp_path / "local" / "predictions.csv"
    ).read_bytes()
    table = (tmp_path / "ray" / "predictions.csv").read_text()
    paths = [r["path"] for r in csv.DictReader(io.StringIO(table))]
    assert paths == listed[:14]
    assert not (tmp_path / "ray" / "masks").exists()


@pytest.mark.parametrize("n", [0, 1, 3])
def test_tables_are_the_text_of_one_json_dump_and_one_csv(tmp_path, n):
    rows = [
        {"path": f"a/{i}.png", "score": 0.5 + i / 7, "decision": "normal", "defect_area": i}
        | ({"mask": f"m/{i}.png", "overlay": f"o/{i}.png"} if i % 2 else {})
        for i in range(n)
    ]
    failures = [("b/x.png", 'not an image "file"')]
    info = RunInfo("model \u00e9.pt", "torch cpu", "score >= 0.5", 0.5)
    with PredictionTables(tmp_path) as tables:
        for row in rows:
            tables.add(row)
        tables.finish(info, failures)
    expected = json.dumps(
        {
            "model": info.model,
            "runtime": info.runtime,
            "decision_rule": info.decision_rule,
            "pixel_threshold": info.pixel_threshold,
            "predictions": rows,
            "failures": [{"path": p, "reason": r} for p, r in failures],
        },
        indent=2,
    )
    assert (tmp_path / "predictions.json").read_text() == expected
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, ["path", "score", "decision", "defect_area"], extrasaction="ignore"
    )
    writer.writeheader()
    writer.writerows(rows)
    assert (tmp_path / "predictions.csv").read_text() == buffer.getvalue().replace("\r\n", "\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "predictions.json"]


def test_ray_flags_need_the_ray_engine_and_a_pool_must_fit(tmp_path, capsys):
    from adps.ray.scoring import RayOptions, _pool_sizes

    assert main(["predict", str(tmp_path), "--model", "m.pt", "--actors", "2"]) == 2
    assert "--actors only apply with --engine ray" in capsys.readouterr().err
    assert _pool_sizes(2, RayOptions()) == (2, 1)
    assert _pool_sizes(4, RayOptions(cpus_per_actor=2, decode_tasks=3)) == (2, 3)
    with pytest.raises(AdpsError, match="do not fit the Ray cluster's 2 CPUs"):
        _pool_sizes(2, RayOptions(actors=2, decode_cpus=0.5))
    with pytest.raises(AdpsError, match="CPUs per actor"):
        RayOptions(cpus_per_actor=0)


@pytest.mark.integration
def test_predict_help_and_the_package_do_not_import_ray():
    code = (
        "import sys, contextlib, io\n"
        "import adps, adps.ray.scoring\n"
        "from adps.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['predict', '--help'])\n"
        "print('ray' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_the_decode_stage_does_not_import_torch():
    # a Ray worker imports the module its task function lives in: the decode workers must
    # start without torch, which would take seconds of the cores the scoring actors start on
    from adps.ray.scoring import decode_chunk

    code = (
        f"import sys, {decode_chunk.__module__}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
