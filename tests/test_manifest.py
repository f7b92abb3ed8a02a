"""adps benchmark --manifest: cli/manifest.py (reading and checking a manifest), engine/benchmark.py
and report/benchmark.py (one entry's run, the table), ray/training.py (one Ray task per entry).

The manifest's refusals are checked through the command, each for the file, the row and the
field it must name. The Ray engine is checked against the local engine on the same manifest:
same rows, same configuration hashes, the same metrics (training with a fixed number of steps
and a seed, on one torch thread in both, is deterministic), the same failed row. Whether an entry
was trained again is observed with a spy on the training function (local) or the modification
times of its files (Ray), never with time.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adps.cli import main
from adps.data.procedural import make_demo_dataset
from adps.errors import AdpsError

SIZE = 64
# a tiny, deterministic training: fixed steps, no time budget (with one, the number of steps
# depends on the machine's speed, and so do the numbers)
TINY = {
    "image_size": SIZE,
    "k": 4,
    "epochs": 1,
    "steps_per_epoch": 1,
    "batch_size": 4,
    "checkpoint_every": 1,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two small procedural datasets: data/a/surface and data/b/surface (another seed), and
    data/empty, a folder that exists but holds no dataset (its entry fails when it runs)."""
    root = tmp_path_factory.mktemp("data")
    make_demo_dataset(root / "a", size=SIZE, n_train=8, n_test_good=3, n_test_defect=3)
    make_demo_dataset(root / "b", size=SIZE, n_train=6, n_test_good=2, n_test_defect=2, seed=5)
    (root / "empty").mkdir()
    return root


def write_yaml(path: Path, payload) -> Path:
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    return path


def validate(manifest: Path, tmp_path: Path, *extra: str) -> int:
    return main(["benchmark", "--manifest", str(manifest), "--out", str(tmp_path / "out"), *extra])


def entries(manifest: Path, *extra: str):
    from adps.cli import build_parser
    from adps.cli.benchmark import _check_flags, entries_from_args

    args = build_parser().parse_args(["benchmark", "--manifest", str(manifest), *extra])
    _check_flags(args)
    return entries_from_args(args)[0]


# --- reading ------------------------------------------------------------------------------------


def test_yaml_rows_defaults_and_flags_layer_and_paths_are_the_manifests(data, tmp_path):
    manifest = write_yaml(
        data / "m.yaml",  # beside the data: relative paths are from the manifest's folder
        {
            "defaults": {
                "time_budget": "90s",
                "num_cpus": 2,
                "prior": "memory",
                "k": 4,
                "allow_overlap": True,
            },
            "products": [
                {"name": "bottle", "data": "a/surface", "image_size": "64x128", "seed": 7},
                {
                    "name": "weld",
                    "data": str(data / "b"),
                    "category": "surface",
                    "time_budget": "2m",
                    "num_gpus": 0.25,
                    "no_amp": True,
                    "eval-resolution": "original",
                    "allow_overlap": False,  # a row turns off what the defaults turned on
                },
            ],
        },
    )
    bottle, weld = entries(manifest, "--lr", "0.002", "--seed", "3", "--out", str(tmp_path))
    assert (bottle.name, weld.name) == ("bottle", "weld")
    assert Path(bottle.spec.data) == data / "a" / "surface"
    assert (Path(weld.spec.data), weld.spec.category) == (data / "b", "surface")
    assert bottle.folder == tmp_path / "bottle"
    # a row's value wins over defaults, which win over the command's flags
    assert bottle.model_config.image_size == (64, 128) and bottle.train_config.seed == 7
    assert weld.train_config.seed == 3 and weld.train_config.lr == 0.002
    assert (bottle.train_config.time_budget, weld.train_config.time_budget) == (90.0, 120.0)
    assert bottle.model_config.prior == weld.model_config.prior == "memory"
    assert (bottle.train_config.amp, weld.train_config.amp) == (True, False)
    assert weld.settings.eval_resolution == "original"
    assert (bottle.settings.allow_overlap, weld.settings.allow_overlap) == (True, False)
    assert (bottle.resources.num_cpus, bottle.resources.num_gpus) == (2.0, 0.0)
    assert (weld.resources.num_cpus, weld.resources.num_gpus) == (2.0, 0.25)


def test_csv_and_a_plain_yaml_list_give_the_same_entries(data, tmp_path):
    csv_file = tmp_path / "m.csv"
    csv_file.write_text(
        "name,data,category,time_budget,num_cpus,masks_optional\n"
        f"bottle,{data / 'a' / 'surface'},,30s,,\n"
        "\n"
        f"weld,{data / 'b'},surface,,0.5,yes\n"
    )
    rows = [
        {"name": "bottle", "data": str(data / "a" / "surface"), "time_budget": 30},
        {
            "name": "weld",
            "data": str(data / "b"),
            "category": "surface",
            "num_cpus": 0.5,
            "masks_optional": True,
        },
    ]
    from_csv = entries(csv_file, "--out", str(tmp_path))
    from_yaml = entries(write_yaml(tmp_path / "m.yml", rows), "--out", str(tmp_path))
    assert from_csv == from_yaml
    assert [e.block()["hash"] for e in from_csv] == [e.block()["hash"] for e in from_yaml]
    assert from_csv[1].spec.masks_optional and from_csv[1].resources.num_cpus == 0.5
    assert from_csv[0].train_config.time_budget == 30.0


def test_a_yaml_merge_key_is_overridden_by_the_rows_own_value(data, tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "common: &common {seed: 4, image_size: 64, k: 4}\n"
        "products:\n"
        f"  - {{<<: *common, name: a, data: {data / 'a' / 'surface'}, seed: 9}}\n"
    )
    with pytest.raises(AdpsError, match="unknown top-level key"):
        entries(manifest)  # 'common' is not a key a manifest has ...
    manifest.write_text(manifest.read_text().replace("common: &common", "defaults: &common"))
    (entry,) = entries(manifest)  # ... 'defaults' is, and can be merged into rows
    assert entry.train_config.seed == 9 and entry.model_config.image_size == 64


def test_the_runs_configs_are_the_defaults_or_none_when_they_are_no_config_alone(data, tmp_path):
    from adps.cli import build_parser
    from adps.cli.manifest import read_manifest

    rows = [{"name": "a", "data": str(data / "a" / "surface"), "k": 4}]
    manifest = write_yaml(tmp_path / "m.yaml", {"defaults": {"seed": 5}, "products": rows})
    args = build_parser().parse_args(["benchmark", "--manifest", str(manifest)])
    args.num_cpus, args.num_gpus = 1.0, 0.0
    assert read_manifest(manifest, args).configs["train"]["seed"] == 5
    # 64 px needs k = 4 (16 x k divides the size), which only the row gives
    args.image_size = 64
    result = read_manifest(manifest, args)
    assert result.configs is None
    assert result.entries[0].model_config.image_size == 64


REFUSALS = [
    # (manifest text or rows, what the message must say besides the file)
    ("rows", [{"data": "a/surface"}], ["row 1 (line 1)", "field 'name' is missing"]),
    ("rows", [{"name": "a"}], ["row 1 ('a', line 1)", "field 'data' is missing"]),
    ("rows", [{"name": "a", "data": "nowhere"}], ["row 1 ('a'", "field 'data'", "no such folder"]),
    ("rows", [{"name": "x/y", "data": "a"}], ["field 'name'", "not a folder name"]),
    (
        "rows",
        [{"name": "a", "data": "a"}, {"name": "A", "data": "b"}],
        ["row 2 ('A', line 2)", "field 'name'", "row 1 ('a', line 1)"],
    ),
    ("rows", [{"name": "a", "data": "a", "size": 64}], ["field 'size'", "unknown setting"]),
    (
        "rows",
        [{"name": "a", "data": "a", "time_budgt": "9s"}],
        ["field 'time_budgt'", "did you mean 'time_budget'"],
    ),
    ("rows", [{"name": "a", "data": "a", "num_cpus": 0}], ["field 'num_cpus'", "above 0"]),
    ("rows", [{"name": "a", "data": "a", "num_cpus": "two"}], ["field 'num_cpus'", "a number"]),
    ("rows", [{"name": "a", "data": "a", "num_gpus": -1}], ["field 'num_gpus'", "0 or more"]),
    ("rows", [{"name": "a", "data": "a", "num_gpus": 1.5}], ["field 'num_gpus'", "whole number"]),
    ("rows", [{"name": "a", "data": "a", "prior": "maybe"}], ["field 'prior'", "invalid choice"]),
    ("rows", [{"name": "a", "data": "a", "time_budget": "soon"}], ["field 'time_budget'"]),
    ("rows", [{"name": "a", "data": "a", "image_size": "big"}], ["field 'image_size'"]),
    ("rows", [{"name": "a", "data": "a", "prior": False}], ["field 'prior'", "quote it"]),
    ("rows", [{"name": "a", "data": "a", "no_amp": "perhaps"}], ["field 'no_amp'", "a switch"]),
    # a config the model refuses: 100 pixels is no multiple of 16 x k
    ("rows", [{"name": "a", "data": "a", "image_size": 100}], ["row 1 ('a', line 1)", "100"]),
    ("text", "products: [{name: a, data: a}\n", ["not valid YAML"]),
    ("text", "products: [a, b]\n", ["row 1 (line 1)", "a mapping of settings"]),
    ("text", "rows: []\n", ["unknown top-level key", "'rows'"]),
    ("text", "defaults: {seed: 1}\n", ["no 'products' list"]),
    ("text", "products: []\n", ["lists no products"]),
    (
        "text",
        "- {name: a, data: a, seed: 1, seed: 2}\n",
        ["row 1 ('a', line 1)", "'seed'", "twice"],
    ),
    ("text", "defaults: {image_sise: 64}\nproducts: [{name: a, data: a}]\n", ["defaults"]),
    ("csv", "name,data,seed\na,a,1,2\n", ["row 1 (line 2)", "4 cells for the 3 columns"]),
    ("csv", "name,data,colour\na,a,\n", ["line 1: column 'colour'", "unknown setting"]),
    ("csv", "name,data,data\na,a,a\n", ["line 1", "column 'data' is given twice"]),
    ("csv", "", ["empty CSV"]),
    ("csv", "name,data\n\n", ["lists no products"]),
    ("csv", "name,data\na,a\nb,a\nc,nowhere\n", ["row 3 ('c', line 4)", "no such folder"]),
    ("txt", "name,data\n", ["a .yaml, .yml or .csv file"]),
]


@pytest.mark.parametrize(
    ("kind", "content", "expected"), REFUSALS, ids=[f"{i}" for i in range(len(REFUSALS))]
)
def test_every_refusal_names_the_file_the_row_and_the_field(
    data, tmp_path, capsys, kind, content, expected
):
    base = data  # 'a' and 'b' are folders beside the manifest
    if kind == "rows":
        # one line per row: so each row's line number is known
        text = "".join(f"- {yaml.safe_dump(r, default_flow_style=True).strip()}\n" for r in content)
        suffix = ".yaml"
    else:
        text, suffix = content, {"text": ".yaml", "csv": ".csv", "txt": ".txt"}[kind]
    manifest = base / f"refusal{suffix}"
    manifest.write_text(text)
    assert validate(manifest, tmp_path) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"adps benchmark: error: {manifest}: "), error
    for part in expected:
        assert part in error, error
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_command_refuses_mixed_sources_and_ray_flags_without_ray(data, tmp_path, capsys):
    manifest = write_yaml(tmp_path / "m.yaml", [{"name": "a", "data": str(data / "a")}])
    assert validate(manifest, tmp_path, "--data", str(data / "a")) == 2
    assert "--manifest or --data" in capsys.readouterr().err
    assert validate(manifest, tmp_path, "--num-gpus", "0.5") == 2
    assert "--num-gpus only apply with --engine ray" in capsys.readouterr().err
    assert validate(manifest, tmp_path, "--engine", "ray", "--num-cpus", "-1") == 2
    assert "field 'num_cpus'" in capsys.readouterr().err  # the flag is every row's default
    assert validate(tmp_path / "missing.yaml", tmp_path) == 2
    assert "manifest file not found" in capsys.readouterr().err


# --- running ------------------------------------------------------------------------------------


@pytest.fixture
def trained(monkeypatch):
    """The entry folder of each call of the training function (in this process)."""
    import adps.engine.train as engine_train

    calls, real = [], engine_train.train

    def spy(model_config, train_config, dataset, out_dir, **kwargs):
        calls.append(Path(out_dir).name)
        return real(model_config, train_config, dataset, out_dir, **kwargs)

    monkeypatch.setattr(engine_train, "train", spy)
    return calls


def three_products(data, folder: Path) -> Path:
    """Two products that train and one whose data folder holds no dataset."""
    return write_yaml(
        folder / "products.yaml",
        {
            "defaults": {**TINY, "seed": 1},
            "products": [
                {"name": "alpha", "data": str(data / "a" / "surface")},
                {"name": "beta", "data": str(data / "b"), "category": "surface", "seed": 2},
                {"name": "broken", "data": str(data / "empty")},
            ],
        },
    )


def snapshot(folder: Path) -> dict:
    """Bytes and modification time of an entry's result files: equal = not touched."""
    return {
        name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns)
        for name in ("model.pt", "metrics.json")
    }


def table(out: Path) -> dict:
    return json.loads((out / "benchmark.json").read_text())


@pytest.fixture(scope="module")
def local_run(data, tmp_path_factory, one_thread):
    """The manifest trained by the local engine once; (manifest, out, exit code, stdout)."""
    folder = tmp_path_factory.mktemp("local")
    manifest, out = three_products(data, folder), folder / "out"
    code = main(["benchmark", "--manifest", str(manifest), "--out", str(out), "--no-progress"])
    return manifest, out, code


@pytest.mark.integration
@pytest.mark.slow
def test_local_engine_reports_the_failed_row_and_finishes_the_others(local_run, data):
    manifest, out, code = local_run
    assert code == 1  # one entry failed
    payload = table(out)
    rows = payload["rows"]
    assert [r["name"] for r in rows] == ["alpha", "beta", "broken"]
    assert payload["failed"] == ["broken"] and payload["manifest"] == str(manifest.resolve())
    assert payload["train_config"]["seed"] == 1  # the run's: what a row of its own gets
    alpha, beta, broken = rows
    for row in (alpha, beta):
        assert (out / row["name"] / "model.pt").is_file()
        assert json.loads((out / row["name"] / "metrics.json").read_text()) == row
        assert row["metrics"]["image_auroc"] is not None and "error" not in row
    assert alpha["entry"]["identity"]["train"]["seed"] == 1
    assert beta["entry"]["identity"]["train"]["seed"] == 2
    assert beta["entry"]["identity"]["data"]["category"] == "surface"
    assert str(data / "empty") in broken["error"]
    assert broken["metrics"]["image_auroc"] is None and broken["entry"]["hash"]
    assert "Traceback" in (out / "broken" / "error.log").read_text()
    # the mean is over the entries that finished
    assert payload["mean"]["image_auroc"] == pytest.approx(
        (alpha["metrics"]["image_auroc"] + beta["metrics"]["image_auroc"]) / 2
    )
    md = (out / "benchmark.md").read_text()
    assert "| broken | n/a" in md and "- broken failed: " in md


@pytest.mark.integration
@pytest.mark.slow
def test_a_local_rerun_reuses_the_finished_rows_and_retries_the_failed_one(
    local_run, trained, capsys, tmp_path
):
    import shutil

    manifest, finished, _ = local_run
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = {name: snapshot(out / name) for name in ("alpha", "beta")}
    assert main(["benchmark", "--manifest", str(manifest), "--out", str(out)]) == 1
    assert trained == []  # 'broken' fails reading its data, before training
    assert {name: snapshot(out / name) for name in before} == before
    assert capsys.readouterr().out.count("reusing") == 2
    assert [r["name"] for r in table(out)["rows"]] == ["alpha", "beta", "broken"]


@pytest.mark.integration
@pytest.mark.slow
def test_the_ray_engine_gives_the_local_engines_table_and_reuses_like_it(
    local_run, ray_local, tmp_path, capsys
):
    manifest, local_out, _ = local_run
    out = tmp_path / "out"
    argv = ["benchmark", "--manifest", str(manifest), "--out", str(out), "--engine", "ray"]
    assert main(argv) == 1
    assert "training 3 entries as Ray tasks" in capsys.readouterr().out
    ray_rows, local_rows = table(out)["rows"], table(local_out)["rows"]
    assert [r["name"] for r in ray_rows] == [r["name"] for r in local_rows]
    for ray_row, local_row in zip(ray_rows, local_rows, strict=True):
        assert ray_row["entry"] == local_row["entry"]  # the same configuration hash
        assert ray_row.get("error") == local_row.get("error")
        assert ray_row["metrics"] == local_row["metrics"]  # deterministic: fixed steps, seed
        assert ray_row.get("num_images") == local_row.get("num_images")
    assert table(out)["mean"] == table(local_out)["mean"]
    assert table(out)["failed"] == ["broken"]

    # a rerun on Ray trains nothing that finished; a changed row trains that row only
    before = {name: snapshot(out / name) for name in ("alpha", "beta")}
    assert main(argv) == 1
    assert {name: snapshot(out / name) for name in before} == before
    changed = yaml.safe_load(manifest.read_text())
    changed["products"][1]["seed"] = 3
    edited = write_yaml(tmp_path / "products.yaml", changed)
    assert main([*argv[:2], str(edited), *argv[3:]]) == 1
    assert snapshot(out / "alpha") == before["alpha"]
    assert snapshot(out / "beta") != before["beta"]
    assert table(out)["rows"][1]["entry"]["identity"]["train"]["seed"] == 3
    old_hash = local_rows[1]["entry"]["hash"]
    assert (out / "beta" / f"stale-{old_hash[:8]}" / "model.pt").is_file()


@pytest.mark.integration
def test_benchmark_help_and_import_adps_do_not_import_ray(data, tmp_path):
    """`import adps`, `adps benchmark --help` and a local manifest run (refused at its first
    row here, after the manifest module and the engine are imported) leave Ray unloaded."""
    manifest = write_yaml(tmp_path / "m.yaml", [{"name": "a", "data": "nowhere"}])
    code = (
        "import sys, contextlib, io\n"
        "import adps\n"
        "from adps.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as help_text:\n"
        "    try:\n"
        "        main(['benchmark', '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert '--manifest' in help_text.getvalue()\n"
        f"assert main(['benchmark', '--manifest', {str(manifest)!r}]) == 2\n"
        "import adps.engine.benchmark, adps.report.benchmark, adps.ray.training\n"
        "print('ray' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert "no such folder" in result.stderr


@pytest.mark.integration
def test_ray_refuses_a_row_no_node_can_hold_before_anything_runs(data, ray_local, tmp_path, capsys):
    manifest = write_yaml(
        tmp_path / "m.yaml",
        [
            {"name": "fits", "data": str(data / "a" / "surface"), **TINY},
            {"name": "too-big", "data": str(data / "b"), "num_cpus": 3, **TINY},
        ],
    )
    argv = ["benchmark", "--manifest", str(manifest), "--out", str(tmp_path / "out")]
    assert main([*argv, "--engine", "ray"]) == 2  # ray_local has 2 CPUs
    error = capsys.readouterr().err
    assert "entry 'too-big' needs 3 CPUs and 0 GPUs on one node" in error
    assert "'fits'" not in error
    assert not (tmp_path / "out" / "fits").exists()  # refused before any task started


@pytest.mark.integration
def test_a_ray_task_whose_worker_dies_becomes_a_failed_row_and_the_others_finish(
    data, ray_local, tmp_path
):
    """The worker process dies under one task (as on an out-of-memory kill or a lost node):
    after Ray's retries its row carries the error, and the other row is the task's own."""
    import ray

    from adps.ray.training import _train

    manifest = write_yaml(
        tmp_path / "m.yaml",
        [
            {"name": "dies", "data": str(data / "a" / "surface"), **TINY},
            {"name": "lives", "data": str(data / "b"), **TINY},
        ],
    )

    def body(entry, block):  # defined here, so Ray ships it by value to its workers
        import os

        if entry.name == "dies":
            os._exit(1)
        return {"name": entry.name, "entry": block}

    jobs = [(entry, {"hash": entry.name}) for entry in entries(manifest)]
    done: list = []
    rows = _train(ray, jobs, done.append, body)
    assert [r["name"] for r in rows] == ["dies", "lives"]
    dies, lives = rows
    assert dies["error"].startswith("the Ray task failed:") and "\n" not in dies["error"]
    assert dies["entry"] == {"hash": "dies"} and set(dies["metrics"].values()) == {None}
    assert lives == {"name": "lives", "entry": {"hash": "lives"}}
    assert sorted(r["name"] for r in done) == ["dies", "lives"]
